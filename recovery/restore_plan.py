"""A mailbox as it was at a point in time, from a snapshot and the changes after it (pure).

:class:`Catalogue` is what history knows of one replicated mailbox after a sequence number:
its folders (with special-use), its messages (message id, folder, SHA-256, size, flags,
internal date) and the folder renames so far. :func:`fold` plays changes onto a catalogue in
sequence order, up to a capture time; the history keeper (``mailrepl.recovery.history``) uses it
to take base snapshots, a restore to rebuild the mailbox at the time asked for.

:func:`plan` turns a catalogue into what a restore writes: the folders to create and the
messages to write into each, under a target prefix (``Restored/<time>/…``) or the folders'
own names, restricted by folder and by a :class:`Filter` (internal date range here; sender and
subject need the message headers, :meth:`Filter.matches_headers`).

Nothing here does I/O. Change semantics follow the replay engine: a rename moves the folder and
its subfolders (``/``-separated), a delete removes the folder and its messages, a folder reset
drops the folder's messages (the re-adds that follow bring back what the server holds).
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from mailrepl.shared.errors import MailreplError
from mailrepl.shared.model import Change, Kind, parse_internaldate

__all__ = [
    "FORMAT_VERSION",
    "Catalogue",
    "Filter",
    "HistoryGap",
    "Message",
    "RestorePlan",
    "fold",
    "plan",
    "restored_prefix",
]

FORMAT_VERSION = 1  # of the encoded catalogue
SEP = "/"


class HistoryGap(MailreplError):
    """History does not reach back to the time asked for, or a change in between is missing."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class Message:
    mid: int
    folder: str
    sha256: str
    size: int
    flags: tuple[str, ...]
    internaldate: str  # ISO 8601 with offset (``format_internaldate``)


@dataclass
class Catalogue:
    """One mailbox after change ``seq`` (0: before the first), captured at ``at``."""

    seq: int = 0
    at: datetime | None = None
    folders: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> special-use
    messages: dict[int, Message] = field(default_factory=dict)
    renames: list[tuple[int, str, str]] = field(default_factory=list)  # (seq, old, new)

    # ------------------------------------------------------------------ changes

    def apply(self, seq: int, ch: Change, at: datetime | None) -> None:
        """Play change ``seq``; it must be the next one (``HistoryGap`` otherwise)."""
        if seq != self.seq + 1:
            raise HistoryGap(f"change {seq} does not follow {self.seq}")
        k = ch.kind
        if k == Kind.FOLDER_CREATE:
            self.folders[ch.folder] = tuple(ch.special_use or ())
        elif k == Kind.FOLDER_RENAME:
            self._rename(ch.folder, ch.new_folder)
            self.renames.append((seq, ch.folder, ch.new_folder))
        elif k == Kind.FOLDER_DELETE:
            self.folders.pop(ch.folder, None)
            self._drop_folder(ch.folder)
        elif k == Kind.FOLDER_RESET:
            self.folders.setdefault(ch.folder, ())
            self._drop_folder(ch.folder)
        elif k in (Kind.MSG_ADD, Kind.MSG_REPLACE):
            if k == Kind.MSG_REPLACE:
                self.messages.pop(ch.old_mid, None)
            self.folders.setdefault(ch.folder, ())
            self.messages[ch.mid] = Message(ch.mid, ch.folder, ch.sha256, ch.size, tuple(ch.flags or ()),
                                            ch.internaldate)
        elif k == Kind.MSG_EXPUNGE:
            self.messages.pop(ch.mid, None)
        elif k == Kind.MSG_MOVE:
            self.folders.setdefault(ch.new_folder, ())
            m = self.messages.get(ch.mid)
            if m is not None:
                self.messages[ch.mid] = replace(m, folder=ch.new_folder,
                                                flags=tuple(ch.flags) if ch.flags is not None else m.flags)
        elif k == Kind.MSG_FLAGS:
            m = self.messages.get(ch.mid)
            if m is not None:
                self.messages[ch.mid] = replace(m, flags=tuple(ch.flags or ()))
        # FOLDER_RESET_DONE: the re-adds are in; what was not re-added is gone already
        self.seq = seq
        if at is not None:
            self.at = at

    def _rename(self, old: str, new: str) -> None:
        def moved(name: str) -> str:
            return new + name[len(old):] if name == old or name.startswith(old + SEP) else name

        self.folders = {moved(n): su for n, su in self.folders.items()}
        for mid, m in list(self.messages.items()):
            if moved(m.folder) != m.folder:
                self.messages[mid] = replace(m, folder=moved(m.folder))

    def _drop_folder(self, folder: str) -> None:
        for mid in [mid for mid, m in self.messages.items() if m.folder == folder]:
            del self.messages[mid]

    # ------------------------------------------------------------------ reading

    def shas(self) -> set[str]:
        return {m.sha256 for m in self.messages.values()}

    def in_folder(self, folder: str) -> list[Message]:
        return sorted((m for m in self.messages.values() if m.folder == folder), key=lambda m: m.mid)

    # ------------------------------------------------------------------ stored form

    def encode(self) -> bytes:
        doc = {
            "v": FORMAT_VERSION, "seq": self.seq, "at": self.at.isoformat() if self.at else None,
            "folders": [[n, list(su)] for n, su in sorted(self.folders.items())],
            "messages": [[m.mid, m.folder, m.sha256, m.size, list(m.flags), m.internaldate]
                         for m in sorted(self.messages.values(), key=lambda m: m.mid)],
            "renames": [list(r) for r in self.renames],
        }
        return zlib.compress(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(), 6)

    @classmethod
    def decode(cls, data: bytes) -> Catalogue:
        doc = json.loads(zlib.decompress(data))
        if doc.get("v") != FORMAT_VERSION:
            raise ValueError(f"history snapshot format {doc.get('v')!r} is not {FORMAT_VERSION}")
        return cls(
            seq=doc["seq"], at=datetime.fromisoformat(doc["at"]) if doc["at"] else None,
            folders={n: tuple(su) for n, su in doc["folders"]},
            messages={mid: Message(mid, f, sha, size, tuple(flags), idate)
                      for mid, f, sha, size, flags, idate in doc["messages"]},
            renames=[(seq, old, new) for seq, old, new in doc["renames"]],
        )

    def copy(self) -> Catalogue:
        return Catalogue(self.seq, self.at, dict(self.folders), dict(self.messages), list(self.renames))


