"""The change model: what travels from the active site to the other one.

Value types here are small, immutable and have a tested text round-trip:

- :class:`Cursor`   where capture stands in one IMAP folder (UIDVALIDITY, HIGHESTMODSEQ, UIDNEXT)
- :class:`SeqRange` a contiguous, inclusive range of per-mailbox sequence numbers
- :class:`UidSet`   an IMAP-style set of UIDs ("1:5,9,12:14"), used for pending capture work
- :class:`Change`   one captured change of one mailbox

A message is identified across the pipeline by its *mid*: a number the capturing gateway
assigns when it first sees the message, unique within one mailbox and stable across moves.
The replaying side keeps the map mid -> (folder, uidvalidity, uid) on its server.
"""
from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator
from urllib.parse import quote, unquote

__all__ = [
    "Cursor",
    "SeqRange",
    "UidSet",
    "Kind",
    "Change",
    "MailboxKey",
    "format_internaldate",
    "parse_internaldate",
    "flags_text",
]


@dataclass(frozen=True, order=True)
class Cursor:
    """Position of capture in one folder: IMAP CONDSTORE/QRESYNC state (UIDVALIDITY,
    HIGHESTMODSEQ, UIDNEXT), plus an optional opaque ``token`` for servers whose position is a
    server-issued state (EWS: the SyncFolderItems sync state). IMAP cursors have no token.

    Text form: ``"<uidvalidity>:<highestmodseq>:<uidnext>"``, with a token
    ``"<uidvalidity>:<highestmodseq>:<uidnext>#<token>"`` (the token percent-encoded, so it
    never contains ``#``; base64 sync states pass unchanged).
    """

    uidvalidity: int
    highestmodseq: int
    uidnext: int
    token: str = ""

    def __post_init__(self) -> None:
        for name in ("uidvalidity", "highestmodseq", "uidnext"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"cursor {name} must be a non-negative integer, got {v!r}")
        if not isinstance(self.token, str):
            raise ValueError(f"cursor token must be a string, got {self.token!r}")

    def format(self) -> str:
        head = f"{self.uidvalidity}:{self.highestmodseq}:{self.uidnext}"
        return f"{head}#{quote(self.token, safe=_TOKEN_SAFE)}" if self.token else head

    @classmethod
    def parse(cls, text: str) -> "Cursor":
        head, sep, token = text.partition("#")
        parts = head.split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts) or (sep and not token):
            raise ValueError(f"not a cursor: {text!r} (want UIDVALIDITY:HIGHESTMODSEQ:UIDNEXT[#TOKEN])")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), unquote(token))

    def __str__(self) -> str:
        return self.format()


_TOKEN_SAFE = "+/=_-."


@dataclass(frozen=True, order=True)
class SeqRange:
    """Inclusive range of sequence numbers ``first..last`` (``first <= last``, both >= 1).

    Text form: ``"first-last"`` (``"7"`` for a single number).
    """

    first: int
    last: int

    def __post_init__(self) -> None:
        if not (isinstance(self.first, int) and isinstance(self.last, int)):
            raise ValueError("sequence range bounds must be integers")
        if self.first < 1 or self.last < self.first:
            raise ValueError(f"bad sequence range {self.first}-{self.last}")

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def __contains__(self, seq: object) -> bool:
        return isinstance(seq, int) and self.first <= seq <= self.last

    def format(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    @classmethod
    def parse(cls, text: str) -> "SeqRange":
        a, sep, b = text.partition("-")
        if not a.isdigit() or (sep and not b.isdigit()):
            raise ValueError(f"not a sequence range: {text!r} (want FIRST-LAST)")
        return cls(int(a), int(b) if sep else int(a))

    def __str__(self) -> str:
        return self.format()


class UidSet:
    """An immutable, normalised set of positive integers with IMAP sequence-set text form."""

    __slots__ = ("_ranges",)

    def __init__(self, values: Iterable[int] = ()) -> None:
        ranges: list[tuple[int, int]] = []
        for v in sorted(set(values)):
            if v < 1:
                raise ValueError(f"UIDs are positive, got {v}")
            if ranges and ranges[-1][1] + 1 == v:
                ranges[-1] = (ranges[-1][0], v)
            else:
                ranges.append((v, v))
        self._ranges = tuple(ranges)

    @classmethod
    def from_ranges(cls, ranges: Iterable[tuple[int, int]]) -> "UidSet":
        out = cls()
        merged: list[tuple[int, int]] = []
        for a, b in sorted(ranges):
            if a < 1 or b < a:
                raise ValueError(f"bad UID range {a}:{b}")
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        out._ranges = tuple(merged)
        return out

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        return self._ranges

    def __len__(self) -> int:
        return sum(b - a + 1 for a, b in self._ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __iter__(self) -> Iterator[int]:
        for a, b in self._ranges:
            yield from range(a, b + 1)

    def __contains__(self, v: object) -> bool:
        return isinstance(v, int) and any(a <= v <= b for a, b in self._ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UidSet) and self._ranges == other._ranges

    def __hash__(self) -> int:
        return hash(self._ranges)

    def __repr__(self) -> str:
        return f"UidSet({self.format()!r})"

    def above(self, uid: int) -> "UidSet":
        """The members strictly greater than ``uid``."""
        return UidSet.from_ranges((max(a, uid + 1), b) for a, b in self._ranges if b > uid)

    def first(self, n: int) -> list[int]:
        out: list[int] = []
        for v in self:
            if len(out) >= n:
                break
            out.append(v)
        return out

    def format(self) -> str:
        return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in self._ranges)

    @classmethod
    def parse(cls, text: str) -> "UidSet":
        if text == "":
            return cls()
        ranges = []
        for part in text.split(","):
            a, sep, b = part.partition(":")
            if not a.isdigit() or (sep and not b.isdigit()):
                raise ValueError(f"not a UID set: {text!r}")
            lo, hi = int(a), int(b) if sep else int(a)
            ranges.append((min(lo, hi), max(lo, hi)))
        return cls.from_ranges(ranges)


class Kind(str, enum.Enum):
    """What a change does. Values are the wire names (stable; see ``mailrepl.shared.protocol.wire``)."""

    FOLDER_CREATE = "folder.create"  # folder; special_use
    FOLDER_RENAME = "folder.rename"  # folder -> new_folder (children follow)
    FOLDER_DELETE = "folder.delete"  # folder (its messages go with it)
    FOLDER_RESET = "folder.reset"  # folder's UIDVALIDITY changed: re-adds follow, then RESET_DONE
    FOLDER_RESET_DONE = "folder.reset_done"  # folder: standby messages not re-added are removed
    MSG_ADD = "msg.add"  # folder, mid, sha256, size, flags, internaldate (+ body)
    MSG_EXPUNGE = "msg.expunge"  # folder, mid
    MSG_MOVE = "msg.move"  # folder -> new_folder, mid, flags (body is not sent again)
    MSG_FLAGS = "msg.flags"  # folder, mid, flags (the complete new set)
    MSG_REPLACE = "msg.replace"  # folder, old_mid replaced by mid (draft edit; + body)

    @property
    def carries_body(self) -> bool:
        return self in (Kind.MSG_ADD, Kind.MSG_REPLACE)


def format_internaldate(dt: datetime) -> str:
    """ISO 8601 with offset, second precision (what IMAP INTERNALDATE can hold)."""
    if dt.tzinfo is None:
        raise ValueError("internal date must be timezone-aware")
    return dt.replace(microsecond=0).isoformat()


def parse_internaldate(text: str) -> datetime:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"internal date without offset: {text!r}")
    return dt


