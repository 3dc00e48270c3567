"""history: base snapshots of each replicated mailbox's catalogue

``history_snapshot``: per replica, the catalogue (folders, messages with SHA-256, flags, internal
date and folder, folder renames) as it was after one applied sequence number, zlib-compressed
JSON; a point-in-time restore starts from the nearest one and replays the applied ``inbox`` rows
kept after it. ``history_snapshot_body``: the bodies a snapshot refers to (garbage collection
keeps them while the snapshot exists). ``restore_job``: point-in-time restores, their progress and
result. ``delete_guard``: mailboxes whose deletions the mass-delete guard holds (the held changes
are ``inbox`` rows in state ``held``).

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "history_snapshot",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("replica_id", sa.Integer(), sa.ForeignKey("replica.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True)),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("replica_id", "seq", name="uq_history_snapshot_replica_seq"),
    )
    op.create_table(
        "history_snapshot_body",
        sa.Column("snapshot_id", sa.Integer(), sa.ForeignKey("history_snapshot.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
    )
    op.create_index("ix_history_snapshot_body_sha256", "history_snapshot_body", ["sha256"])
    op.create_table(
        "restore_job",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("replica_id", sa.Integer(), sa.ForeignKey("replica.id", ondelete="CASCADE"), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("messages_total", sa.BigInteger(), nullable=False),
        sa.Column("messages_done", sa.BigInteger(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("result", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("created_by", sa.String(200)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "delete_guard",
        sa.Column("replica_id", sa.Integer(), sa.ForeignKey("replica.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deletions", sa.BigInteger(), nullable=False),
        sa.Column("mailbox_messages", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("delete_guard")
    op.drop_table("restore_job")
    op.drop_index("ix_history_snapshot_body_sha256", table_name="history_snapshot_body")
    op.drop_table("history_snapshot_body")
    op.drop_table("history_snapshot")
