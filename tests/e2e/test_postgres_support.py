"""The PostgreSQL fixtures hand out fresh, separate, usable databases and drop them afterwards."""
from __future__ import annotations

import pytest
import sqlalchemy as sa


def newest_revision() -> str:
    from alembic.script import ScriptDirectory

    from mailrepl.shared.store import db

    return ScriptDirectory(str(db._MIGRATIONS)).get_current_head()

@pytest.mark.postgres
def test_fresh_databases_are_empty_separate_and_dropped(postgres_databases):
    first, second = postgres_databases.create(), postgres_databases.create()
    assert first.startswith("postgresql+psycopg://") and first != second
    engines = [sa.create_engine(url) for url in (first, second)]
    try:
        with engines[0].begin() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar() == 0
            conn.execute(sa.text("CREATE TABLE t (x int)"))
        with engines[1].connect() as conn:
            assert conn.execute(sa.text("SELECT to_regclass('public.t')")).scalar() is None
        # a connection left open must not keep the database from being dropped
        lingering = engines[0].connect()
        postgres_databases.drop_all()
        lingering.invalidate()
    finally:
        for engine in engines:
            engine.dispose()
    names = [sa.engine.make_url(u).database for u in (first, second)]
    admin = sa.create_engine(sa.engine.make_url(first).set(database="postgres"))
    try:
        with admin.connect() as conn:
            left = conn.execute(sa.text("SELECT datname FROM pg_database WHERE datname = ANY(:n)"), {"n": names})
            assert left.fetchall() == []
    finally:
        admin.dispose()


def test_gateway_states_are_two_distinct_fresh_stores(gateway_states, tmp_path):
    source, recovery = gateway_states
    assert source != recovery
    for url in gateway_states:
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE TABLE probe (x int)"))
        finally:
            engine.dispose()


@pytest.mark.postgres
def test_migrations_build_the_schema_and_keep_bodies_uncompressed(postgres_databases):
    from mailrepl.shared.store import open_store

    url = postgres_databases.create()
    store = open_store(url)
    try:
        store.migrate()
        store.migrate()  # a second run is a no-op
        with store.engine.connect() as conn:
            head = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            storage = dict(conn.execute(sa.text(
                "SELECT c.relname, a.attstorage FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "WHERE c.relname IN ('outbox_body', 'inbox_body') AND a.attname = 'data'"
            )).all())
    finally:
        store.dispose()
    assert head == newest_revision(), "migrate() must bring the schema to the newest revision"
    assert storage == {"outbox_body": "e", "inbox_body": "e"}, "message bodies must not be TOAST-compressed"
