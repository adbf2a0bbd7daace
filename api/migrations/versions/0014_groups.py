"""groups of users with roles on an organisation or a project; application credentials bound to
one project (existing ones to their organisation's default project); audit rows' project and
resource (issue 14)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 18:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

ROLE = sa.Enum('admin', 'member', 'reader', name='role', native_enum=False, length=16)


def upgrade() -> None:
    op.create_table('groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('role', ROLE, nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('org_id', 'name', name='uq_groups_org_name')
    )
    op.create_index('ix_groups_org_id', 'groups', ['org_id'])
    op.create_table('group_members',
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'user_id')
    )
    op.create_index('ix_group_members_user_id', 'group_members', ['user_id'])
    op.create_table('group_project_roles',
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('role', ROLE, nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'project_id')
    )
    op.create_index('ix_group_project_roles_project_id', 'group_project_roles', ['project_id'])
    # Application credentials: bound to their organisation's default project. On SQLite the
    # column is added in place, nullable and without a foreign key (as 0012 does, for its reasons).
    sqlite = op.get_bind().dialect.name == 'sqlite'
    if sqlite:
        op.execute("ALTER TABLE app_credentials ADD COLUMN project_id INTEGER")
    else:
        op.add_column('app_credentials', sa.Column('project_id', sa.Integer(), nullable=True))
        op.create_foreign_key('fk_app_credentials_project_id', 'app_credentials', 'projects', ['project_id'], ['id'],
                              ondelete='CASCADE')
    op.execute("UPDATE app_credentials SET project_id = (SELECT p.id FROM projects p "
               "WHERE p.org_id = app_credentials.org_id AND p.is_default)")
    if not sqlite:
        op.alter_column('app_credentials', 'project_id', nullable=False)
    op.create_index('ix_app_credentials_project_id', 'app_credentials', ['project_id'])
    op.add_column('audit_events', sa.Column('project_id', sa.Integer(), nullable=True))
    op.add_column('audit_events', sa.Column('resource_type', sa.String(length=32), nullable=True))
    op.add_column('audit_events', sa.Column('resource_id', sa.String(length=64), nullable=True))
    op.create_index('ix_audit_events_project_id', 'audit_events', ['project_id'])
    op.create_index('ix_audit_events_resource', 'audit_events', ['resource_type', 'resource_id'])


def downgrade() -> None:
    """Groups go; credentials act in any project again; audit rows keep the rest of what they said."""
    sqlite = op.get_bind().dialect.name == 'sqlite'
    op.drop_index('ix_audit_events_resource', table_name='audit_events')
    op.drop_index('ix_audit_events_project_id', table_name='audit_events')
    for column in ('resource_id', 'resource_type', 'project_id'):
        if sqlite:
            op.execute(f"ALTER TABLE audit_events DROP COLUMN {column}")
        else:
            op.drop_column('audit_events', column)
    op.drop_index('ix_app_credentials_project_id', table_name='app_credentials')
    if sqlite:
        op.execute("ALTER TABLE app_credentials DROP COLUMN project_id")
    else:
        op.drop_constraint('fk_app_credentials_project_id', 'app_credentials', type_='foreignkey')
        op.drop_column('app_credentials', 'project_id')
    op.drop_index('ix_group_project_roles_project_id', table_name='group_project_roles')
    op.drop_table('group_project_roles')
    op.drop_index('ix_group_members_user_id', table_name='group_members')
    op.drop_table('group_members')
    op.drop_index('ix_groups_org_id', table_name='groups')
    op.drop_table('groups')
