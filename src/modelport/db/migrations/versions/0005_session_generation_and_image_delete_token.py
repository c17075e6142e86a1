"""token generation per user, delete token per anonymous image

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("token_generation", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )

    with op.batch_alter_table("image_predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delete_token_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("image_predictions", schema=None) as batch_op:
        batch_op.drop_column("delete_token_sha256")

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("token_generation")
