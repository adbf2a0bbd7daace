"""projects inside organisations, project roles, quotas (issue 14); existing rows move into a
default project per organisation

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 14:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

# Tables whose rows belong to a project (models/projects.py ProjectOwned), and jobs (nullable).
OWNED = ('ssh_keys', 'images', 'instances', 'vpcs', 'subnets', 'ports', 'volumes', 'volume_snapshots',
         'volume_attachments')
TABLES = (*OWNED, 'jobs')


def upgrade() -> None:
    """Every organisation gets its default project, and every tenant row of it goes there."""
    op.create_table('projects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('is_default', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('org_id', 'name', name='uq_projects_org_name'),
    sqlite_autoincrement=True
    )
    op.create_index('ix_projects_org_id', 'projects', ['org_id'])
    op.create_table('project_roles',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.Enum('admin', 'member', 'reader', name='role', native_enum=False, length=16), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project_id', 'user_id')
    )
    op.create_index('ix_project_roles_user_id', 'project_roles', ['user_id'])
    op.create_table('project_quotas',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('resource', sa.String(length=32), nullable=False),
    sa.Column('hard_limit', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project_id', 'resource')
    )
    op.create_table('organisation_quotas',
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('resource', sa.String(length=32), nullable=False),
    sa.Column('hard_limit', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('org_id', 'resource')
    )
    sqlite = op.get_bind().dialect.name == 'sqlite'
    # Not a batch copy on SQLite: with foreign keys on, dropping the old table would delete the
    # rows that reference it (0005). So on SQLite ``project_id`` is added in place, nullable and
    # without a foreign key (a column under one could not be dropped again by the downgrade);
    # the service refuses to delete a project that holds rows, and an organisation's delete
    # removes its rows through their ``org_id``.
    op.add_column('memberships', sa.Column('projects_only', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.execute("INSERT INTO projects (org_id, name, is_default, created_at) "
               "SELECT id, 'default', true, CURRENT_TIMESTAMP FROM organisations")
    for table in TABLES:
        if sqlite:
            op.execute(f"ALTER TABLE {table} ADD COLUMN project_id INTEGER")
        else:
            op.add_column(table, sa.Column('project_id', sa.Integer(), nullable=True))
            op.create_foreign_key(f'fk_{table}_project_id', table, 'projects', ['project_id'], ['id'], ondelete='CASCADE')
        op.execute(f"UPDATE {table} SET project_id = (SELECT p.id FROM projects p "
                   f"WHERE p.org_id = {table}.org_id AND p.is_default)")
        if not sqlite and table != 'jobs':
            op.alter_column(table, 'project_id', nullable=False)
        op.create_index(f'ix_{table}_project_id', table, ['project_id'])


def downgrade() -> None:
    """Back to organisations only: every project's rows stay, in their organisation."""
    sqlite = op.get_bind().dialect.name == 'sqlite'
    for table in TABLES:
        op.drop_index(f'ix_{table}_project_id', table_name=table)
        if sqlite:
            op.execute(f"ALTER TABLE {table} DROP COLUMN project_id")
        else:
            op.drop_constraint(f'fk_{table}_project_id', table, type_='foreignkey')
            op.drop_column(table, 'project_id')
    if sqlite:
        op.execute("ALTER TABLE memberships DROP COLUMN projects_only")
    else:
        op.drop_column('memberships', 'projects_only')
    op.drop_table('organisation_quotas')
    op.drop_table('project_quotas')
    op.drop_index('ix_project_roles_user_id', table_name='project_roles')
    op.drop_table('project_roles')
    op.drop_index('ix_projects_org_id', table_name='projects')
    op.drop_table('projects')
