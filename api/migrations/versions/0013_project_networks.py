"""routers, floating IPs (external_ips), security groups and their rules belong to a project
(issue 12's tables, issue 14); each project gets its default security group

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 18:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

TABLES = ('routers', 'external_ips', 'security_groups', 'security_rules')
# A group's name becomes unique in its project (each project has its group ``default``).
ORG_UNIQUE, PROJECT_UNIQUE = 'uq_security_groups_org_name', 'uq_security_groups_project_name'
DEFAULT_DESCRIPTION = 'egress open, ingress from its members'


def _add_project_id(table: str, sqlite: bool) -> None:
    # As 0012: in place on SQLite (nullable, no foreign key; a batch copy would drop the rows
    # that reference the table), with a foreign key and NOT NULL on PostgreSQL.
    if sqlite:
        op.execute(f"ALTER TABLE {table} ADD COLUMN project_id INTEGER")
    else:
        op.add_column(table, sa.Column('project_id', sa.Integer(), nullable=True))
        op.create_foreign_key(f'fk_{table}_project_id', table, 'projects', ['project_id'], ['id'], ondelete='CASCADE')


def _copy_security_groups(old: str, new: str, columns: list[str], drop_project: bool) -> None:
    """SQLite: security_groups' unique constraint ``old`` becomes ``new`` (on ``columns``), which
    only a copy of the table does. Dropping the old table (the copy's last step) would cascade to
    the rows that reference it (foreign keys are on, inside a transaction that cannot turn them
    off), so the rules and memberships wait in temporary tables meanwhile."""
    op.execute("CREATE TEMPORARY TABLE keep_rules AS SELECT * FROM security_rules")
    op.execute("CREATE TEMPORARY TABLE keep_members AS SELECT * FROM port_security_groups")
    op.execute("DELETE FROM port_security_groups")
    op.execute("DELETE FROM security_rules")
    with op.batch_alter_table('security_groups', recreate='always') as batch:
        batch.drop_constraint(old, type_='unique')
        batch.create_unique_constraint(new, columns)
        if drop_project:
            batch.drop_column('project_id')
    op.execute("INSERT INTO security_rules SELECT * FROM keep_rules")
    op.execute("INSERT INTO port_security_groups SELECT * FROM keep_members")
    op.execute("DROP TABLE keep_rules")
    op.execute("DROP TABLE keep_members")


def upgrade() -> None:
    """Every existing row goes into its organisation's default project (a SNAT address into its
    router's); every project without a default group gets one."""
    sqlite = op.get_bind().dialect.name == 'sqlite'
    for table in TABLES:
        _add_project_id(table, sqlite)
        op.execute(f"UPDATE {table} SET project_id = (SELECT p.id FROM projects p "
                   f"WHERE p.org_id = {table}.org_id AND p.is_default)")
    # A router's SNAT addresses are in the router's project (the same default project today,
    # said here so that the rule is the migration's too).
    op.execute("UPDATE external_ips SET project_id = (SELECT r.project_id FROM routers r "
               "WHERE r.id = external_ips.router_id) WHERE router_id IS NOT NULL")
    if sqlite:
        _copy_security_groups(ORG_UNIQUE, PROJECT_UNIQUE, ['project_id', 'name'], drop_project=False)
    else:
        op.drop_constraint(ORG_UNIQUE, 'security_groups', type_='unique')
        op.create_unique_constraint(PROJECT_UNIQUE, 'security_groups', ['project_id', 'name'])
        for table in TABLES:
            op.alter_column(table, 'project_id', nullable=False)
    for table in TABLES:
        op.create_index(f'ix_{table}_project_id', table, ['project_id'])
    # Every project without a default group gets one, with its two rules (models/secgroups.py).
    op.execute("INSERT INTO security_groups (org_id, project_id, name, description, is_default, created_at) "
               f"SELECT p.org_id, p.id, 'default', '{DEFAULT_DESCRIPTION}', true, CURRENT_TIMESTAMP FROM projects p "
               "WHERE NOT EXISTS (SELECT 1 FROM security_groups g WHERE g.project_id = p.id AND g.is_default)")
    op.execute("INSERT INTO security_rules (org_id, project_id, group_id, direction, protocol, created_at) "
               "SELECT g.org_id, g.project_id, g.id, 'egress', 'any', CURRENT_TIMESTAMP FROM security_groups g "
               "WHERE g.is_default AND NOT EXISTS (SELECT 1 FROM security_rules r WHERE r.group_id = g.id)")
    op.execute("INSERT INTO security_rules (org_id, project_id, group_id, direction, protocol, remote_group_id, "
               "created_at) SELECT g.org_id, g.project_id, g.id, 'ingress', 'any', g.id, CURRENT_TIMESTAMP "
               "FROM security_groups g WHERE g.is_default AND NOT EXISTS (SELECT 1 FROM security_rules r "
               "WHERE r.group_id = g.id AND r.direction = 'ingress')")


def downgrade() -> None:
    """Back to organisation-scoped tables: only the default project's default group stays
    (a port left in another project's default group falls back to its organisation's); groups'
    names must then be unique in their organisation again, which a downgrade of an organisation
    holding same-named groups in two projects refuses (the unique constraint)."""
    sqlite = op.get_bind().dialect.name == 'sqlite'
    op.execute("DELETE FROM port_security_groups WHERE group_id IN (SELECT g.id FROM security_groups g "
               "JOIN projects p ON p.id = g.project_id WHERE g.is_default AND NOT p.is_default)")
    op.execute("DELETE FROM security_rules WHERE group_id IN (SELECT g.id FROM security_groups g "
               "JOIN projects p ON p.id = g.project_id WHERE g.is_default AND NOT p.is_default)")
    op.execute("DELETE FROM security_groups WHERE is_default AND project_id IN "
               "(SELECT id FROM projects WHERE NOT is_default)")
    for table in TABLES:
        op.drop_index(f'ix_{table}_project_id', table_name=table)
    if sqlite:
        for table in ('security_rules', 'routers', 'external_ips'):
            op.execute(f"ALTER TABLE {table} DROP COLUMN project_id")
        _copy_security_groups(PROJECT_UNIQUE, ORG_UNIQUE, ['org_id', 'name'], drop_project=True)
    else:
        op.drop_constraint(PROJECT_UNIQUE, 'security_groups', type_='unique')
        op.create_unique_constraint(ORG_UNIQUE, 'security_groups', ['org_id', 'name'])
        for table in TABLES:
            op.drop_constraint(f'fk_{table}_project_id', table, type_='foreignkey')
            op.drop_column(table, 'project_id')
