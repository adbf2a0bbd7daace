"""security_groups, security_rules, port_security_groups, port_allowed_addresses (issue 12)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 14:55:25.760840
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('security_groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.String(length=255), nullable=False),
    sa.Column('is_default', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('org_id', 'name', name='uq_security_groups_org_name')
    )
    with op.batch_alter_table('security_groups', schema=None) as batch_op:
        batch_op.create_index('ix_security_groups_org_id_id', ['org_id', 'id'], unique=False)

    op.create_table('security_rules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('protocol', sa.String(length=8), nullable=False),
    sa.Column('port_min', sa.Integer(), nullable=True),
    sa.Column('port_max', sa.Integer(), nullable=True),
    sa.Column('remote_cidr', sa.String(length=18), nullable=True),
    sa.Column('remote_group_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("direction IN ('ingress', 'egress')", name='ck_security_rules_direction'),
    sa.CheckConstraint("protocol IN ('tcp', 'udp', 'icmp', 'any')", name='ck_security_rules_protocol'),
    sa.ForeignKeyConstraint(['group_id'], ['security_groups.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['remote_group_id'], ['security_groups.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('security_rules', schema=None) as batch_op:
        batch_op.create_index('ix_security_rules_group_id', ['group_id'], unique=False)
        batch_op.create_index('ix_security_rules_remote_group_id', ['remote_group_id'], unique=False)

    op.create_table('port_allowed_addresses',
    sa.Column('port_id', sa.Integer(), nullable=False),
    sa.Column('cidr', sa.String(length=18), nullable=False),
    sa.ForeignKeyConstraint(['port_id'], ['ports.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('port_id', 'cidr')
    )
    op.create_table('port_security_groups',
    sa.Column('port_id', sa.Integer(), nullable=False),
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['security_groups.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['port_id'], ['ports.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('port_id', 'group_id')
    )
    with op.batch_alter_table('port_security_groups', schema=None) as batch_op:
        batch_op.create_index('ix_port_security_groups_group_id', ['group_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('port_security_groups', schema=None) as batch_op:
        batch_op.drop_index('ix_port_security_groups_group_id')

    op.drop_table('port_security_groups')
    op.drop_table('port_allowed_addresses')
    with op.batch_alter_table('security_rules', schema=None) as batch_op:
        batch_op.drop_index('ix_security_rules_remote_group_id')
        batch_op.drop_index('ix_security_rules_group_id')

    op.drop_table('security_rules')
    with op.batch_alter_table('security_groups', schema=None) as batch_op:
        batch_op.drop_index('ix_security_groups_org_id_id')

    op.drop_table('security_groups')
