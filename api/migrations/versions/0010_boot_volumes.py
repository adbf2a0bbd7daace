"""volume_attachments.delete_on_termination: boot from volume (issue 13)

A VM's boot volume is its attachment as ``vda``; the flag says whether the volume is deleted
with the VM. Added in place (no table copy): SQLite's ADD COLUMN keeps the table's
AUTOINCREMENT, so attachment ids are still never reused.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('volume_attachments', sa.Column('delete_on_termination', sa.Boolean(), nullable=False,
                                                  server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('volume_attachments', schema=None) as batch_op:
        batch_op.drop_column('delete_on_termination')
