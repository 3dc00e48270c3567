"""catalog: message ids are never handed out twice

SQLite gives a new row the highest rowid + 1, so deleting the newest message of a catalog made
its id come back for the next one. Message ids name messages in the change stream and in the id
aliases of cutover and failback, so an id that comes back can name a different message there.
With AUTOINCREMENT SQLite never reuses an id (PostgreSQL's sequences never did).

Revision ID: 0007
Revises: 0006
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("catalog", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("catalog", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
        pass
