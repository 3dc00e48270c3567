"""idmap: (replica, folder, uid) index

The standby view identifies the messages a replay pass just wrote by their UIDs: the index on
(replica, folder) becomes one on (replica, folder, uid), so that costs a lookup per message
instead of a scan of the folder's map.

Revision ID: 0012
Revises: 0011
"""
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_idmap_replica_folder_uid", "idmap", ["replica_id", "folder", "uid"])
    op.drop_index("ix_idmap_replica_folder", table_name="idmap")


def downgrade() -> None:
    op.create_index("ix_idmap_replica_folder", "idmap", ["replica_id", "folder"])
    op.drop_index("ix_idmap_replica_folder_uid", table_name="idmap")
