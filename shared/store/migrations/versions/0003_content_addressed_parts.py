"""content-addressed parts: skeletons in inbox_body, part references, bytes accounting

Received bodies are now kept as skeletons (``mailrepl.shared.content.mime_split``) whose large parts live in the
blob store; ``inbox_part`` records which parts each skeleton refers to, so that the blob store's
garbage collection knows what is still in use. Bodies received before this revision are whole
messages: they become whole-message skeletons (no parts). The mailbox table gains the bytes
accounting counters.

Revision ID: 0003
Revises: 0002
"""
import struct

import sqlalchemy as sa
import xxhash
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COUNTERS = ("captured_bytes", "shipped_raw_bytes", "shipped_payload_bytes", "shipped_wire_bytes")

# The skeleton format as this revision wrote it (version 1 of ``mime_split``), frozen here so
# that the migration does the same whatever later code does: magic, one literal record holding
# the whole message, an end record with the length and XXH3-128 of the message.
_MAGIC = b"MRSK1\n"
_RECORD = struct.Struct(">BQ")
_LITERAL, _END = ord("L"), ord("E")


def whole_skeleton(raw: bytes) -> bytes:
    return b"".join((_MAGIC, _RECORD.pack(_LITERAL, len(raw)), raw, _RECORD.pack(_END, len(raw)),
                     xxhash.xxh3_128_digest(raw)))


def upgrade() -> None:
    op.create_table(
        "inbox_part",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["sha256"], ["inbox_body.sha256"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("sha256", "key"),
    )
    op.create_index("ix_inbox_part_key", "inbox_part", ["key"])
    op.create_index("ix_idmap_sha256", "idmap", ["sha256"])
    with op.batch_alter_table("mailbox") as batch:
        for name in _COUNTERS:
            batch.add_column(sa.Column(name, sa.BigInteger(), server_default="0", nullable=False))
    bind = op.get_bind()
    body = sa.table("inbox_body", sa.column("sha256", sa.String), sa.column("data", sa.LargeBinary))
    shas = [row[0] for row in bind.execute(sa.select(body.c.sha256))]
    for sha in shas:  # one at a time: bodies can be large
        data = bind.execute(sa.select(body.c.data).where(body.c.sha256 == sha)).scalar_one()
        bind.execute(sa.update(body).where(body.c.sha256 == sha).values(data=whole_skeleton(bytes(data))))


def downgrade() -> None:
    raise NotImplementedError("skeletons cannot be turned back into whole bodies without the blob store")