def flags_text(flags: Iterable[str]) -> str:
    """Flags as a catalog keeps them: sorted, space-separated, without \\Recent."""
    return " ".join(sorted(f for f in flags if f.lower() != "\\recent"))


def _norm_flags(flags: Iterable[str] | None) -> tuple[str, ...] | None:
    if flags is None:
        return None
    return tuple(sorted({f for f in flags if f.lower() != "\\recent"}))


@dataclass(frozen=True)
class Change:
    """One captured change of one mailbox. Which fields are set depends on ``kind``."""

    kind: Kind
    folder: str
    mid: int | None = None
    new_folder: str | None = None
    old_mid: int | None = None
    flags: tuple[str, ...] | None = None
    internaldate: str | None = None
    sha256: str | None = None
    size: int | None = None
    special_use: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind.__class__ is not Kind:
            object.__setattr__(self, "kind", Kind(self.kind))
        object.__setattr__(self, "flags", _norm_flags(self.flags))
        if self.special_use is not None:
            object.__setattr__(self, "special_use", tuple(sorted(self.special_use)))
        for name in _NEED.get(self.kind, ()):
            if getattr(self, name) is None:
                raise ValueError(f"{self.kind.value} change needs {name}")
        if not self.folder:
            raise ValueError("change needs a folder")
        if self.internaldate is not None:
            parse_internaldate(self.internaldate)

    def to_dict(self) -> dict[str, Any]:
        # field by field: every value is immutable (no deep copy as ``asdict`` makes)
        d: dict[str, Any] = {}
        for k in _FIELDS:
            v = getattr(self, k)
            if v is not None:
                d[k] = list(v) if k in _LISTS else v
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Change":
        extra = d.keys() - _FIELD_SET
        if extra:
            raise ValueError(f"unknown change field(s): {', '.join(sorted(extra))}")
        kw = dict(d)
        for k in ("flags", "special_use"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def canonical(self) -> bytes:
        return _CANONICAL.encode(self.to_dict()).encode()

    def digest(self) -> str:
        """Content hash of the change (its body is covered through ``sha256``)."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def encoded(self) -> tuple[str, str]:
        """The change as stored and its digest: its canonical JSON (sorted keys, compact, UTF-8
        text; what ``digest`` hashes) and that hash, from one ``to_dict`` and one encoding. Rows
        stored by earlier versions hold it with ASCII escapes and unsorted keys: the same change
        when read, and the same digest."""
        text = _CANONICAL.encode(self.to_dict())
        return text, hashlib.sha256(text.encode()).hexdigest()


_NEED: dict[Kind, tuple[str, ...]] = {
    Kind.FOLDER_RENAME: ("new_folder",),
    Kind.MSG_ADD: ("mid", "sha256", "size", "flags", "internaldate"),
    Kind.MSG_EXPUNGE: ("mid",),
    Kind.MSG_MOVE: ("mid", "new_folder"),
    Kind.MSG_FLAGS: ("mid", "flags"),
    Kind.MSG_REPLACE: ("mid", "old_mid", "sha256", "size", "flags", "internaldate"),
}
_FIELDS = tuple(Change.__dataclass_fields__)
_FIELD_SET = frozenset(_FIELDS)
# built once: ``json.dumps`` with options makes a new encoder per call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_LISTS = frozenset({"flags", "special_use"})


@dataclass(frozen=True, order=True)
class MailboxKey:
    """A mailbox: an account on a named server. Text form ``server/address``."""

    server: str
    address: str

    def format(self) -> str:
        return f"{self.server}/{self.address}"

    @classmethod
    def parse(cls, text: str) -> "MailboxKey":
        server, sep, address = text.partition("/")
        if not sep or not server or not address:
            raise ValueError(f"not a mailbox key: {text!r} (want SERVER/ADDRESS)")
        return cls(server, address)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)

