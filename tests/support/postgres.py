"""Throw-away PostgreSQL databases for state-store tests.

Each test gets fresh databases on the server at 127.0.0.1:5432 (trust authentication, as a
test machine or CI runner is set up), so tests never see each other's rows and migrations
always run from an empty schema. The administrative login is the first of these that works:
``MAILREPL_TEST_POSTGRES`` (a libpq URI of a database the role may CREATE DATABASE from), the
current OS user, then ``postgres``.
"""
from __future__ import annotations

import getpass
import os
import secrets

__all__ = ["PostgresUnavailable", "PostgresDatabases"]

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5432
ENV_ADMIN_URI = "MAILREPL_TEST_POSTGRES"
DB_PREFIX = "mailrepl_test_"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server answered, or no role that may create databases could log in."""


def _candidate_uris() -> list[str]:
    if os.environ.get(ENV_ADMIN_URI):
        return [os.environ[ENV_ADMIN_URI]]
    users = dict.fromkeys([getpass.getuser(), "postgres"])  # ordered, without duplicates
    return [f"postgresql://{u}@{DEFAULT_HOST}:{DEFAULT_PORT}/postgres" for u in users]


class PostgresDatabases:
    """Creates databases on demand and drops every one of them in ``drop_all``."""

    def __init__(self) -> None:
        import psycopg  # imported here so that SQLite-only runs do not need the driver

        self._psycopg = psycopg
        self._admin_uri = self._find_admin()
        self._created: list[str] = []

    def _find_admin(self) -> str:
        errors = []
        for uri in _candidate_uris():
            try:
                with self._psycopg.connect(uri, connect_timeout=5, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
                    if row and row[0]:
                        return uri
                    errors.append(f"{uri}: role may not create databases")
            except self._psycopg.Error as exc:
                first_line = (str(exc).strip().splitlines() or [repr(exc)])[0]
                errors.append(f"{uri}: {first_line}")
        raise PostgresUnavailable("no usable PostgreSQL login for tests: " + "; ".join(errors))

    def create(self) -> str:
        """A new empty database; returns its SQLAlchemy URL (``postgresql+psycopg://...``)."""
        from sqlalchemy.engine import URL

        name = DB_PREFIX + secrets.token_hex(6)
        with self._psycopg.connect(self._admin_uri, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        params = self._psycopg.conninfo.conninfo_to_dict(self._admin_uri)
        url = URL.create(
            "postgresql+psycopg",
            username=params.get("user"),
            password=params.get("password"),
            host=params.get("host", DEFAULT_HOST),
            port=int(params.get("port", DEFAULT_PORT)),
            database=name,
        )
        return url.render_as_string(hide_password=False)

    def drop_all(self) -> None:
        """Drop every database created here, disconnecting clients a test left behind."""
        with self._psycopg.connect(self._admin_uri, autocommit=True) as conn:
            while self._created:
                conn.execute(f'DROP DATABASE IF EXISTS "{self._created.pop()}" WITH (FORCE)')
