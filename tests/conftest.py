"""Fixtures shared by all test layers: real Dovecot and Cyrus instances and gateway state stores.

``tests`` is a package (``tests/__init__.py``) and this is its top-level conftest, so pytest puts
the repository root on ``sys.path`` and ``tests.support...`` imports work however pytest is
started. Servers that are missing make a test skip on a workstation and fail in CI (see
``tests.support.environment``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.cyrus import CyrusServer, CyrusUnavailable, cyrus_missing_reason
from tests.support.dovecot import DovecotServer, DovecotUnavailable, dovecot_missing_reason
from tests.support.environment import unavailable


@pytest.fixture
def dovecot_factory() -> Iterator[Callable[..., DovecotServer]]:
    """``dovecot_factory(name, users, **options)`` → a started ``DovecotServer``.

    Options are ``DovecotServer``'s keyword arguments, e.g. ``max_mail_size="1M"``,
    ``mail_format="maildir"``, ``mail_fsync="optimized"``. Every instance is stopped and its
    directory removed at teardown.
    """
    reason = dovecot_missing_reason()
    if reason:
        unavailable(reason)
    servers: list[DovecotServer] = []

    def make(name: str, users, **options) -> DovecotServer:
        try:
            server = DovecotServer(name, users, **options)
        except DovecotUnavailable as exc:
            unavailable(str(exc))
        servers.append(server)
        server.start()
        return server

    yield make
    errors = []
    for server in reversed(servers):
        try:
            server.cleanup()
        except Exception as exc:  # keep cleaning up the others
            errors.append(f"{server!r}: {exc}")
    if errors:
        raise RuntimeError("could not stop Dovecot instances: " + "; ".join(errors))


@pytest.fixture(scope="session")
def cyrus_instances() -> Iterator[Callable[[str], CyrusServer]]:
    """``cyrus_instances(profile)`` → the started Cyrus instance of that profile
    (``"debian-default"`` or ``"recommended"``), one per profile for the whole test session.

    Instances are shared: a test makes its own users with ``server.unique_user()`` and never
    restarts or stops the instance.
    """
    servers: dict[str, CyrusServer] = {}

    def get(profile: str) -> CyrusServer:
        reason = cyrus_missing_reason()
        if reason:
            unavailable(reason)
        if profile not in servers:
            try:
                server = CyrusServer(profile.replace("-", ""), profile=profile)
            except CyrusUnavailable as exc:
                unavailable(str(exc))
            server.start()
            servers[profile] = server
        return servers[profile]

    yield get
    for server in servers.values():
        server.cleanup()


@pytest.fixture
def postgres_databases():
    """A ``PostgresDatabases``: ``.create()`` → SQLAlchemy URL of a fresh database, all dropped afterwards."""
    try:
        from tests.support.postgres import PostgresDatabases, PostgresUnavailable
    except ImportError as exc:
        unavailable(f"PostgreSQL driver missing ({exc}); install the 'postgres' extra")
    try:
        databases = PostgresDatabases()
    except PostgresUnavailable as exc:
        unavailable(str(exc))
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture
def postgres_url(postgres_databases) -> str:
    """SQLAlchemy URL (``postgresql+psycopg://...``) of a fresh, empty database."""
    return postgres_databases.create()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def gateway_states(request, tmp_path) -> tuple[str, str]:
    """``(source_state_url, recovery_state_url)``: two fresh, separate state stores of one kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.sqlite'}", f"sqlite:///{tmp_path / 'recovery.sqlite'}"
    databases = request.getfixturevalue("postgres_databases")
    return databases.create(), databases.create()


# The fault suite's result table (tests/faults): here, in the top-level conftest, because with
# parallel workers only this one is loaded by the process that prints the summary.

def pytest_runtest_logreport(report) -> None:
    """Each fault scenario's row, from its report (reports reach the printing process, the
    workers' memory does not)."""
    if report.when == "call":
        rows = [value for key, value in report.user_properties if key == "fault_row"]
        if rows:
            from tests.faults.report import ROWS, Row

            ROWS.extend(Row(**value) for value in rows)


def pytest_terminal_summary(terminalreporter) -> None:
    from tests.faults.report import ROWS, format_table, write_table

    if not ROWS:
        return
    from tests.faults.scenarios import profile_from_env, seed_from_env

    profile, seed = profile_from_env(), seed_from_env()
    title = f"Fault suite ({profile.name} profile, seed {seed}, MAILREPL_FAULTS_SEED={seed} to reproduce)"
    terminalreporter.write_sep("=", "fault suite")
    terminalreporter.write_line(format_table(ROWS, title))
    written = write_table(ROWS, title)
    if written:
        terminalreporter.write_line(f"table written to {written}")
