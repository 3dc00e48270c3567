"""Fixtures of the fault suite: the site the scenarios break (two Dovecots, both gateways as
processes, every user protected and seeded), the profile and seed, and the result table at the
end of the run.

One site serves the scenarios in turn, as one long-running installation would live through
them (each scenario's traffic adds to the mail already there); a scenario that finds a
difference marks it dirty and the next one starts on a new site, so one failure is reported once.

``MAILREPL_FAULTS=full`` runs the full profile, ``MAILREPL_FAULTS_SEED=N`` another seed,
``MAILREPL_FAULTS_TABLE=FILE`` also writes the table to FILE (see README, "Fault suite").
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from tests.faults.loadsim import LoadSim, pick_corpus
from tests.faults.scenarios import Profile, Site, profile_from_env, seed_from_env, wait_drained
from tests.support.dovecot import DovecotServer, DovecotUnavailable, dovecot_missing_reason
from tests.support.environment import unavailable
from tests.support.gateways import GatewayPair
from tests.support.mailcompare import corpus_files
from tests.support.tmpfs import small_disk

CORPUS_SAMPLE = 80
# the recovery gateway checks idle standby copies for damage every 5 s (default 300 s)
STANDBY_CHECK_INTERVAL = 5
RECOVERY_EXTRA = f"standby_check_interval = {STANDBY_CHECK_INTERVAL}"
STATE_DISK = "512m"  # each gateway's state (and the recovery gateway's blob store) on a tmpfs this size


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


class SitePool:
    """Hands out the current site, building a new one when there is none or it is dirty."""

    def __init__(self, tmp_factory, profile: Profile, seed: int, corpus: list[bytes]) -> None:
        self.tmp_factory, self.profile, self.seed, self.corpus = tmp_factory, profile, seed, corpus
        self.site: Site | None = None
        self.built = 0

    def get(self) -> Site:
        if self.site is not None and not self.site.dirty:
            return self.site
        self.close()
        self.built += 1
        self.site = build_site(self.tmp_factory.mktemp(f"site{self.built}"), self.profile,
                               self.seed + self.built - 1, self.corpus)
        return self.site

    def close(self) -> None:
        site, self.site = self.site, None
        if site is None:
            return
        try:
            site.pair.stop()
        finally:
            try:
                for server in (site.primary, site.standby):
                    server.cleanup()
            finally:
                site.cleanup.close()  # the tmpfs mounts, once nothing writes to them


def build_site(tmp, profile: Profile, seed: int, corpus: list[bytes]) -> Site:
    """Primary and standby Dovecot, both gateways (SQLite state, each on its own tmpfs, the
    recovery gateway's blob store too), ``profile.users`` users with ``profile.populate``
    messages each, all protected and seeded."""
    reason = dovecot_missing_reason()
    if reason:
        unavailable(reason)
    users = [f"u{i:02d}" for i in range(1, profile.users + 1)]
    servers: list[DovecotServer] = []
    pair = None
    mounts = contextlib.ExitStack()
    try:
        disks = {name: mounts.enter_context(small_disk(tmp / f"{name}-disk", STATE_DISK))
                 for name in ("source", "recovery")}
        (disks["recovery"].path / "blobs").mkdir(mode=0o700)
        (tmp / "blobs").symlink_to(disks["recovery"].path / "blobs")  # the pair's blob_dir
        for name in ("primary", "standby"):
            try:
                servers.append(DovecotServer(name, users))
            except DovecotUnavailable as exc:
                unavailable(str(exc))
            servers[-1].start()
        primary, standby = servers
        LoadSim(primary, users, seed=seed, corpus=corpus).populate(profile.populate)
        pair = GatewayPair(tmp, primary, standby, users=users,
                           source_state=f"sqlite:///{disks['source'].path}/source.sqlite",
                           recovery_state=f"sqlite:///{disks['recovery'].path}/recovery.sqlite",
                           recovery_gateway_extra=RECOVERY_EXTRA)
        _start_both(pair)
        pair.protect(*users)
        if wait_drained(pair, users, profile.drain_timeout, 1.0) is None:
            raise AssertionError(f"seeding did not finish within {profile.drain_timeout} s:\n"
                                 f"{pair.source.log.read_text()[-3000:]}")
        return Site(primary=primary, standby=standby, pair=pair, users=users, disks=disks, cleanup=mounts)
    except BaseException:
        if pair is not None:
            pair.stop()
        for server in servers:
            server.cleanup()
        mounts.close()
        raise


@pytest.fixture(scope="session")
def fault_sites(tmp_path_factory, fault_profile, fault_seed, fault_corpus) -> Iterator[SitePool]:
    pool = SitePool(tmp_path_factory, fault_profile, fault_seed, fault_corpus)
    yield pool
    pool.close()


@pytest.fixture
def fault_site(request, fault_sites, tmp_path, fault_profile, fault_seed, fault_corpus) -> Iterator[Site]:
    scenario = request.node.callspec.params.get("scenario") if hasattr(request.node, "callspec") else None
    if scenario is None or not scenario.needs_rig:
        yield fault_sites.get()
        return
    site = build_rig_site(tmp_path, fault_profile, fault_seed, fault_corpus)
    try:
        yield site
    finally:
        site.cleanup.close()


def build_rig_site(tmp, profile: Profile, seed: int, corpus: list[bytes]) -> Site:
    """The two-site rig (DR site in its own network namespace, the link between the gateways
    under control), ``profile.users`` users populated, protected and seeded. ``Site.standby`` is
    the standby as read on the DR site's loopback (a partition does not cut it)."""
    from tests.support.netns import netns_missing_reason
    from tests.support.two_site import TwoSiteRig

    for reason in (dovecot_missing_reason(), netns_missing_reason()):
        if reason:
            unavailable(reason)
    users = [f"u{i:02d}" for i in range(1, profile.users + 1)]
    rig = TwoSiteRig(tmp / "rig", users)
    rig.start()
    try:
        LoadSim(rig.primary, users, seed=seed, corpus=corpus).populate(profile.populate)
        rig.protect_all()
        if wait_drained(rig.pair, users, profile.drain_timeout, 1.0) is None:
            raise AssertionError(f"seeding did not finish within {profile.drain_timeout} s:\n"
                                 f"{rig.pair.source.log.read_text()[-3000:]}")
        cleanup = contextlib.ExitStack()
        cleanup.callback(rig.close)
        return Site(primary=rig.primary, standby=rig.standby_local, pair=rig.pair, users=users, rig=rig,
                    cleanup=cleanup)
    except BaseException:
        rig.close()
        raise


def _start_both(pair) -> None:
    """Start both gateways at once (the source copes with its peer not being up yet)."""
    errors: list[BaseException] = []

    def start(gateway) -> None:
        try:
            gateway.start(wait=60)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(g,)) for g in (pair.recovery, pair.source)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        pair.stop()
        raise errors[0]
