"""tenant networks: vpcs, subnets, ports, port_ips; hypervisors.vtep and incarnations (issue 11)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 08:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('hypervisors', schema=None) as batch_op:
        batch_op.add_column(sa.Column('vtep', sa.String(length=15), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('incarnation', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('net_incarnation', sa.String(length=64), nullable=False, server_default=''))
    op.create_table(
        'vpcs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('org_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('domain', sa.String(length=253), nullable=False),
        sa.Column('mtu', sa.Integer(), nullable=False),
        sa.Column('generation', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint('generation >= 0 AND mtu >= 576', name='ck_vpcs_generation_mtu'),
        sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('org_id', 'name', name='uq_vpcs_org_name'),
    )
    op.create_index('ix_vpcs_org_id', 'vpcs', ['org_id'], unique=False)
    op.create_table(
        'subnets',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('org_id', sa.Integer(), nullable=False),
        sa.Column('vpc_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('cidr', sa.String(length=18), nullable=False),
        sa.Column('gateway', sa.String(length=15), nullable=True),
        sa.Column('allocation_pools', sa.JSON(), nullable=False),
        sa.Column('dns_servers', sa.JSON(), nullable=False),
        sa.Column('dhcp', sa.Boolean(), nullable=False),
        sa.Column('vni', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint('vni >= 1 AND vni <= 16777215', name='ck_subnets_vni'),
        sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['vpc_id'], ['vpcs.id'], ondelete='RESTRICT'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('org_id', 'name', name='uq_subnets_org_name'),
        sa.UniqueConstraint('vni', name='uq_subnets_vni'),
    )
    op.create_index('ix_subnets_org_id', 'subnets', ['org_id'], unique=False)
    op.create_index('ix_subnets_vpc_id', 'subnets', ['vpc_id'], unique=False)
    op.create_table(
        'ports',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('org_id', sa.Integer(), nullable=False),
        sa.Column('subnet_id', sa.Integer(), nullable=False),
        sa.Column('vpc_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('mac', sa.String(length=17), nullable=False),
        sa.Column('instance_id', sa.Integer(), nullable=True),
        sa.Column('device_index', sa.Integer(), nullable=True),
        sa.Column('hypervisor_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['subnet_id'], ['subnets.id'], ondelete='RESTRICT'),
        sa.ForeignKeyConstraint(['vpc_id'], ['vpcs.id'], ondelete='RESTRICT'),
        sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['hypervisor_id'], ['hypervisors.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('mac', name='uq_ports_mac'),
    )
    op.create_index('ix_ports_org_id_id', 'ports', ['org_id', 'id'], unique=False)
    op.create_index('ix_ports_subnet_id', 'ports', ['subnet_id'], unique=False)
    op.create_index('ix_ports_vpc_hypervisor', 'ports', ['vpc_id', 'hypervisor_id'], unique=False)
    op.create_index('ix_ports_instance_id', 'ports', ['instance_id'], unique=False)
    op.create_table(
        'port_ips',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('port_id', sa.Integer(), nullable=False),
        sa.Column('subnet_id', sa.Integer(), nullable=False),
        sa.Column('address', sa.String(length=15), nullable=False),
        sa.ForeignKeyConstraint(['port_id'], ['ports.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['subnet_id'], ['subnets.id'], ondelete='RESTRICT'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('subnet_id', 'address', name='uq_port_ips_subnet_address'),
    )
    op.create_index('ix_port_ips_port_id', 'port_ips', ['port_id'], unique=False)


def downgrade() -> None:
    op.drop_table('port_ips')
    op.drop_table('ports')
    op.drop_table('subnets')
    op.drop_table('vpcs')
    with op.batch_alter_table('hypervisors', schema=None) as batch_op:
        batch_op.drop_column('net_incarnation')
        batch_op.drop_column('incarnation')
        batch_op.drop_column('vtep')
