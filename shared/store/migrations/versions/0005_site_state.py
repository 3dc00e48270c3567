"""site state: cutover and failback per mailbox

``replica`` gains the mailbox's site state (replicating, cutting-over, active-at-dr,
failing-back, switching-back) with the sequence numbers that bound cutover and failback and the
failback report; ``site_transition`` keeps every transition with its time and who asked;
``mid_alias`` maps the message ids the recovery gateway gives standby messages at cutover to the
source's ids of the same messages; ``server_health`` holds the automatic failover's probe
results. ``mailbox`` (capture side) gains the site state its gateway last learned.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replica") as batch:
        batch.add_column(sa.Column("site_state", sa.String(length=20), server_default="replicating", nullable=False))
        batch.add_column(sa.Column("site_since", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("cutover_seq", sa.BigInteger()))
        batch.add_column(sa.Column("final_seq", sa.BigInteger()))
        batch.add_column(sa.Column("failback_report", sa.Text()))
    with op.batch_alter_table("mailbox") as batch:
        batch.add_column(sa.Column("site_state", sa.String(length=20), server_default="replicating", nullable=False))
    op.create_table(
        "site_transition",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("replica_id", sa.Integer(), nullable=False),
        sa.Column("before", sa.String(length=20), nullable=False),
        sa.Column("after", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["replica_id"], ["replica.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_site_transition_replica", "site_transition", ["replica_id"])
    op.create_table(
        "mid_alias",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("dr_mid", sa.BigInteger(), nullable=False),
        sa.Column("source_mid", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailbox.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mailbox_id", "dr_mid"),
    )
    op.create_table(
        "server_health",
        sa.Column("server", sa.String(length=200), nullable=False),
        sa.Column("up", sa.Boolean(), nullable=False),
        sa.Column("down_since", sa.DateTime(timezone=True)),
        sa.Column("last_check", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text()),
        sa.Column("failed_over_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("server"),
    )


def downgrade() -> None:
    op.drop_table("server_health")
    op.drop_table("mid_alias")
    op.drop_index("ix_site_transition_replica", "site_transition")
    op.drop_table("site_transition")
    with op.batch_alter_table("mailbox") as batch:
        batch.drop_column("site_state")
    with op.batch_alter_table("replica") as batch:
        for name in ("failback_report", "final_seq", "cutover_seq", "site_since", "site_state"):
            batch.drop_column(name)
