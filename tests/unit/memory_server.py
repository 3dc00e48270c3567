"""An in-memory mail server with IMAP CONDSTORE/QRESYNC semantics, for engine unit tests.

It models what the engines rely on — UIDVALIDITY, UIDNEXT, per-message MODSEQ, expunge
history, message GUIDs, MOVE with new UIDs, atomic multi-append — so capture and replay logic
can be tested fast and deterministically. Real-server behaviour is covered by the conformance
and end-to-end suites against Dovecot.
"""
from __future__ import annotations

import hashlib

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator, Sequence

from mailrepl.shared.adapters.base import (
    AppendItem,
    AppendResult,
    FetchedMessage,
    FolderDelta,
    FolderInfo,
    MessageMeta,
    ServerFeatures,
)
from mailrepl.shared.errors import (
    AuthenticationFailed,
    CursorInvalid,
    FolderNotFound,
    MailboxNotFound,
    MessageRejected,
    ProtocolError,
    ServerUnavailable,
)
from mailrepl.shared.model import Cursor

_uv = itertools.count(1000)


@dataclass
class Msg:
    uid: int
    body: bytes
    flags: set[str]
    date: datetime
    guid: str
    modseq: int


@dataclass
class Folder:
    name: str
    fid: str = field(default_factory=lambda: uuid.uuid4().hex)
    uidvalidity: int = field(default_factory=lambda: next(_uv))
    uidnext: int = 1
    modseq: int = 1
    msgs: dict[int, Msg] = field(default_factory=dict)
    vanished: dict[int, int] = field(default_factory=dict)  # uid -> modseq of expunge
    special_use: frozenset[str] = frozenset()


class MemoryServer:
    def __init__(self, users: Sequence[str], *, guids: bool = True, folder_ids: bool = True) -> None:
        self.boxes: dict[str, dict[str, Folder]] = {u: {"INBOX": Folder("INBOX")} for u in users}
        self.features = ServerFeatures(message_guid=guids, folder_id=folder_ids, move=True, multiappend=True)
        self.down = False
        self.reject: set[bytes] = set()  # bodies the server refuses
        self.fail_after_append = False  # simulate a crash after the server stored an append
        self.alter = None  # bytes -> bytes: how the server changes a message it stores (None: not at all)
        self.appends = 0
        self.service_password = "secret"  # what MemoryAdapter must present

    # test-side manipulation ---------------------------------------------------------
    def box(self, user: str) -> dict[str, Folder]:
        return self.boxes[user]

    def deliver(self, user: str, body: bytes, folder: str = "INBOX", flags=(), date=None) -> int:
        f = self.boxes[user].setdefault(folder, Folder(folder))
        return self._add(f, body, set(flags), date or datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc), uuid.uuid4().hex)

    def _add(self, f: Folder, body: bytes, flags: set[str], date: datetime, guid: str) -> int:
        f.modseq += 1
        uid = f.uidnext
        f.uidnext += 1
        f.msgs[uid] = Msg(uid, body, set(flags) - {"\\Recent"}, date, guid, f.modseq)
        return uid

    def set_flags(self, user: str, folder: str, uid: int, flags) -> None:
        f = self.boxes[user][folder]
        f.modseq += 1
        m = f.msgs[uid]
        m.flags, m.modseq = set(flags), f.modseq

    def expunge(self, user: str, folder: str, uids) -> None:
        f = self.boxes[user][folder]
        for uid in uids:
            if uid in f.msgs:
                f.modseq += 1
                del f.msgs[uid]
                f.vanished[uid] = f.modseq

    def move(self, user: str, folder: str, uid: int, dest: str) -> int:
        src, dst = self.boxes[user][folder], self.boxes[user].setdefault(dest, Folder(dest))
        m = src.msgs[uid]
        new = self._add(dst, m.body, m.flags, m.date, m.guid)
        self.expunge(user, folder, [uid])
        return new

    def delete_folder(self, user: str, folder: str, *, subfolders: bool = True) -> None:
        """A user deletes ``folder`` and its subfolders, with their messages; with
        ``subfolders=False`` the folder alone (its subfolders stay, as RFC 3501 allows)."""
        box = self.boxes[user]
        for name in [n for n in box if n == folder or (subfolders and n.startswith(folder + "/"))]:
            del box[name]

    def rename_folder(self, user: str, old: str, new: str) -> None:
        """A user renames ``old`` (its subfolders with it) to ``new``: folder ids and messages kept."""
        self.open(user).rename_folder(old, new)

    def reset_uidvalidity(self, user: str, folder: str) -> None:
        f = self.boxes[user][folder]
        f.uidvalidity = next(_uv)
        msgs = sorted(f.msgs.values(), key=lambda m: m.uid)
        f.msgs, f.vanished, f.uidnext = {}, {}, 1
        for m in msgs:
            self._add(f, m.body, m.flags, m.date, m.guid)

    def open(self, user: str) -> "MemorySession":
        if self.down:
            raise ServerUnavailable("memory server is down")
        if user not in self.boxes:
            raise MailboxNotFound(f"no such user {user!r}")
        return MemorySession(self, user)


