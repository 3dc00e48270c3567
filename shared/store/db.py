"""Engine and transactions of the state store (SQLite file by default, PostgreSQL by URL).

SQLite is opened in WAL mode with ``synchronous=FULL`` (a committed transaction survives power
loss), a busy timeout, and ``BEGIN IMMEDIATE`` for every writing transaction so that concurrent
writers queue instead of failing on lock upgrade; read-only transactions (``Store.read``) begin
deferred and so never wait for a writer (WAL readers see the last committed state). PostgreSQL
needs nothing special.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mailrepl.shared.errors import StoreError

__all__ = ["Store", "open_store"]

_MIGRATIONS = Path(__file__).with_name("migrations")


class Store:
    """The state database: a session factory plus schema migration."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._readers = sessionmaker(engine.execution_options(mailrepl_read_only=True), expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def tx(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on error."""
        with self._transaction(self._sessions) as session:
            yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A transaction that only reads: a consistent snapshot that does not queue behind writers.

        Nothing may be written in it (on SQLite a write would have to upgrade the lock and could
        fail with "database is locked").
        """
        with self._transaction(self._readers) as session:
            yield session

    @contextlib.contextmanager
    def _transaction(self, factory: sessionmaker) -> Iterator[Session]:
        session = factory()
        try:
            with session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StoreError(f"state store: {exc.__class__.__name__}: {exc}".splitlines()[0]) from exc
        finally:
            session.close()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # Let SQLAlchemy drive transactions itself (see the "begin" hook below).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # Message bodies are stored as blobs: 16 KiB pages halve the page overhead of writing them
    # (takes effect when the file is created) and a larger checkpoint interval copies the log
    # into the database less often.
    cur.execute("PRAGMA page_size=16384")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA wal_autocheckpoint=4000")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_store(url: str, *, echo: bool = False) -> Store:
    """Open (not migrate) the store at ``url``; SQLite parent directories are created."""
    try:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 60})
            event.listen(engine, "connect", _sqlite_pragmas)

            @event.listens_for(engine, "begin")
            def _begin(conn) -> None:  # noqa: ANN001
                read_only = conn.get_execution_options().get("mailrepl_read_only", False)
                conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        else:
            engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise StoreError(f"state store {url!r}: {exc}", retryable=False) from exc
    return Store(engine)
