"""folder cursors as text: cursors may carry a server-issued sync state

EWS positions are SyncFolderItems sync states (opaque base64, often hundreds of characters),
carried in the cursor's token (``mailrepl.shared.model.Cursor``). ``folder_state.cursor`` and
``pending_cursor`` become unbounded text; IMAP cursors are unchanged.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = ("cursor", "pending_cursor")


def upgrade() -> None:
    with op.batch_alter_table("folder_state") as batch:
        for column in _COLUMNS:
            batch.alter_column(column, type_=sa.Text(), existing_type=sa.String(length=100), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("folder_state") as batch:
        for column in _COLUMNS:
            batch.alter_column(column, type_=sa.String(length=100), existing_type=sa.Text(), existing_nullable=True)
