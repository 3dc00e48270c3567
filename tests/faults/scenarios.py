"""The fault suite's scenarios and the loop that runs one: traffic, faults, heal, drain, compare.

A scenario is a class with a ``name`` and three steps (see :class:`Scenario`): ``prepare`` before
traffic starts (e.g. shaping a link), ``inject`` one fault while traffic runs (called
``profile.faults`` times, at seeded random moments), ``heal`` once traffic has stopped (whatever
is still broken is repaired). :func:`run_scenario` does the rest the same way for every
scenario: stop traffic, heal, wait for replication to drain (the source gateway's status API:
every protected mailbox replicating, both queues empty, nothing lagging, no error; stable for a
while; bounded), measure how long that took, and compare every protected mailbox on both
servers. A scenario that needs another component (the two-site network rig, a small tmpfs under
a gateway's state) is one more subclass added to :data:`SCENARIOS`.
"""
from __future__ import annotations

import contextlib
import errno
import imaplib
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx

from tests.support.gateways import ADMIN_TOKEN

from tests.faults.checks import (Differences, compare_mailboxes, counts_from_verify_report, primary_shas,
                                 run_verify)
from tests.faults.loadsim import FLAGS, LoadSim, TrafficCounts
from tests.faults.report import Row

__all__ = ["CI", "FULL", "DiskFull", "FolderReset", "KillRestart", "Profile", "SCENARIOS", "Scenario", "Site", "StandbyWipe",
           "WanTrouble",
           "profile_from_env", "run_scenario", "seed_from_env", "wait_drained"]

DEFAULT_SEED = 20261206
STANDBY_DAMAGE_LOG = b"changed behind the gateways' back"  # the recovery gateway's warning
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_INTERNALDATE = re.compile(rb'INTERNALDATE "([^"]+)"')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Profile:
    """How much of everything: the CI subset and the full run differ only here."""

    name: str
    users: int
    populate: int  # messages per user before protection
    faults: int  # per scenario
    gap: tuple[float, float]  # seconds of traffic before each fault (uniform)
    pause: tuple[float, float]  # seconds a killed process stays down (uniform)
    tail: float  # seconds of traffic after the last fault
    drain_timeout: float
    wan_impaired: float  # WAN scenario: seconds of traffic over the delayed, lossy link before the partition
    partition: float  # WAN scenario: seconds the link stays cut
    settle: float = 3.0  # drained must hold this long (capture polls every 0.5 s)
    deliverers: int = 2
    workers: int = 2
    pause_between_ops: float = 0.05


CI = Profile("ci", users=20, populate=5, faults=3, gap=(0.3, 1.5), pause=(0.2, 1.5), tail=0.5, drain_timeout=180,
             wan_impaired=5.0, partition=8.0)
FULL = Profile("full", users=40, populate=20, faults=20, gap=(1.0, 5.0), pause=(0.2, 5.0), tail=3.0,
               drain_timeout=600, wan_impaired=60.0, partition=60.0)


def profile_from_env() -> Profile:
    """``MAILREPL_FAULTS=full`` selects the full run; anything else (or nothing) the CI subset."""
    value = os.environ.get("MAILREPL_FAULTS", "ci").strip().lower()
    if value not in ("", "ci", "full"):
        raise ValueError(f"MAILREPL_FAULTS must be 'ci' or 'full', not {value!r}")
    return FULL if value == "full" else CI


def seed_from_env() -> int:
    """``MAILREPL_FAULTS_SEED`` (an integer), else the fixed default, so CI runs are reproducible."""
    raw = os.environ.get("MAILREPL_FAULTS_SEED", "").strip()
    if not raw:
        return DEFAULT_SEED
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"MAILREPL_FAULTS_SEED must be an integer, not {raw!r}") from None


