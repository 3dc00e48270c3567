"""Is every protected mailbox on the standby equal to the primary? Counts of what differs.

:func:`compare_mailboxes` is the test oracle. It reads both servers with
``tests.support.mailcompare`` (per folder, a multiset of (SHA-256 of the bytes, flags, internal
date)) and classifies every difference:

- ``lost``: a message of the primary the standby lacks (in that folder), or one copy fewer;
- ``duplicated``: a copy on the standby that is one too many, or that sits in a folder where the
  primary no longer has it while the primary holds the same bytes elsewhere (a stale copy);
- ``flags`` / ``internal_date``: the same bytes in the same folder with other flags / date;
- ``folders``: a folder only on one side;
- ``other``: a message on the standby the primary never had.

:func:`counts_from_verify_report` maps the product's own ``mailrepl verify --all --json`` report
(:func:`run_verify`) onto the same counts. The suite counts with the product's report and keeps
the oracle as a second, independent opinion (``scenarios.check_equal``): both must say equal.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.mailcompare import Snapshot, snapshot

__all__ = ["Differences", "compare_mailboxes", "compare_snapshots", "counts_from_verify_report", "primary_shas",
           "run_verify"]

REPO = Path(__file__).resolve().parents[2]
VERIFY_TIMEOUT = 600.0

MAX_DETAILS = 40


@dataclass
class Differences:
    lost: int = 0
    duplicated: int = 0
    flags: int = 0
    internal_date: int = 0
    folders: int = 0
    other: int = 0
    mailboxes: int = 0  # how many were compared
    details: list[str] = field(default_factory=list)

    @property
    def other_total(self) -> int:
        """Everything that is neither lost nor duplicated (the table's "other differences")."""
        return self.flags + self.internal_date + self.folders + self.other

    @property
    def equal(self) -> bool:
        return self.lost == self.duplicated == self.other_total == 0

    def add(self, kind: str, n: int, detail: str) -> None:
        setattr(self, kind, getattr(self, kind) + n)
        if len(self.details) < MAX_DETAILS:
            self.details.append(detail)
        elif len(self.details) == MAX_DETAILS:
            self.details.append("... more differences left out")

    def merge(self, other: "Differences") -> None:
        for kind in ("lost", "duplicated", "flags", "internal_date", "folders", "other", "mailboxes"):
            setattr(self, kind, getattr(self, kind) + getattr(other, kind))
        room = MAX_DETAILS - len(self.details)
        self.details.extend(other.details[: max(room, 0)])

    def as_dict(self) -> dict:
        return {"lost": self.lost, "duplicated": self.duplicated, "flags": self.flags,
                "internal_date": self.internal_date, "folders": self.folders, "other": self.other}


def compare_mailboxes(primary, standby, addresses: Iterable[str]) -> Differences:
    """Compare every address on ``primary`` and ``standby`` (servers as ``mailcompare.snapshot`` takes them)."""
    total = Differences()
    for address in addresses:
        total.merge(compare_snapshots(address, snapshot(primary, address), snapshot(standby, address)))
    return total


def compare_snapshots(address: str, primary: Snapshot, standby: Snapshot) -> Differences:
    """The differences of one mailbox, the standby judged against the primary."""
    out = Differences(mailboxes=1)
    on_primary = {key[0] for keys in primary.values() for key in keys}
    for folder in sorted(set(primary) - set(standby)):
        n = sum(primary[folder].values())
        out.add("folders", 1, f"{address}: folder {folder!r} missing on the standby ({n} messages)")
        if n:
            out.add("lost", n, f"{address}: {n} message(s) of {folder!r} lost with it")
    for folder in sorted(set(standby) - set(primary)):
        out.add("folders", 1, f"{address}: folder {folder!r} only on the standby")
        _extra(out, address, folder, standby[folder], on_primary)
    for folder in sorted(set(primary) & set(standby)):
        a, b = primary[folder], standby[folder]
        if a == b:
            continue
        missing, extra = a - b, b - a
        by_sha: dict[str, list] = collections.defaultdict(list)
        for key in extra.elements():
            by_sha[key[0]].append(key)
        for key in sorted(missing.elements()):
            partners = by_sha.get(key[0])
            if partners:  # same bytes, other metadata
                other = partners.pop(0)
                missing[key] -= 1
                extra[other] -= 1
                if key[1] != other[1]:
                    out.add("flags", 1, f"{address}: {folder!r} {key[0][:12]} flags {_flags(key)} on the primary, "
                                        f"{_flags(other)} on the standby")
                if key[2] != other[2]:
                    out.add("internal_date", 1, f"{address}: {folder!r} {key[0][:12]} date {key[2]} on the primary, "
                                                f"{other[2]} on the standby")
        for key, n in (+missing).items():
            out.add("lost", n, f"{address}: {folder!r} {key[0][:12]} {_flags(key)} {key[2]}: "
                               f"{a[key]} on the primary, {b[key]} on the standby")
        _extra(out, address, folder, +extra, on_primary, primary_folder=a)
    return out


def _extra(out: Differences, address: str, folder: str, extra: collections.Counter, on_primary: set[str],
           primary_folder: collections.Counter | None = None) -> None:
    for key, n in extra.items():
        held = primary_folder[key] if primary_folder is not None else 0
        if key[0] in on_primary:
            out.add("duplicated", n, f"{address}: {folder!r} {key[0][:12]} {_flags(key)} {key[2]}: "
                                     f"{n} copy(ies) too many on the standby ({held} on the primary in this folder)")
        else:
            out.add("other", n, f"{address}: {folder!r} {key[0][:12]}: on the standby only, never on the primary")


def _flags(key) -> str:
    return "{" + " ".join(sorted(key[1])) + "}"


# --- the product's verify report ----------------------------------------------------------------

def _verify_failure(stdout: str) -> str:
    """What made a verify report an error: the report's own error and the mailboxes not found
    equal (a long report's tail alone is most often the equal ones)."""
    try:
        report = json.loads(stdout)
    except ValueError:
        return stdout[-3000:]
    failed = [m for m in report.get("mailboxes", []) if m.get("verdict") != "equal"]
    return json.dumps({"state": report.get("state"), "error": report.get("error"), "not_equal": failed},
                      indent=2)[:6000]


def run_verify(source_url: str, token: str, *, timeout: float = VERIFY_TIMEOUT) -> dict:
    """``mailrepl verify --all --json`` against the source gateway; the report (exit 0 or 1)."""
    proc = subprocess.run([sys.executable, "-m", "mailrepl", "verify", "--all", "--json", "--url", source_url,
                           "--token", token], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode not in (0, 1):
        raise AssertionError(f"mailrepl verify failed (exit {proc.returncode}):\n{_verify_failure(proc.stdout)}\n"
                             f"{proc.stderr[-3000:]}")
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"mailrepl verify --json printed no JSON report:\n{proc.stdout[-3000:]}") from None
    if (proc.returncode == 0) != bool(report.get("equal")):
        raise AssertionError(f"mailrepl verify exited {proc.returncode} with equal={report.get('equal')!r}")
    return report


def primary_shas(primary) -> Callable[[str], set[str]]:
    """For :func:`counts_from_verify_report`: the SHA-256 of every message of a mailbox on the primary."""
    return lambda address: {key[0] for keys in snapshot(primary, address).values() for key in keys}


_KIND_TO_COUNT = {
    "missing": "lost",
    "duplicate": "duplicated",
    "flags": "flags",
    "internal_date": "internal_date",
    "folder_missing": "folders",
    "folder_extra": "folders",
    "bytes": "other",
}


def counts_from_verify_report(report: Mapping, primary_shas: Callable[[str], set[str]] | None = None) -> Differences:
    """Map ``mailrepl verify --all --json`` onto :class:`Differences`.

    The report is ``{"equal": bool, "mailboxes": [{"address", "verdict", "differences": [{"kind",
    "folder", ...}]}]}``. ``missing`` → lost, ``duplicate`` → duplicated, ``extra`` → duplicated
    when the primary holds the same bytes (the difference's ``sha256``, looked up with
    ``primary_shas(address)``), else other; every other kind, known or not, counts as a difference
    (an unknown kind is never ignored). A difference may carry ``count`` (default 1). A report
    that says ``equal`` while listing differences, or the reverse, is refused.
    """
    if not isinstance(report, Mapping) or not isinstance(report.get("mailboxes"), list):
        raise ValueError(f"not a verify report: {str(report)[:200]}")
    out = Differences()
    for mbx in report["mailboxes"]:
        address = mbx["address"]
        out.mailboxes += 1
        shas: set[str] | None = None
        differences = mbx.get("differences") or []
        if not differences and mbx.get("verdict", "equal") != "equal":  # e.g. could not be read
            out.add("other", 1, f"{address}: verdict {mbx.get('verdict')!r} with no differences listed")
        for d in differences:
            kind, folder = d.get("kind"), d.get("folder")
            n = int(d.get("count", 1))
            sha = d.get("sha256") or d.get("sha")
            label = f"{address}: {kind} in {folder!r}" + (f" {sha[:12]}" if sha else "")
            if kind == "extra":
                if shas is None:
                    shas = primary_shas(address) if primary_shas else set()
                out.add("duplicated" if sha and sha in shas else "other", n, label)
            else:
                out.add(_KIND_TO_COUNT.get(kind, "other"), n, label)
    if bool(report.get("equal")) != out.equal:
        raise ValueError(f"verify report says equal={report.get('equal')!r} but lists "
                         f"{out.as_dict()}: {out.details[:5]}")
    return out
