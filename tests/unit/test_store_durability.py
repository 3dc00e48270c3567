"""``Store.tx(durable=False)``: a commit flushed with the next durable one; every other write
transaction stays flushed on its own (SQLite ``synchronous=FULL``, PostgreSQL
``synchronous_commit=on``)."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import Mailbox

SQLITE_NORMAL, SQLITE_FULL = 1, 2


def test_sqlite_flush_level_is_chosen_per_transaction(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/state.sqlite")
    store.migrate()
    try:
        seen = []
        for durable in (True, False, False, True, False):
            with store.tx(durable=durable) as s:
                seen.append(s.execute(text("PRAGMA synchronous")).scalar())
                s.add(Mailbox(server="primary", address=f"user{len(seen)}"))
        assert seen == [SQLITE_FULL, SQLITE_NORMAL, SQLITE_NORMAL, SQLITE_FULL, SQLITE_NORMAL]
        with store.tx() as s:  # the default is durable, also right after a relaxed one on the same connection
            assert s.execute(text("PRAGMA synchronous")).scalar() == SQLITE_FULL
        with store.read() as s:
            assert s.execute(text("SELECT count(*) FROM mailbox")).scalar() == 5  # relaxed commits are commits
    finally:
        store.dispose()


@pytest.mark.postgres
def test_postgres_relaxed_commit_is_local_to_its_transaction(postgres_url):
    store = open_store(postgres_url)
    store.migrate()
    try:
        with store.tx(durable=False) as s:
            assert s.execute(text("SHOW synchronous_commit")).scalar() == "off"
            s.add(Mailbox(server="primary", address="alice"))
        with store.tx() as s:
            assert s.execute(text("SHOW synchronous_commit")).scalar() == "on"
        with store.read() as s:
            assert s.execute(text("SELECT count(*) FROM mailbox")).scalar() == 1
    finally:
        store.dispose()
