"""model budgets: measured memory per version, per-model inference limits

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("memory_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("budget_error", sa.Text(), nullable=True))

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inference_timeout_seconds", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("max_concurrency", sa.Integer(), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("max_concurrency")
        batch_op.drop_column("inference_timeout_seconds")

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("budget_error")
        batch_op.drop_column("memory_bytes")
