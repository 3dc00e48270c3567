"""Fixtures of the fault suite: a fresh site per scenario (two Dovecots, both gateways as processes,
every user protected and seeded), the profile and seed, and the result table at the end of the run.

``MAILREPL_FAULTS=full`` runs the full profile, ``MAILREPL_FAULTS_SEED=N`` another seed,
``MAILREPL_FAULTS_TABLE=FILE`` also writes the table to FILE (see README, "Fault suite").
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.loadsim import LoadSim, pick_corpus
from tests.faults.report import ROWS, format_table, write_table
from tests.faults.scenarios import Profile, Site, profile_from_env, seed_from_env, wait_drained
from tests.support.environment import unavailable
from tests.support.gateways import GatewayPair
from tests.support.mailcompare import corpus_files

CORPUS_SAMPLE = 80


@pytest.fixture(scope="session")
def fault_profile() -> Profile:
    return profile_from_env()


@pytest.fixture(scope="session")
def fault_seed() -> int:
    return seed_from_env()


@pytest.fixture(scope="session")
def fault_corpus(fault_seed) -> list[bytes]:
    try:
        files = corpus_files()
    except FileNotFoundError as exc:
        unavailable(str(exc))
    return pick_corpus(files, CORPUS_SAMPLE, fault_seed)


@pytest.fixture
def fault_site(dovecot_factory, tmp_path, fault_profile, fault_seed, fault_corpus) -> Iterator[Site]:
    """Primary and standby Dovecot, both gateways (SQLite state), ``profile.users`` users with
    ``profile.populate`` messages each, all protected and seeded."""
    users = [f"u{i:02d}" for i in range(1, fault_profile.users + 1)]
    primary = dovecot_factory("primary", users)
    standby = dovecot_factory("standby", users)
    LoadSim(primary, users, seed=fault_seed, corpus=fault_corpus).populate(fault_profile.populate)
    pair = GatewayPair(tmp_path, primary, standby, users=users,
                       source_state=f"sqlite:///{tmp_path}/source.sqlite",
                       recovery_state=f"sqlite:///{tmp_path}/recovery.sqlite")
    pair.start()
    try:
        pair.protect(*users)
        if wait_drained(pair, users, fault_profile.drain_timeout, fault_profile.settle) is None:
            raise AssertionError(f"seeding did not finish within {fault_profile.drain_timeout} s:\n"
                                 f"{pair.source.log.read_text()[-3000:]}")
        yield Site(primary=primary, standby=standby, pair=pair, users=users)
    finally:
        pair.stop()


def pytest_terminal_summary(terminalreporter) -> None:
    if not ROWS:
        return
    profile, seed = profile_from_env(), seed_from_env()
    title = f"Fault suite ({profile.name} profile, seed {seed}, MAILREPL_FAULTS_SEED={seed} to reproduce)"
    terminalreporter.write_sep("=", "fault suite")
    terminalreporter.write_line(format_table(ROWS, title))
    written = write_table(ROWS, title)
    if written:
        terminalreporter.write_line(f"table written to {written}")
