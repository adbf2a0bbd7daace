"""jobs: any resource as the subject (kind, subject_type, subject_id, targets)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 21:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Every existing job was a VM job on ``instance_id``: it becomes kind ``vm`` on subject
    ``("instance", instance_id)``, with its hypervisor as its one target."""
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=32), nullable=False, server_default='vm'))
        batch_op.add_column(sa.Column('subject_type', sa.String(length=32), nullable=False,
                                      server_default='instance'))
        batch_op.add_column(sa.Column('subject_id', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('targets', sa.JSON(), nullable=True))
        batch_op.alter_column('action', existing_type=sa.String(length=16), type_=sa.String(length=32))
    op.execute("UPDATE jobs SET subject_id = instance_id")
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_instance_id')
        batch_op.drop_column('instance_id')
        batch_op.alter_column('kind', server_default=None)
        batch_op.alter_column('subject_type', server_default=None)
        batch_op.alter_column('subject_id', server_default=None)
        batch_op.create_index('ix_jobs_subject', ['subject_type', 'subject_id'], unique=False)


def downgrade() -> None:
    """Back to VM-only jobs: jobs on other subjects cannot be kept and are deleted."""
    op.execute("DELETE FROM jobs WHERE subject_type != 'instance'")
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('instance_id', sa.Integer(), nullable=True))
    op.execute("UPDATE jobs SET instance_id = subject_id")
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.alter_column('instance_id', existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key('fk_jobs_instance_id_instances', 'instances', ['instance_id'], ['id'],
                                    ondelete='CASCADE')
        batch_op.create_index('ix_jobs_instance_id', ['instance_id'], unique=False)
        batch_op.drop_index('ix_jobs_subject')
        batch_op.drop_column('targets')
        batch_op.drop_column('subject_id')
        batch_op.drop_column('subject_type')
        batch_op.drop_column('kind')
        batch_op.alter_column('action', existing_type=sa.String(length=32), type_=sa.String(length=16))