@dataclass
class Site:
    """Everything a scenario may break: both Dovecots, both gateways, the protected users."""

    primary: object  # tests.support.dovecot.DovecotServer
    standby: object
    pair: object  # tests.support.gateways.GatewayPair
    users: list[str]
    disks: dict = field(default_factory=dict)  # "source"/"recovery" -> tests.support.tmpfs.SmallDisk under its state
    rig: object = None  # tests.support.two_site.TwoSiteRig when the DR site is in its own network namespace
    notes: list[str] = field(default_factory=list)  # what went wrong outside the faults injected
    dirty: bool = False  # a scenario failed on it: the next one needs a new site
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # closed with the site

    def process(self, name: str):
        return {"source": self.pair.source, "recovery": self.pair.recovery,
                "primary": self.primary, "standby": self.standby}[name]

    def check_alive(self, killed: str | None = None) -> None:
        """Note every gateway that exited without being killed, and start it again."""
        for name in ("source", "recovery"):
            gw = self.process(name)
            if name != killed and gw.proc is not None and gw.proc.poll() is not None:
                self.notes.append(f"the {name} gateway exited by itself with status {gw.proc.returncode}")
                gw.start(wait=60)


class Scenario:
    """One kind of fault. Subclasses set ``name`` and override :meth:`inject` (and maybe the others)."""

    name = "scenario"
    settle = 0.0  # drained must hold at least this long (when longer than the profile's settle)
    damages_standby = False  # only then may the recovery gateway find its standby copy changed
    needs_rig = False  # runs on its own two-site rig (tests.support.two_site), not on the shared site

    def prepare(self, site: Site, rng: random.Random) -> None:
        """Before traffic starts."""

    def inject(self, site: Site, rng: random.Random, profile: Profile) -> None:
        """One fault, while traffic runs; returns once the fault is over (or left in place for heal)."""
        raise NotImplementedError

    def planned_faults(self, profile: Profile) -> int:
        return profile.faults

    def run_faults(self, site: Site, rng: random.Random, profile: Profile) -> int:
        """While traffic runs: ``profile.faults`` faults, each after a random stretch of traffic;
        returns how many were injected."""
        done = 0
        for _ in range(profile.faults):
            time.sleep(rng.uniform(*profile.gap))
            self.inject(site, rng, profile)
            done += 1
        time.sleep(profile.tail)
        return done

    def heal(self, site: Site) -> None:
        """After traffic stopped: undo whatever is still broken."""
        for name in ("primary", "standby"):
            server = site.process(name)
            if not server.running:
                server.start()
        for name in ("recovery", "source"):
            gw = site.process(name)
            if gw.proc is None or gw.proc.poll() is not None:
                gw.start(wait=60)


class KillRestart(Scenario):
    """kill -9 of one process (a gateway, or a Dovecot's whole process group), restarted after a pause
    from the same configuration."""

    def __init__(self, target: str) -> None:
        if target not in ("source", "recovery", "primary", "standby"):
            raise ValueError(f"unknown process {target!r}")
        self.target = target
        self.name = f"kill -9 {target} " + ("gateway" if target in ("source", "recovery") else "Dovecot")

    def inject(self, site: Site, rng: random.Random, profile: Profile) -> None:
        site.check_alive(killed=None)
        victim = site.process(self.target)
        if self.target in ("source", "recovery"):
            victim.kill9()
            time.sleep(rng.uniform(*profile.pause))
            victim.start(wait=60)
        else:
            victim.kill()
            time.sleep(rng.uniform(*profile.pause))
            victim.start()


class FolderReset(Scenario):
    """A folder reset on the primary as a user would do it: the folder's messages saved, the folder
    deleted and created again, the messages appended back, some with a new internal date and
    other flags."""

    name = "folder reset on the primary"
    folders = ("Archive", "Work", "Lists")

    def inject(self, site: Site, rng: random.Random, profile: Profile) -> None:
        user, folder = rng.choice(site.users), rng.choice(self.folders)
        conn = site.primary.imap(user)
        try:
            saved = _fetch_all(conn, folder)
            conn.close()
            _ok(conn.delete(_q(folder)), f"DELETE {folder}")
            typ, data = conn.create(_q(folder))
            if typ != "OK" and b"exists" not in b" ".join(d for d in data if d).lower():
                raise AssertionError(f"CREATE {folder} after the reset: {data!r}")  # a delivery made it first
            for raw, flags, date in saved:
                if rng.random() < 0.5:
                    date = _new_date(rng)
                if rng.random() < 0.5:
                    flags = " ".join(rng.sample(FLAGS, rng.randint(0, 3)))
                _ok(conn.append(_q(folder), f"({flags})", f'"{date}"', raw), f"APPEND {folder}")
        finally:
            try:
                conn.logout()
            except (OSError, imaplib.IMAP4.error):
                pass


