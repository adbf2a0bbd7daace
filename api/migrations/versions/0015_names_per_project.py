"""names unique per project, not per organisation: images, SSH keys, VPCs, subnets, volumes,
snapshots, routers, and live instances (issue 14; security groups' since 0013); directory groups
mapped onto local groups, and which group memberships a directory made

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 22:10:00.000000
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

TABLES = ('images', 'ssh_keys', 'vpcs', 'subnets', 'volumes', 'volume_snapshots', 'routers')
LIVE = "status != 'deleted'"  # instances: only live ones hold their name
INSTANCES = {'org': ('uq_instances_org_live_name', 'org_id'), 'project': ('uq_instances_project_live_name',
                                                                          'project_id')}


def _unique(table: str, scope: str) -> tuple[str, str]:
    """The name of ``table``'s unique name constraint in ``scope`` (org or project), and its clause
    as SQLAlchemy writes it into SQLite's CREATE TABLE."""
    column = 'org_id' if scope == 'org' else 'project_id'
    name = f'uq_{table}_{scope}_name'
    return name, f'CONSTRAINT {name} UNIQUE ({column}, name)'


@contextmanager
def _sqlite_foreign_keys_off() -> Iterator[sa.Connection]:
    """SQLite: a unique constraint written into CREATE TABLE goes only with a copy of the table,
    and dropping the old copy with foreign keys on would act on every row that references it
    (cascade, set null, or refuse: instances, ports, snapshots ...). SQLite's own procedure
    (sqlite.org/lang_altertable.html, "other kinds of table schema changes"): foreign keys off,
    which only works outside a transaction, so this migration's transaction is committed first;
    the copies in one transaction; ``PRAGMA foreign_key_check``; commit; foreign keys on. The
    version is stamped after, in the next transaction: a crash between the two leaves the new
    constraints under version 0014, and the upgrade run again finds them done (``_rebuild``)."""
    bind = op.get_bind()
    raw = bind.connection.dbapi_connection
    assert raw is not None
    raw.execute("COMMIT")
    raw.execute("PRAGMA foreign_keys=OFF")
    raw.execute("BEGIN IMMEDIATE")
    try:
        yield bind
        broken = raw.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"0015: rows whose references the copies broke: {broken[:5]}")
        raw.execute("COMMIT")
    except BaseException:
        raw.execute("ROLLBACK")
        raise
    finally:
        raw.execute("PRAGMA foreign_keys=ON")
        raw.execute("BEGIN IMMEDIATE")  # the transaction alembic commits with the version


def _rebuild(bind: sa.Connection, table: str, old: str, new: str) -> None:
    """SQLite: ``table`` copied with its CREATE TABLE's clause ``old`` replaced by ``new``, keeping
    everything else as written (checks, AUTOINCREMENT and its high-water mark, indexes); done
    already when the table has ``new``."""
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                               (table,)).scalar_one()
    if new in sql:
        return
    if old not in sql:
        raise RuntimeError(f"0015: table {table} has neither {old!r} nor {new!r}")
    indexes = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                                   "AND sql IS NOT NULL", (table,)).scalars().all()
    autoincrement = "AUTOINCREMENT" in sql
    seq = bind.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).scalar() \
        if autoincrement else None
    copy = f"{table}_0015"
    head = re.match(rf'CREATE TABLE ("{table}"|{table}) \(', sql)  # quoted once SQLite renamed it
    assert head is not None, sql[:60]
    bind.exec_driver_sql(f"CREATE TABLE {copy} (" + sql[head.end():].replace(old, new))
    bind.exec_driver_sql(f"INSERT INTO {copy} SELECT * FROM {table}")
    bind.exec_driver_sql(f"DROP TABLE {table}")
    bind.exec_driver_sql(f"ALTER TABLE {copy} RENAME TO {table}")
    for index in indexes:
        bind.exec_driver_sql(index)
    if seq is not None:  # a deleted row's id is never given again (an image's upload may still stream)
        bind.exec_driver_sql("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (seq, table))


def _instances_index(drop: str, make: str) -> None:
    name, column = INSTANCES[make]
    op.drop_index(INSTANCES[drop][0], table_name='instances', sqlite_where=sa.text(LIVE),
                  postgresql_where=sa.text(LIVE))
    op.create_index(name, 'instances', [column, 'name'], unique=True, sqlite_where=sa.text(LIVE),
                    postgresql_where=sa.text(LIVE))


def _change(drop: str, make: str) -> None:
    """Every table's name constraint from scope ``drop`` to ``make`` (org, project)."""
    if op.get_bind().dialect.name == 'sqlite':
        with _sqlite_foreign_keys_off() as bind:
            for table in TABLES:
                _rebuild(bind, table, _unique(table, drop)[1], _unique(table, make)[1])
            names = set(bind.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'").scalars())
            if INSTANCES[drop][0] in names:
                _instances_index(drop, make)
        return
    for table in TABLES:
        op.drop_constraint(_unique(table, drop)[0], table, type_='unique')
        op.create_unique_constraint(_unique(table, make)[0], table, [f'{make}_id', 'name'])
    _instances_index(drop, make)


def upgrade() -> None:
    """Every existing name was unique in its organisation, so it is in its project. Every existing
    group membership is an admin's (``directory`` NULL)."""
    _change('org', 'project')
    op.create_table('directory_groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('directory', sa.String(length=8), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('org_id', 'directory', 'name', 'group_id', name='uq_directory_groups')
    )
    op.create_index('ix_directory_groups_org_id', 'directory_groups', ['org_id'])
    op.create_index('ix_directory_groups_group_id', 'directory_groups', ['group_id'])
    # In place on SQLite (a copy of group_members is not needed for a nullable column).
    op.add_column('group_members', sa.Column('directory', sa.String(length=8), nullable=True))


def downgrade() -> None:
    """Back to names unique per organisation: refused, naming them, while two projects of one
    organisation hold the same name (rename one first)."""
    bind = op.get_bind()
    clashes = []
    for table in (*TABLES, 'instances'):
        live = f" WHERE {LIVE}" if table == 'instances' else ""
        for org_id, name, ids in bind.execute(sa.text(
                f"SELECT org_id, name, count(*) FROM {table}{live} GROUP BY org_id, name HAVING count(*) > 1")):
            clashes.append(f"{table} {name!r} ({ids} in organisation {org_id})")
    if clashes:
        raise RuntimeError("0015 downgrade: names must be unique per organisation again, and these are not: "
                           + ", ".join(clashes[:20]) + "; rename them first")
    # The memberships directories made stay, as an admin's (0014 knows no other kind).
    if bind.dialect.name == 'sqlite':
        op.execute("ALTER TABLE group_members DROP COLUMN directory")
    else:
        op.drop_column('group_members', 'directory')
    op.drop_index('ix_directory_groups_group_id', table_name='directory_groups')
    op.drop_index('ix_directory_groups_org_id', table_name='directory_groups')
    op.drop_table('directory_groups')
    _change('project', 'org')
