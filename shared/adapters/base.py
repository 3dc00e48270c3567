"""The adapter contract: what capture and replay need from a mail server, nothing more.

Adapters are dumb: they speak one protocol (IMAP, EWS) and translate its errors into
``mailrepl.shared.errors``. Ordering, batching, retries, dedup, idempotency and the id map live in the
engines (``mailrepl.shared.engines.capture``, ``mailrepl.shared.engines.replay``). Every adapter passes the one conformance suite
in ``tests/conformance``.

Folder names are canonical paths with ``/`` between levels (``"Lists/dev"``); an adapter maps
them to its server's hierarchy delimiter. ``INBOX`` is always spelled ``INBOX``.
Flags are IMAP flag/keyword strings (``\\Seen``, ``$Label1``); ``\\Recent`` is never reported
nor accepted. Internal dates are timezone-aware datetimes (an adapter may change the zone but
not the instant).

Errors an adapter may raise (all from ``mailrepl.shared.errors``):

- ``ServerUnavailable`` (retryable): connect/IO failure, timeout, BYE. The session is dead
  afterwards; open a new one.
- ``AuthenticationFailed``: the service account was refused.
- ``MailboxNotFound``: the server has no such user.
- ``FolderNotFound``: the folder does not exist (``select``-like operations only; the
  idempotent folder operations below never raise it).
- ``CursorInvalid``: ``changes_since`` found the folder's UIDVALIDITY changed (or the
  server-issued state in the cursor's token expired, e.g. an EWS sync state).
- ``MessageRejected``: ``append`` could not store a message (``index`` = which one when known).
- ``ProtocolError``: anything else the server said NO/BAD to.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator, Protocol, Sequence, runtime_checkable

from mailrepl.shared.model import Cursor

__all__ = [
    "FolderInfo",
    "MessageMeta",
    "FetchedMessage",
    "FolderDelta",
    "AppendItem",
    "AppendResult",
    "ServerFeatures",
    "MailboxSession",
    "Adapter",
]


@dataclass(frozen=True)
class FolderInfo:
    """A selectable folder as the server lists it right now."""

    name: str
    fid: str  # stable folder id: OBJECTID MAILBOXID or Dovecot mailbox X-GUID; else "" (unknown)
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    special_use: frozenset[str] = frozenset()  # e.g. {"\\Sent"}

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.uidvalidity, self.highestmodseq, self.uidnext)


@dataclass(frozen=True)
class MessageMeta:
    """What is known about a message without its body."""

    uid: int
    flags: frozenset[str]
    modseq: int = 0
    size: int = 0  # RFC822.SIZE as the server reports it
    guid: str | None = None  # OBJECTID EMAILID, else Dovecot X-GUID, else None
    internaldate: datetime | None = None


@dataclass(frozen=True)
class FetchedMessage:
    uid: int
    flags: frozenset[str]
    internaldate: datetime
    body: bytes  # BODY[] exactly as the server returns it
    guid: str | None = None
    modseq: int = 0


@dataclass(frozen=True)
class FolderDelta:
    """What changed in one folder since a cursor (``MailboxSession.changes_since``).

    - ``cursor``: the folder's position after this delta (capture commits it once every
      change below has been recorded).
    - ``vanished``: UIDs (all below the old cursor's UIDNEXT) expunged since the old cursor.
      May include UIDs the caller never saw; the caller ignores those.
    - ``changed``: messages below the old UIDNEXT whose flags changed since the old cursor's
      HIGHESTMODSEQ (the complete current flag set each).
    - ``new``: messages with UID >= old UIDNEXT (and < ``cursor.uidnext``), sorted by UID,
      with flags, size, guid and internal date but no body.

    With ``since=None`` every message in the folder is ``new`` (initial seeding).
    """

    cursor: Cursor
    vanished: tuple[int, ...] = ()
    changed: tuple[MessageMeta, ...] = ()
    new: tuple[MessageMeta, ...] = ()


@dataclass(frozen=True)
class AppendItem:
    body: bytes
    flags: frozenset[str] = frozenset()
    internaldate: datetime | None = None


@dataclass(frozen=True)
class AppendResult:
    uidvalidity: int
    uids: tuple[int, ...]  # one per appended item, in order (from APPENDUID)


@dataclass(frozen=True)
class ServerFeatures:
    """What the adapter detected; the engines choose strategies from it."""

    message_guid: bool = False  # MessageMeta.guid is filled in
    folder_id: bool = False  # FolderInfo.fid is filled in
    move: bool = False  # server-side MOVE (else COPY + expunge)
    multiappend: bool = False
    notify: bool = False
    idle: bool = False
    names: frozenset[str] = field(default_factory=frozenset)  # raw capability names


@runtime_checkable
class MailboxSession(Protocol):
    """One mailbox (user account) on one server, reached through the service account.

    A session is used by one thread at a time. It holds at most one folder selected;
    every method selects what it needs.
    """

    features: ServerFeatures

    def list_folders(self) -> list[FolderInfo]:
        """Every selectable folder with its current status, INBOX first, then by name."""

    def folder_info(self, folder: str) -> FolderInfo | None:
        """Status of one folder, or None if it does not exist."""

    def changes_since(self, folder: str, since: Cursor | None) -> FolderDelta:
        """What changed in ``folder`` since ``since`` (see :class:`FolderDelta`).

        Raises ``CursorInvalid`` when the folder's UIDVALIDITY differs from
        ``since.uidvalidity`` and ``FolderNotFound`` when the folder is gone.
        Never changes the folder (read-only; \\Seen is not set).
        """

    def fetch(self, folder: str, uids: Sequence[int]) -> Iterator[FetchedMessage]:
        """Bodies, flags and internal dates of ``uids``, in ascending UID order.

        UIDs that no longer exist are skipped silently. Never sets \\Seen. Streams: the
        caller may stop early; at most a bounded number of bodies is buffered.
        """

    def append(self, folder: str, items: Sequence[AppendItem]) -> AppendResult:
        """Store ``items`` in ``folder`` (created if missing) in one atomic command where the
        server supports MULTIAPPEND (all or none). Returns the new UIDs from APPENDUID.
        Bytes are stored exactly as given. Not idempotent: the caller journals intent."""

    def store_flags(self, folder: str, uids: Sequence[int], flags: frozenset[str]) -> None:
        """Replace the flags of ``uids`` with exactly ``flags`` (idempotent; missing UIDs ignored)."""

    def expunge(self, folder: str, uids: Sequence[int]) -> None:
        """Remove exactly ``uids`` (UID EXPUNGE), leaving other \\Deleted messages alone.
        Idempotent: missing UIDs and a missing folder are ignored."""

    def move(self, folder: str, uids: Sequence[int], dest: str) -> dict[int, int]:
        """Move ``uids`` to ``dest`` (created if missing); returns {source uid: dest uid} as the
        server reported it (COPYUID). UIDs that no longer exist are absent from the result."""

    def create_folder(self, folder: str, special_use: frozenset[str] = frozenset()) -> None:
        """Create ``folder`` (and missing parents). Idempotent: existing folder -> no-op."""

    def rename_folder(self, old: str, new: str) -> None:
        """Rename ``old`` (with its children) to ``new``. Idempotent: if ``old`` is missing and
        ``new`` exists, no-op."""

    def delete_folder(self, folder: str) -> None:
        """Delete ``folder`` and its messages; its subfolders, if any, stay (a parent deleted
        alone on the other side: deletes of subfolders come as their own). Idempotent: missing
        folder -> no-op. Servers that cannot (Exchange; Cyrus keeps it emptied) say so in their
        adapter's notes."""

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a sign of change anywhere in the mailbox (NOTIFY
        or IDLE); True if one came, False on timeout. Adapters without push just sleep and
        return False. A wake-up is a hint only: capture always re-reads the state."""

    def close(self) -> None:
        """Log out; never raises."""


@runtime_checkable
class Adapter(Protocol):
    """One mail server, reached with one service account."""

    name: str

    def open(self, address: str) -> MailboxSession:
        """Open a session on mailbox ``address`` through the service account.
        Raises ``MailboxNotFound`` if the server has no such user."""

    def list_mailboxes(self) -> list[str] | None:
        """The mailboxes the server can list (e.g. Cyrus ``user/*``), or None if it cannot."""

    def check(self) -> None:
        """Cheap health probe (connect, authenticate, NOOP); raises an ``AdapterError``."""
