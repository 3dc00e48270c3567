"""The state store: SQLAlchemy models, engine/transactions and Alembic migrations."""
from mailrepl.shared.store.db import Store, open_store

__all__ = ["Store", "open_store"]