class StandbyWipe(Scenario):
    """A mailbox wiped on the standby behind the gateways' back (all its mail and indexes removed).

    The recovery gateway finds such damage after a replay pass of the mailbox, or, when nothing
    is replicated to it, by its periodic check (``standby_check_interval``, 5 s on the test site);
    the source learns it from its next poll of the site states. Until then the status looks
    drained, so drained must hold longer than that round trip."""

    name = "mailbox wiped on the standby"
    settle = 9.0
    damages_standby = True

    def inject(self, site: Site, rng: random.Random, profile: Profile) -> None:
        site.standby.wipe_user(rng.choice(site.users))


class DiskFull(Scenario):
    """The disk under a gateway's state (for the recovery gateway: its state and blob store) full:
    a file takes all the space left on its (tmpfs) filesystem for a while, then is removed."""

    hold = (1.0, 6.0)  # seconds the disk stays full (uniform)

    def __init__(self, target: str) -> None:
        if target not in ("source", "recovery"):
            raise ValueError(f"unknown gateway {target!r}")
        self.target = target
        self.name = f"{target} gateway's disk full"

    def inject(self, site: Site, rng: random.Random, profile: Profile) -> None:
        filler = site.disks[self.target].path / "filler"
        try:
            fill(filler)
            time.sleep(rng.uniform(*self.hold))
        finally:
            filler.unlink(missing_ok=True)

    def heal(self, site: Site) -> None:
        for disk in site.disks.values():
            (disk.path / "filler").unlink(missing_ok=True)
        super().heal(site)


class WanTrouble(Scenario):
    """The WAN between the sites (the two-site rig): 50 ms ± 10 ms delay each way and 1 % loss
    both ways, sustained under traffic; then the link cut for ``profile.partition`` seconds while
    traffic goes on; then the link back. Delay and loss stay while replication drains: they are
    the link's normal state here. The standby is read on the DR site's own loopback."""

    name = "WAN: 50±10 ms, 1 % loss, partition"
    needs_rig = True

    def prepare(self, site: Site, rng: random.Random) -> None:
        site.rig.set_delay(50, 10)
        site.rig.set_loss(1.0)

    def planned_faults(self, profile: Profile) -> int:
        return 1  # one partition, with delay and loss all along

    def run_faults(self, site: Site, rng: random.Random, profile: Profile) -> int:
        time.sleep(profile.wan_impaired)
        site.rig.partition()
        try:
            time.sleep(profile.partition)
        finally:
            site.rig.heal()
        time.sleep(profile.tail)
        return 1

    def heal(self, site: Site) -> None:
        if site.rig.link.partitioned:
            site.rig.heal()


