"""Engine and transactions of the state store (SQLite file by default, PostgreSQL by URL).

SQLite is opened in WAL mode with ``synchronous=FULL`` (a committed transaction survives power
loss), a busy timeout, and ``BEGIN IMMEDIATE`` for every writing transaction so that concurrent
writers queue instead of failing on lock upgrade (within the process they queue in arrival order:
``sqlite_writer.py``); read-only transactions (``Store.read``) begin
deferred and so never wait for a writer (WAL readers see the last committed state). PostgreSQL
needs nothing special.

``Store.tx(durable=False)`` is for a write whose loss in a power failure the product recovers
from by redoing it (a replay step after its durable intent, the standby view, a recorded
acknowledgement): its commit is not flushed to disk itself (SQLite ``synchronous=NORMAL`` for
that transaction, PostgreSQL ``synchronous_commit=off``) but by the next durable commit, which
flushes the log up to itself. Both logs are written in commit order, so a power failure loses
at most the last such commits, never one before a durable one and never part of one. Anything
that is acknowledged to a peer or a user, or that precedes a write on a mail server, stays durable.
"""
from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mailrepl.shared.errors import DiskFull, StoreError
from mailrepl.shared.store.body_spool import BodySpool
from mailrepl.shared.store.diskspace import is_disk_full
from mailrepl.shared.store.schema_revision import newest_revision
from mailrepl.shared.store.sealing import PLAIN, Sealer
from mailrepl.shared.store.sqlite_writer import writer_queue

__all__ = ["Store", "migrate_apart", "open_store"]

BUSY_TIMEOUT = 60.0  # seconds a SQLite writer waits for the write lock before the store reports it busy
_MIGRATIONS = Path(__file__).with_name("migrations")


