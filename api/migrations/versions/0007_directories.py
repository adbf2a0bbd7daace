"""identity: organisations' directories (LDAP, OpenID Connect), where each user signs in, the audit trail,
application credentials

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 11:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Every existing user is local (a password kept here)."""
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=8), nullable=False, server_default='local'))
        batch_op.add_column(sa.Column('external_id', sa.String(length=512), nullable=True))
    # An index, not a constraint: on SQLite a new constraint would copy the users table, and
    # dropping the old one would, with foreign keys on, delete every membership (0005).
    op.create_index('ix_users_external_id', 'users', ['external_id'], unique=True)
    op.create_table('directories',
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('org_id', 'kind')
    )
    op.create_table('audit_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=True),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('username', sa.String(length=64), nullable=True),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_events_at', 'audit_events', ['at'], unique=False)
    op.create_index('ix_audit_events_org_id', 'audit_events', ['org_id'], unique=False)
    op.create_table('app_credentials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('role', sa.Enum('admin', 'member', 'reader', name='role', native_enum=False, length=16),
              nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_app_credentials_user_id', 'app_credentials', ['user_id'], unique=False)


def downgrade() -> None:
    """Drop them; directory users stay, unable to sign in (their password hash matches nothing)."""
    op.drop_index('ix_app_credentials_user_id', table_name='app_credentials')
    op.drop_table('app_credentials')
    op.drop_index('ix_audit_events_org_id', table_name='audit_events')
    op.drop_index('ix_audit_events_at', table_name='audit_events')
    op.drop_table('audit_events')
    op.drop_table('directories')
    op.drop_index('ix_users_external_id', table_name='users')
    if op.get_bind().dialect.name == "sqlite":
        # As 0005: SQLite's own DROP COLUMN, not a batch copy that would drop every membership.
        op.execute("ALTER TABLE users DROP COLUMN external_id")
        op.execute("ALTER TABLE users DROP COLUMN source")
    else:
        op.drop_column('users', 'external_id')
        op.drop_column('users', 'source')
