"""standby view: the DR capture state kept current while a mailbox replicates

``replica`` gains ``view_seq``: the applied sequence number at which the recovery gateway last
brought its capture state of the standby copy (folders, cursors, catalog, id aliases) up to date
with the standby. When it equals ``applied_seq`` a cutover needs no read of the standby.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replica") as batch:
        batch.add_column(sa.Column("view_seq", sa.BigInteger()))


def downgrade() -> None:
    with op.batch_alter_table("replica") as batch:
        batch.drop_column("view_seq")
