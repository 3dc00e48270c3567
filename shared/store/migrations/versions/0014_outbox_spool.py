"""outbox_body: bodies stored in the outbox spool's segment files

A capture chunk with many new bodies stores them in a segment file (``body_spool``) instead of
in the row: ``data`` becomes optional, ``segment``/``seg_offset``/``seg_length`` say where the body is.
Existing rows keep their ``data`` and stay readable.

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_body") as batch:
        batch.alter_column("data", existing_type=sa.LargeBinary(), nullable=True)
        batch.add_column(sa.Column("segment", sa.String(40)))
        batch.add_column(sa.Column("seg_offset", sa.BigInteger()))
        batch.add_column(sa.Column("seg_length", sa.BigInteger()))
    op.create_index("ix_outbox_body_segment", "outbox_body", ["segment"])


def downgrade() -> None:
    # Bodies in segments cannot go back into rows here: refuse rather than lose them.
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM outbox_body WHERE segment IS NOT NULL")).scalar():
        raise RuntimeError("outbox bodies are stored in the outbox spool: let the outbox drain before downgrading")
    op.drop_index("ix_outbox_body_segment", table_name="outbox_body")
    with op.batch_alter_table("outbox_body") as batch:
        batch.drop_column("seg_length")
        batch.drop_column("seg_offset")
        batch.drop_column("segment")
        batch.alter_column("data", existing_type=sa.LargeBinary(), nullable=False)