def fill(path) -> int:
    """Write ``path`` until its filesystem has no space left; returns the bytes written."""
    written, chunk = 0, b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    written += f.write(chunk[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


SCENARIOS: list[Scenario] = [
    KillRestart("source"),
    KillRestart("recovery"),
    KillRestart("standby"),
    KillRestart("primary"),
    FolderReset(),
    StandbyWipe(),
    DiskFull("recovery"),
    DiskFull("source"),
    WanTrouble(),
]


# --- the run -----------------------------------------------------------------------------------

def run_scenario(site: Site, scenario: Scenario, profile: Profile, seed: int, corpus: list[bytes],
                 log: Callable[[str], None] = print) -> tuple[Row, Differences, TrafficCounts]:
    """Traffic with faults at seeded moments, then heal, drain, compare; the table row."""
    rng = random.Random(f"{seed}:{scenario.name}")
    sim = LoadSim(site.primary, site.users, seed=rng.randrange(2**32), corpus=corpus,
                  deliverers=profile.deliverers, workers=profile.workers, pause=profile.pause_between_ops)
    scenario.prepare(site, rng)
    log_start = _size(site.pair.recovery.log)
    faults = 0
    sim.start()
    try:
        faults = scenario.run_faults(site, rng, profile)
    finally:
        counts = sim.stop()
        scenario.heal(site)
    site.check_alive()
    log(f"[{scenario.name}] {faults} faults; traffic: {counts.summary()}")
    drain = wait_drained(site.pair, site.users, profile.drain_timeout, max(profile.settle, scenario.settle))
    if drain is None:
        site.notes.append(f"replication did not drain within {profile.drain_timeout:.0f} s")
    if not scenario.damages_standby:
        # a resync nobody caused would be a false alarm: correct, but a whole mailbox read again
        with open(site.pair.recovery.log, "rb") as f:
            f.seek(log_start)
            alarms = f.read().count(STANDBY_DAMAGE_LOG)
        if alarms:
            site.notes.append(f"the recovery gateway found {alarms} standby copies changed behind its back, "
                              "but this scenario changes none")
    diff = check_equal(site, log)
    row = Row(scenario=scenario.name, faults=faults, delivered=counts.delivered, changes=counts.changes_made,
              lost=diff.lost, duplicated=diff.duplicated, other=diff.other_total, drain_seconds=drain)
    return row, diff, counts


def check_equal(site: Site, log: Callable[[str], None] = print) -> Differences:
    """The product's own verdict (``mailrepl verify --all --json`` on the source gateway), and the
    test oracle's (``tests.support.mailcompare``) as a second, independent opinion: the counts are
    the product's; where the two disagree, that is a problem too."""
    report = run_verify(site.pair.source.url, ADMIN_TOKEN)
    product = counts_from_verify_report(report, primary_shas(site.primary))
    oracle = compare_mailboxes(site.primary, site.standby, site.users)
    checked = {m["address"] for m in report["mailboxes"]}
    if not set(site.users) <= checked:
        site.notes.append(f"mailrepl verify --all left out {sorted(set(site.users) - checked)}")
    if product.equal != oracle.equal:
        site.notes.append(f"mailrepl verify says equal={product.equal} ({product.as_dict()}), the test oracle "
                          f"says equal={oracle.equal} ({oracle.as_dict()}): " + "; ".join(oracle.details[:10]))
    log(f"verify: {product.mailboxes} mailboxes, {product.as_dict()}; oracle: {oracle.as_dict()}")
    if not oracle.equal:
        product.details.extend(["(test oracle) " + d for d in oracle.details])
    return product


def drained(status: dict[str, dict], users: list[str]) -> bool:
    """Every user protected, replicating, nothing queued, nothing lagging, no error."""
    return all(
        u in status and status[u]["protected"] and status[u]["phase"] == "replicating"
        and status[u]["copy_queue"] == 0 and status[u]["replay_queue"] == 0
        and status[u]["last_applied_seq"] == status[u]["last_captured_seq"] and not status[u]["lag_seconds"]
        and status[u]["error"] is None and not status[u].get("queue_alarm")
        for u in users
    )


def wait_drained(pair, users: list[str], timeout: float, settle: float) -> float | None:
    """Seconds until replication was drained (and stayed so for ``settle`` s), or None on timeout."""
    start = time.monotonic()
    deadline = start + timeout
    since, last = None, None
    while time.monotonic() < deadline:
        try:
            status = pair.status()
        except httpx.HTTPError:
            status = {}
        snap = {u: status.get(u, {}).get("last_captured_seq") for u in users}
        if drained(status, users) and snap == last:
            since = since or time.monotonic()
            if time.monotonic() - since >= settle:
                return round(since - start, 1)
        elif not drained(status, users):
            since = None
        last = snap
        time.sleep(0.2)
    return None


def _size(path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --- IMAP helpers for the folder reset ---------------------------------------------------------

def _fetch_all(conn: imaplib.IMAP4, folder: str) -> list[tuple[bytes, str, str]]:
    """(bytes, flags, internal date) of every message in ``folder``."""
    _ok(conn.select(_q(folder)), f"SELECT {folder}")
    typ, data = conn.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
    _ok((typ, data), f"FETCH {folder}")
    out = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta, raw = item
        flags, date = _FLAGS.search(meta), _INTERNALDATE.search(meta)
        if not flags or not date:
            raise AssertionError(f"FETCH answer without FLAGS or INTERNALDATE first: {meta[:200]!r}")
        kept = " ".join(f for f in flags.group(1).decode().split() if f.lower() != "\\recent")
        out.append((raw, kept, date.group(1).decode()))
    return out


def _new_date(rng: random.Random) -> str:
    when = datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=rng.randrange(365 * 86400))
    return f"{when.day:02d}-{_MONTHS[when.month - 1]}-{when:%Y %H:%M:%S} +0000"


def _ok(result: tuple, what: str) -> None:
    typ, data = result
    if typ != "OK":
        raise AssertionError(f"{what}: {data!r}")


def _q(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