def fold(base: Catalogue, rows: Iterable[tuple[int, Change, datetime | None]], *,
         until: datetime | None = None) -> Catalogue:
    """``base`` with ``rows`` (seq, change, capture time; ascending, contiguous after base.seq)
    played onto a copy, stopping before the first change captured after ``until``."""
    cat = base.copy()
    for seq, ch, at in rows:
        if seq <= cat.seq:
            continue
        if until is not None and at is not None and at > until:
            break
        cat.apply(seq, ch, at)
    return cat


# --------------------------------------------------------------------------- restore plan


@dataclass(frozen=True)
class Filter:
    """Which messages a restore takes: folder (and its subfolders), internal date range
    (``since`` inclusive, ``before`` exclusive), sender and subject (case-insensitive substrings)."""

    folder: str | None = None
    since: datetime | None = None
    before: datetime | None = None
    sender: str | None = None
    subject: str | None = None

    def in_folder(self, folder: str) -> bool:
        return self.folder is None or folder == self.folder or folder.startswith(self.folder + SEP)

    def matches(self, m: Message) -> bool:
        if not self.in_folder(m.folder):
            return False
        when = parse_internaldate(m.internaldate)
        return (self.since is None or when >= self.since) and (self.before is None or when < self.before)

    @property
    def needs_headers(self) -> bool:
        return self.sender is not None or self.subject is not None

    def matches_headers(self, raw: bytes) -> bool:
        """Sender and subject against the message's header (its bytes up to the first blank line)."""
        if not self.needs_headers:
            return True
        end = raw.find(b"\r\n\r\n")
        end = raw.find(b"\n\n") if end < 0 else end
        head = BytesHeaderParser(policy=compat32).parsebytes(raw[: end if end >= 0 else len(raw)])
        if self.sender is not None:
            who = " ".join(f"{_decoded(n)} {a}" for n, a in getaddresses([str(v) for v in head.get_all("From", [])]))
            if self.sender.lower() not in who.lower():
                return False
        if self.subject is not None:
            subject = " ".join(str(v) for v in head.get_all("Subject", []))
            if self.subject.lower() not in _decoded(subject).lower():
                return False
        return True


def _decoded(value: str) -> str:
    from email.header import decode_header, make_header

    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


@dataclass(frozen=True)
class RestorePlan:
    """What to write: ``folders`` (parents first) and per target folder its messages in id order."""

    at: datetime
    seq: int
    folders: tuple[tuple[str, tuple[str, ...]], ...]  # (target folder, special-use of the source)
    items: tuple[tuple[str, Message], ...]  # (target folder, message)

    @property
    def total_bytes(self) -> int:
        return sum(m.size for _, m in self.items)


def restored_prefix(at: datetime) -> str:
    """``Restored/2026-12-01 10:00:05`` (UTC): where a restore into the same mailbox goes."""

    return "Restored" + SEP + at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def plan(cat: Catalogue, at: datetime, *, prefix: str | None = None, flt: Filter = Filter(),
         exclude_prefix: str = "Restored") -> RestorePlan:
    """The folders and messages of ``cat`` that ``flt`` takes, named under ``prefix``
    (``prefix/INBOX``, ``prefix/Work/2025``), or as they were without one. Earlier restores
    (folders under ``exclude_prefix``) are not restored again into a prefix."""

    def target(name: str) -> str:
        return name if prefix is None else prefix + SEP + name

    def wanted(name: str) -> bool:
        if prefix is not None and (name == exclude_prefix or name.startswith(exclude_prefix + SEP)):
            return False
        return flt.in_folder(name)

    names = sorted(n for n in cat.folders if wanted(n))
    items = [(target(m.folder), m) for m in sorted(cat.messages.values(), key=lambda m: (m.folder, m.mid))
             if wanted(m.folder) and flt.matches(m)]
    folders = [(target(n), cat.folders[n]) for n in names]
    return RestorePlan(at=at, seq=cat.seq, folders=tuple(_parents_first(folders)), items=tuple(items))


def _parents_first(folders: Sequence[tuple[str, tuple[str, ...]]]) -> list[tuple[str, tuple[str, ...]]]:
    """Each folder after its parents (parents the catalogue lacks are added, plain)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, su in sorted(folders, key=lambda f: f[0].count(SEP)):
        parts = name.split(SEP)
        for i in range(1, len(parts)):
            out.setdefault(SEP.join(parts[:i]), ())
        out[name] = su
    return sorted(out.items(), key=lambda f: (f[0].count(SEP), f[0]))
