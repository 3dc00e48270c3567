"""replica_folder: the folders each replica's copy must have

``replica_folder``: per replica, every folder the applied changes say its copy has (created,
renamed, reset, written into; forgotten when deleted), with the special use it was created with,
so that a folder lost on the copy is found even when it is empty (the id map names only folders
that hold messages). Filled for existing replicas from the folders their id map names.

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replica_folder",
        sa.Column("replica_id", sa.Integer(), sa.ForeignKey("replica.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(1000), primary_key=True),
        sa.Column("special_use", sa.String(200)),
    )
    op.execute("INSERT INTO replica_folder (replica_id, name) SELECT DISTINCT replica_id, folder FROM idmap")


def downgrade() -> None:
    op.drop_table("replica_folder")
