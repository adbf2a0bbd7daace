"""hypervisors: the draining flag

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:12:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``hypervisors.draining``; every existing hypervisor starts undrained.

    The states ``gone`` and ``removed`` need no change: ``state`` is a free String(16).
    """
    with op.batch_alter_table('hypervisors', schema=None) as batch_op:
        batch_op.add_column(sa.Column('draining', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    """Drop the flag."""
    with op.batch_alter_table('hypervisors', schema=None) as batch_op:
        batch_op.drop_column('draining')