class MemorySession:
    def __init__(self, server: MemoryServer, user: str) -> None:
        self.server, self.user = server, user
        self.features = server.features

    def _check(self) -> dict[str, Folder]:
        if self.server.down:
            raise ServerUnavailable("memory server is down")
        return self.server.boxes[self.user]

    def _info(self, f: Folder) -> FolderInfo:
        return FolderInfo(
            f.name, f.fid if self.features.folder_id else "", f.uidvalidity, f.uidnext, f.modseq, len(f.msgs), f.special_use
        )

    def list_folders(self) -> list[FolderInfo]:
        box = self._check()
        return [self._info(box[n]) for n in sorted(box, key=lambda n: (n != "INBOX", n))]

    def folder_info(self, folder: str) -> FolderInfo | None:
        f = self._check().get(folder)
        return self._info(f) if f else None

    def _meta(self, m: Msg) -> MessageMeta:
        return MessageMeta(m.uid, frozenset(m.flags), m.modseq, len(m.body), m.guid if self.features.message_guid else None, m.date)

    def changes_since(self, folder: str, since: Cursor | None) -> FolderDelta:
        f = self._check().get(folder)
        if f is None:
            raise FolderNotFound(folder)
        cur = Cursor(f.uidvalidity, f.modseq, f.uidnext)
        if since is None:
            return FolderDelta(cur, new=tuple(self._meta(m) for _, m in sorted(f.msgs.items())))
        if since.uidvalidity != f.uidvalidity:
            raise CursorInvalid(f"{folder}: UIDVALIDITY changed")
        vanished = tuple(sorted(u for u, ms in f.vanished.items() if ms > since.highestmodseq and u < since.uidnext))
        changed = tuple(self._meta(m) for u, m in sorted(f.msgs.items()) if u < since.uidnext and m.modseq > since.highestmodseq)
        new = tuple(self._meta(m) for u, m in sorted(f.msgs.items()) if u >= since.uidnext)
        return FolderDelta(cur, vanished, changed, new)

    def fetch(self, folder: str, uids: Sequence[int]) -> Iterator[FetchedMessage]:
        f = self._check().get(folder)
        if f is None:
            raise FolderNotFound(folder)
        for uid in sorted(uids):
            m = f.msgs.get(uid)
            if m is not None:
                yield FetchedMessage(uid, frozenset(m.flags), m.date, m.body, m.guid if self.features.message_guid else None, m.modseq)

    def append(self, folder: str, items: Sequence[AppendItem]) -> AppendResult:
        box = self._check()
        f = box.setdefault(folder, Folder(folder))
        for it in items:
            if it.body in self.server.reject:
                raise MessageRejected("refused by policy")
        alter = self.server.alter or (lambda body: body)
        uids = tuple(self.server._add(f, alter(it.body), set(it.flags), it.internaldate, uuid.uuid4().hex)
                     for it in items)
        self.server.appends += len(items)
        if self.server.fail_after_append:
            self.server.fail_after_append = False
            raise ServerUnavailable("connection lost after APPEND")
        return AppendResult(f.uidvalidity, uids)

    def stored_digests(self, folder: str, uids: Sequence[int]) -> dict:
        """{uid: StoredDigest(size, sha1)}, as an IMAP server offering DIGEST=SHA1 answers."""
        from mailrepl.shared.adapters.imap_digests import StoredDigest

        f = self._check().get(folder)
        return {uid: StoredDigest(len(f.msgs[uid].body), hashlib.sha1(f.msgs[uid].body).hexdigest())
                for uid in uids if f is not None and uid in f.msgs}

    def store_flags(self, folder: str, uids: Sequence[int], flags: frozenset[str]) -> None:
        f = self._check().get(folder)
        for uid in uids:
            if f is not None and uid in f.msgs:
                self.server.set_flags(self.user, folder, uid, flags)

    def expunge(self, folder: str, uids: Sequence[int]) -> None:
        if folder in self._check():
            self.server.expunge(self.user, folder, uids)

    def move(self, folder: str, uids: Sequence[int], dest: str) -> dict[int, int]:
        box = self._check()
        out = {}
        for uid in uids:
            if uid in box.get(folder, Folder(folder)).msgs:
                out[uid] = self.server.move(self.user, folder, uid, dest)
        return out

    def create_folder(self, folder: str, special_use: frozenset[str] = frozenset()) -> None:
        self._check().setdefault(folder, Folder(folder, special_use=special_use))

    def rename_folder(self, old: str, new: str) -> None:
        box = self._check()
        if old not in box:
            return
        if new in box or new.startswith(old + "/"):  # as an IMAP server refuses it
            raise ProtocolError(f"cannot rename {old!r} to {new!r}: it exists or is inside {old!r}")
        for name in sorted([n for n in box if n == old or n.startswith(old + "/")]):
            f = box.pop(name)
            f.name = new + name[len(old):]
            box[f.name] = f

    def delete_folder(self, folder: str) -> None:
        self._check()
        self.server.delete_folder(self.user, folder, subfolders=False)  # that folder alone, as the IMAP adapter does

    def wait_for_change(self, timeout: float) -> bool:
        return False

    def close(self) -> None:
        pass


class MemoryAdapter:
    """The ``Adapter`` face of a :class:`MemoryServer`, reached with a service password."""

    def __init__(self, name: str, server: MemoryServer, service_password: str = "secret") -> None:
        self.name, self.server, self.service_password = name, server, service_password

    def _login(self) -> None:
        if self.server.down:
            raise ServerUnavailable("memory server is down")
        if self.service_password != self.server.service_password:
            raise AuthenticationFailed("service account refused")

    def open(self, address: str) -> MemorySession:
        self._login()
        return self.server.open(address)

    def list_mailboxes(self) -> list[str]:
        return sorted(self.server.boxes)

    def check(self) -> None:
        self._login()
