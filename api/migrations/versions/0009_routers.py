"""external_networks, routers, router_subnets, external_ips (issue 12)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 14:38:55.978888
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('external_networks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('cidr', sa.String(length=18), nullable=False),
    sa.Column('gateway', sa.String(length=15), nullable=True),
    sa.Column('bridge', sa.String(length=15), nullable=False),
    sa.Column('allocation_pools', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', name='uq_external_networks_name')
    )
    op.create_table('routers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('vpc_id', sa.Integer(), nullable=False),
    sa.Column('external_network_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['external_network_id'], ['external_networks.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['vpc_id'], ['vpcs.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('org_id', 'name', name='uq_routers_org_name'),
    sa.UniqueConstraint('vpc_id', name='uq_routers_vpc')
    )
    with op.batch_alter_table('routers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_routers_org_id'), ['org_id'], unique=False)

    op.create_table('router_subnets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('router_id', sa.Integer(), nullable=False),
    sa.Column('subnet_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['router_id'], ['routers.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subnet_id'], ['subnets.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('subnet_id', name='uq_router_subnets_subnet')
    )
    with op.batch_alter_table('router_subnets', schema=None) as batch_op:
        batch_op.create_index('ix_router_subnets_router_id', ['router_id'], unique=False)

    op.create_table('external_ips',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('external_network_id', sa.Integer(), nullable=False),
    sa.Column('address', sa.String(length=15), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('router_id', sa.Integer(), nullable=True),
    sa.Column('hypervisor_id', sa.Integer(), nullable=True),
    sa.Column('port_id', sa.Integer(), nullable=True),
    sa.Column('fixed_ip', sa.String(length=15), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('floating', 'snat')", name='ck_external_ips_kind'),
    sa.ForeignKeyConstraint(['external_network_id'], ['external_networks.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['hypervisor_id'], ['hypervisors.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['port_id'], ['ports.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['router_id'], ['routers.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('external_network_id', 'address', name='uq_external_ips_address'),
    sa.UniqueConstraint('router_id', 'hypervisor_id', name='uq_external_ips_router_hypervisor')
    )
    with op.batch_alter_table('external_ips', schema=None) as batch_op:
        batch_op.create_index('ix_external_ips_org_id_id', ['org_id', 'id'], unique=False)
        batch_op.create_index('ix_external_ips_port_id', ['port_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('external_ips', schema=None) as batch_op:
        batch_op.drop_index('ix_external_ips_port_id')
        batch_op.drop_index('ix_external_ips_org_id_id')

    op.drop_table('external_ips')
    with op.batch_alter_table('router_subnets', schema=None) as batch_op:
        batch_op.drop_index('ix_router_subnets_router_id')

    op.drop_table('router_subnets')
    with op.batch_alter_table('routers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_routers_org_id'))

    op.drop_table('routers')
    op.drop_table('external_networks')
