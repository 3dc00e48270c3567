"""store message bodies uncompressed on PostgreSQL

Message bodies are mostly already-encoded mail (base64 attachments, images): PostgreSQL's TOAST
compression (pglz) spends CPU on every write for little gain, and the wire compresses them
anyway. EXTERNAL keeps them out of line without compressing. SQLite has no such setting.

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = (("outbox_body", "data"), ("inbox_body", "data"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in _COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTENDED")
