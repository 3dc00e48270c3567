"""verify: the last verdict per mailbox

``verify_result``: per mailbox of the source gateway, the last ``mailrepl verify`` verdict
(equal, different, error, in_flight), the job that gave it, when, how many differences of each
kind (JSON object) and the mailbox's report (JSON, its difference list bounded).

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verify_result",
        sa.Column("mailbox_id", sa.Integer(), sa.ForeignKey("mailbox.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("job", sa.String(40), nullable=False),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("kinds", sa.Text(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("verify_result")
