"""Verify: compare a primary and a standby copy of one mailbox (pure; no I/O).

Two listings go in, differences come out. A listing is per folder; per message it holds the
SHA-256 of the raw bytes, the flags and keywords, the internal date and, where the capture state
or the id map knows it, the message's replication id (``mid``).

Folders pair by the name replication gives them on the standby (the primary's name). A standby
folder the standby view knows under another name (``known_as``: renamed behind replication's back)
does not stand in for it: the primary's folder is ``folder_missing`` (with the renamed folder as
``standby_folder``) and the renamed one ``folder_extra``.

Within a pair of folders, messages pair first by id (the same id with other bytes is ``bytes``),
then by SHA-256, preferring copies equal in everything. A paired message may differ in ``flags``
and ``internal_date``; a primary message left over is ``missing``; a standby one ``extra``, or
``duplicate`` when the primary holds the same bytes in that folder.

The cheap first pass (:func:`summary_digest`) proves a folder equal without reading a body: the
digest of what the capture state knows of the primary's folder against the digest of what the
standby view knows of the standby's, when both are current with their server.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

__all__ = [
    "KINDS",
    "Listed",
    "Difference",
    "FolderSide",
    "summary_digest",
    "pair_folder_names",
    "compare_folder",
    "compare_mailbox",
    "utc_seconds",
]

KINDS = ("missing", "extra", "duplicate", "flags", "internal_date", "bytes", "folder_missing", "folder_extra")
IGNORED_FLAGS = frozenset({"\\recent"})


def utc_seconds(value: datetime | str) -> str:
    """An internal date as compared: the instant in UTC, to the second (ISO 8601)."""
    dt = datetime.fromisoformat(value) if isinstance(value, str) else value
    if dt.tzinfo is None:
        raise ValueError(f"internal date without a time zone: {value!r}")
    return dt.astimezone(timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Listed:
    """One message of a listing."""

    uid: int
    sha256: str
    flags: frozenset[str]
    internaldate: str  # utc_seconds()
    mid: int | None = None  # the replication id, where known
    message_id: str = ""  # its Message-ID header, for the operator
    modseq: int = 0  # its MODSEQ where the server gives one (not compared; 0: unknown)

    @property
    def flag_set(self) -> frozenset[str]:
        return frozenset(f for f in self.flags if f.lower() not in IGNORED_FLAGS)


@dataclass(frozen=True)
class Difference:
    kind: str
    folder: str
    standby_folder: str | None = None
    message_id: str | None = None
    sha256: str | None = None
    detail: str = ""
    mid: int | None = None
    primary_uid: int | None = None
    standby_uid: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FolderSide:
    """A folder as one side lists it (messages left out in the cheap pass)."""

    name: str
    known_as: str | None = None  # standby: the name the standby view knows the folder by


def summary_digest(entries: Iterable[tuple[str, str]]) -> str:
    """The digest of a folder's (sha256, flags text) pairs, whatever their order."""
    h = hashlib.sha256()
    for sha, flags in sorted(entries):
        h.update(f"{sha} {flags}\n".encode())
    return h.hexdigest()


def pair_folder_names(primary: Sequence[FolderSide], standby: Sequence[FolderSide]
                      ) -> tuple[list[tuple[str, str]], list[Difference]]:
    """The (primary, standby) folder pairs to compare, and the folder differences."""
    by_name = {f.name: f for f in standby}
    renamed_to = {f.known_as: f.name for f in standby if f.known_as and f.known_as != f.name}
    pairs: list[tuple[str, str]] = []
    diffs: list[Difference] = []
    paired: set[str] = set()
    for f in primary:
        s = by_name.get(f.name)
        if s is not None:
            pairs.append((f.name, s.name))
            paired.add(s.name)
            continue
        other = renamed_to.get(f.name)
        detail = (f"not on the standby; renamed there to {other!r}" if other is not None
                  else "not on the standby")
        diffs.append(Difference("folder_missing", f.name, standby_folder=other, detail=detail))
    for s in standby:
        if s.name not in paired:
            detail = (f"only on the standby (it was {s.known_as!r})" if s.known_as and s.known_as != s.name
                      else "only on the standby")
            diffs.append(Difference("folder_extra", s.name, standby_folder=s.name, detail=detail))
    return pairs, diffs