class Store:
    """The state database: a session factory plus schema migration.

    ``sealer`` seals and opens the message content kept in it (``outbox_body.data``,
    ``inbox_body.data``); the default stores plaintext (``mailrepl.shared.store.sealing``).
    ``spool``: the segment files that hold the outbox's bulk bodies (``body_spool``); without
    one, every queued body is kept in its row."""

    def __init__(self, engine: Engine, sealer: Sealer = PLAIN, spool: BodySpool | None = None) -> None:
        self.engine = engine
        self.sealer = sealer
        self.spool = spool
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._relaxed = sessionmaker(engine.execution_options(mailrepl_durable=False), expire_on_commit=False)
        self._readers = sessionmaker(engine.execution_options(mailrepl_read_only=True), expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def tx(self, *, durable: bool = True) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on error. With
        ``durable=False`` the commit is flushed to disk with the next durable one (see above)."""
        with self._transaction(self._sessions if durable else self._relaxed) as session:
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
            if is_disk_full(exc):  # the transaction rolled back: nothing of it is stored
                raise DiskFull(f"state store: disk full: {exc.__class__.__name__}: {exc}".splitlines()[0]) from exc
            raise StoreError(f"state store: {exc.__class__.__name__}: {exc}".splitlines()[0]) from exc
        finally:
            session.close()

    def once_durable(self, s: Session, then: Callable[[], None]) -> None:
        """Run ``then`` after the transaction of ``s`` has committed and is on disk, even if it
        was begun with ``durable=False``: PostgreSQL commits it synchronously; SQLite's log,
        which holds the commit, is flushed before ``then`` runs."""
        if self.dialect == "postgresql":
            s.execute(text("SET LOCAL synchronous_commit = on"))
            event.listen(s, "after_commit", lambda _s: then(), once=True)
            return
        path = self.engine.url.database if self.dialect == "sqlite" else None

        def flushed(_s) -> None:  # noqa: ANN001
            if path and path != ":memory:":
                _fsync_if_present(f"{path}-wal")
            then()

        event.listen(s, "after_commit", flushed, once=True)

    def revisions(self) -> list[str]:
        """The schema revisions the store is at (Alembic's version table; empty for a new store)."""
        with self.read() as s:
            if not inspect(s.connection()).has_table("alembic_version"):
                return []
            return list(s.scalars(text("SELECT version_num FROM alembic_version")))

    def migrate(self, *, apart: bool = False) -> None:
        """Bring the schema to the newest Alembic revision.

        A store already there is left as it is without importing Alembic. ``apart``: a store that
        is behind is migrated by a short-lived process of its own (``schema_revision``), so that
        Alembic never stays in the memory of a long-running gateway; if that fails (or the store
        is in memory), it is migrated here, which reports what is wrong.
        """
        newest = newest_revision()
        if newest is not None and self.revisions() == [newest]:
            return
        url = self.engine.url
        if apart and url.database not in (None, "", ":memory:"):
            done = subprocess.run(
                [sys.executable, "-c", "from mailrepl.shared.store.schema_revision import main; raise SystemExit(main())"],
                input=url.render_as_string(hide_password=False) + "\n", text=True, check=False,
                stdout=subprocess.DEVNULL,
            )
            if done.returncode == 0 and self.revisions() == [newest]:
                return
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
    cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_store(url: str, *, echo: bool = False, sealer: Sealer = PLAIN, spool_dir: str | None = None) -> Store:
    """Open (not migrate) the store at ``url``; SQLite parent directories are created.
    ``spool_dir``: where the outbox keeps bulk bodies (``body_spool``; None: in the rows)."""
    try:
        if url.startswith("sqlite"):
            path = (url.split("///", 1)[1] if "///" in url else "").partition("?")[0]
            if path and path != ":memory:":
                _private_sqlite_file(Path(path))
            writers = writer_queue(path, BUSY_TIMEOUT)
            engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT,
                                                                 "factory": writers.connection_class()})
            event.listen(engine, "connect", _sqlite_pragmas)

            @event.listens_for(engine, "begin")
            def _begin(conn) -> None:  # noqa: ANN001
                options = conn.get_execution_options()
                if options.get("mailrepl_read_only", False):
                    conn.exec_driver_sql("BEGIN")
                    return
                # the flush level of this commit (set outside a transaction, once per change)
                level = "FULL" if options.get("mailrepl_durable", True) else "NORMAL"
                if conn.info.get("mailrepl_synchronous") != level:
                    conn.exec_driver_sql(f"PRAGMA synchronous={level}")
                    conn.info["mailrepl_synchronous"] = level
                dbapi = conn.connection.dbapi_connection
                dbapi.take_turn()  # this process's writers queue in arrival order (sqlite_writer.py)
                try:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                except BaseException:
                    dbapi.pass_turn()
                    raise

        else:
            engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)

            @event.listens_for(engine, "begin")
            def _begin_pg(conn) -> None:  # noqa: ANN001
                if not conn.get_execution_options().get("mailrepl_durable", True):
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        try:
            shown = make_url(url).render_as_string(hide_password=True)
        except (SQLAlchemyError, ValueError):
            shown = "(unparsable URL)"
        raise StoreError(f"state store {shown}: {str(exc).replace(url, shown)}", retryable=False) from exc
    return Store(engine, sealer, BodySpool(spool_dir, sealer) if spool_dir else None)


def migrate_apart(url: str) -> None:
    """Bring the store at ``url`` to the newest schema before a gateway opens it, Alembic in a
    short-lived process of its own (``Store.migrate(apart=True)``): the gateway's own migration
    then finds nothing to do and never imports Alembic."""
    store = open_store(url)
    try:
        store.migrate(apart=True)
    finally:
        store.dispose()


def _fsync_if_present(path: str) -> None:
    """Flush a file to disk (a SQLite log; absent once checkpointed and removed: nothing to do)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_sqlite_file(path: Path) -> None:
    """Create the SQLite file (and its directory, 0700) readable by its owner only; tighten an
    existing file and its -wal/-shm (SQLite gives those the main file's mode). A directory
    anyone may write to (without the sticky bit) is refused: others could swap the file."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path.parent)
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            raise StoreError(f"state store {path}: its directory {path.parent} is writable by anyone; "
                             f"run: chmod o-w {path.parent}", retryable=False)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            with contextlib.suppress(FileNotFoundError):
                if os.stat(name).st_mode & 0o077:
                    os.chmod(name, 0o600)
    except OSError as exc:
        raise StoreError(f"state store {path}: {exc.strerror or exc}", retryable=False) from exc
