"""volumes, volume_snapshots, volume_attachments (issue 13)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 11:15:09.934688
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('volumes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('size_gib', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('backend', sa.String(length=64), nullable=False),
    sa.Column('hypervisor_id', sa.Integer(), nullable=True),
    sa.Column('source_image_id', sa.Integer(), nullable=True),
    sa.Column('source_snapshot_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('size_gib > 0', name='ck_volumes_size'),
    sa.ForeignKeyConstraint(['hypervisor_id'], ['hypervisors.id'], ),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('org_id', 'name', name='uq_volumes_org_name'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('volumes', schema=None) as batch_op:
        batch_op.create_index('ix_volumes_org_id_id', ['org_id', 'id'], unique=False)

    op.create_table('volume_snapshots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('volume_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('size_gib', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['volume_id'], ['volumes.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('org_id', 'name', name='uq_volume_snapshots_org_name'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('volume_snapshots', schema=None) as batch_op:
        batch_op.create_index('ix_volume_snapshots_volume_id', ['volume_id'], unique=False)

    op.create_table('volume_attachments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('volume_id', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.Integer(), nullable=False),
    sa.Column('device', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['volume_id'], ['volumes.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('instance_id', 'device', name='uq_volume_attachments_instance_device'),
    sa.UniqueConstraint('volume_id', name='uq_volume_attachments_volume'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('volume_attachments', schema=None) as batch_op:
        batch_op.create_index('ix_volume_attachments_org_id_id', ['org_id', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('volume_attachments', schema=None) as batch_op:
        batch_op.drop_index('ix_volume_attachments_org_id_id')

    op.drop_table('volume_attachments')
    with op.batch_alter_table('volume_snapshots', schema=None) as batch_op:
        batch_op.drop_index('ix_volume_snapshots_volume_id')

    op.drop_table('volume_snapshots')
    with op.batch_alter_table('volumes', schema=None) as batch_op:
        batch_op.drop_index('ix_volumes_org_id_id')

    op.drop_table('volumes')