def compare_folder(folder: str, standby_folder: str, primary: Sequence[Listed],
                   standby: Sequence[Listed]) -> list[Difference]:
    """Every difference between the messages of one folder pair (see the module docstring)."""
    out: list[Difference] = []
    p_left = list(primary)
    s_by_mid = {m.mid: m for m in standby if m.mid is not None}
    taken: set[int] = set()  # standby uids paired
    rest: list[Listed] = []
    for p in p_left:
        s = s_by_mid.get(p.mid) if p.mid is not None else None
        if s is None or s.uid in taken:
            rest.append(p)
            continue
        taken.add(s.uid)
        if s.sha256 != p.sha256:
            out.append(_diff("bytes", folder, standby_folder, p, s,
                             f"standby copy has other bytes (sha256 {s.sha256[:12]}…)"))
            continue
        out.extend(_attributes(folder, standby_folder, p, s))
    s_rest = [m for m in standby if m.uid not in taken]
    p_by_sha: dict[str, list[Listed]] = defaultdict(list)
    s_by_sha: dict[str, list[Listed]] = defaultdict(list)
    for p in rest:
        p_by_sha[p.sha256].append(p)
    for s in s_rest:
        s_by_sha[s.sha256].append(s)
    primary_shas = {p.sha256 for p in primary}
    for sha in sorted(set(p_by_sha) | set(s_by_sha)):
        ps, ss = sorted(p_by_sha.get(sha, []), key=_order), sorted(s_by_sha.get(sha, []), key=_order)
        # equal copies first, then the rest in order: what is left over is missing or extra
        for p in list(ps):
            twin = next((s for s in ss if _same(p, s)), None)
            if twin is not None:
                ps.remove(p)
                ss.remove(twin)
        while ps and ss:
            p, s = ps.pop(0), ss.pop(0)
            out.extend(_attributes(folder, standby_folder, p, s))
        for p in ps:
            out.append(_diff("missing", folder, standby_folder, p, None, "on the primary, not on the standby"))
        for s in ss:
            if sha in primary_shas:
                out.append(_diff("duplicate", folder, standby_folder, None, s,
                                 "more copies on the standby than on the primary"))
            else:
                out.append(_diff("extra", folder, standby_folder, None, s, "on the standby, not on the primary"))
    return out


def compare_mailbox(primary: dict[str, Sequence[Listed]], standby: dict[str, Sequence[Listed]],
                    standby_known_as: dict[str, str | None] | None = None) -> list[Difference]:
    """Every difference between two whole listings (folder name -> messages)."""
    known = standby_known_as or {}
    pairs, out = pair_folder_names([FolderSide(n) for n in primary],
                                   [FolderSide(n, known.get(n)) for n in standby])
    for p, s in pairs:
        out.extend(compare_folder(p, s, primary[p], standby[s]))
    return out


def _order(m: Listed) -> tuple:
    return (m.internaldate, sorted(m.flag_set), m.uid)


def _same(p: Listed, s: Listed) -> bool:
    return p.flag_set == s.flag_set and p.internaldate == s.internaldate


def _attributes(folder: str, standby_folder: str, p: Listed, s: Listed) -> list[Difference]:
    out = []
    if p.flag_set != s.flag_set:
        out.append(_diff("flags", folder, standby_folder, p, s,
                         f"primary ({' '.join(sorted(p.flag_set))}) standby ({' '.join(sorted(s.flag_set))})"))
    if p.internaldate != s.internaldate:
        out.append(_diff("internal_date", folder, standby_folder, p, s,
                         f"primary {p.internaldate} standby {s.internaldate}"))
    return out


def _diff(kind: str, folder: str, standby_folder: str, p: Listed | None, s: Listed | None, detail: str) -> Difference:
    ref = p or s
    return Difference(kind, folder, standby_folder=standby_folder, message_id=ref.message_id or None,
                      sha256=ref.sha256, detail=detail, mid=(p.mid if p is not None else s.mid),
                      primary_uid=p.uid if p is not None else None, standby_uid=s.uid if s is not None else None)
