"""standby refusals and alterations named; DR-side errors at the source

``rejected_message``: the refused message's Message-ID, subject and date (from its header).
``altered_message``: per replica, a message the standby stored with other bytes than were sent
(the change's sequence number and message id, folder, SHA-256 and size sent and stored, what
changed, Message-ID, subject, date). ``mailbox.dr_error``: at the source gateway, what blocks the
mailbox at the DR site, as the recovery gateway reports it. ``folder_alias``: at the recovery
gateway, a source folder paired with the standby's own special folder of the same use (kind
``special``), or a parent folder the standby created by itself for a replicated folder (kind
``implicit``).

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rejected_message") as batch:
        batch.add_column(sa.Column("message_id", sa.String(1000)))
        batch.add_column(sa.Column("subject", sa.String(1000)))
        batch.add_column(sa.Column("msg_date", sa.String(200)))
    op.create_table(
        "altered_message",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("replica_id", sa.Integer(), sa.ForeignKey("replica.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("mid", sa.BigInteger()),
        sa.Column("folder", sa.String(1000), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("standby_sha256", sa.String(64), nullable=False),
        sa.Column("sent_size", sa.BigInteger(), nullable=False),
        sa.Column("stored_size", sa.BigInteger(), nullable=False),
        sa.Column("what", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(1000)),
        sa.Column("subject", sa.String(1000)),
        sa.Column("msg_date", sa.String(200)),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_altered_message_replica", "altered_message", ["replica_id", "sha256"])
    with op.batch_alter_table("mailbox") as batch:
        batch.add_column(sa.Column("dr_error", sa.Text()))
    op.create_table(
        "folder_alias",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("server", sa.String(200), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("source_name", sa.String(1000), nullable=False),
        sa.Column("standby_name", sa.String(1000), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False, server_default="special"),
        sa.UniqueConstraint("server", "address", "source_name", name="uq_folder_alias"),
    )


def downgrade() -> None:
    op.drop_table("folder_alias")
    with op.batch_alter_table("mailbox") as batch:
        batch.drop_column("dr_error")
    op.drop_index("ix_altered_message_replica", table_name="altered_message")
    op.drop_table("altered_message")
    with op.batch_alter_table("rejected_message") as batch:
        batch.drop_column("msg_date")
        batch.drop_column("subject")
        batch.drop_column("message_id")
