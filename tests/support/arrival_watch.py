"""Watch a Dovecot's INBOXes and note when each message (by Message-ID) becomes visible over IMAP.

Dovecot's IDLE sends its notification 500 ms after a change (measured: 500.7 ms, every time),
which would hide most of a sub-second lag, and polling 200 sessions with NOOP costs the server
what it costs the gateways. So the watch is woken by the kernel: inotify on each INBOX's
``dovecot.index.log`` (appended when a save commits, i.e. when a message becomes visible), then
asks the server over one persistent IMAP session per mailbox (``NOOP``, then ``UID FETCH
next:*`` of the Message-ID header only) and stamps each new message with the time that answer
arrived: an upper bound of when it became visible, late by one local round trip (< 1 ms idle).
A full check of every mailbox every ``sweep_seconds`` catches any wake-up that was missed.

Sessions are made by ``connect(user) -> socket`` (e.g. inside the standby's network namespace,
so that the watch neither crosses nor loads the gateways' link) and log in as the master user.
"""
from __future__ import annotations

import ctypes
import imaplib
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["ArrivalWatch"]

IN_MODIFY, IN_CREATE, IN_MOVED_TO = 0x2, 0x100, 0x80
_EVENT = struct.Struct("iIII")
_UID = re.compile(rb"UID (\d+)")
_MESSAGE_ID = re.compile(rb"(?im)^Message-ID:\s*(<[^>\r\n]+>)")
_libc = ctypes.CDLL(None, use_errno=True)


class _Session(imaplib.IMAP4):
    """imaplib over a socket made by the caller (e.g. inside a network namespace)."""

    def __init__(self, make_socket: Callable[[], socket.socket]) -> None:
        self._make_socket = make_socket
        super().__init__("watch", 0)

    def _create_socket(self, timeout):  # noqa: ARG002 - imaplib's hook
        return self._make_socket()


class ArrivalWatch:
    """``seen``: Message-ID -> ``time.monotonic()`` when the server first showed it.

    ``mail_dirs``: user -> the directory holding that user's INBOX index (must exist).
    Messages present at ``start()`` are not reported.
    """

    def __init__(self, connect: Callable[[str], socket.socket], users: list[str], mail_dirs: dict[str, Path],
                 master_user: str, master_password: str, *, sweep_seconds: float = 5.0) -> None:
        self.seen: dict[str, float] = {}
        self.checks = 0
        self.wakeups = 0
        self._users = list(users)
        self._sweep = sweep_seconds
        self._stop = threading.Event()
        self._sessions: dict[str, _Session] = {}
        self._next_uid: dict[str, int] = {}
        self._fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._wd: dict[int, str] = {}
        for user in self._users:
            directory = mail_dirs[user]
            wd = _libc.inotify_add_watch(self._fd, str(directory).encode(), IN_MODIFY | IN_CREATE | IN_MOVED_TO)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
            self._wd[wd] = user
        for user in self._users:
            conn = _Session(lambda u=user: connect(u))
            conn.authenticate("PLAIN", lambda _, u=user: f"{u}\0{master_user}\0{master_password}".encode())
            typ, _ = conn.select("INBOX", readonly=True)
            if typ != "OK":
                raise RuntimeError(f"EXAMINE INBOX of {user} failed")
            uidnext = conn.response("UIDNEXT")[1][0]
            self._next_uid[user] = int(uidnext)
            self._sessions[user] = conn
        self._thread = threading.Thread(target=self._run, name="arrival-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for conn in self._sessions.values():
            try:
                conn.logout()
            except (OSError, imaplib.IMAP4.error):
                pass
        os.close(self._fd)

    def _run(self) -> None:
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            users = set()
            if ready:
                users = self._read_events()
            if time.monotonic() - last_sweep >= self._sweep:
                users = set(self._users)
                last_sweep = time.monotonic()
            for user in sorted(users):
                self._check(user)

    def _read_events(self) -> set[str]:
        users = set()
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return users
        offset = 0
        while offset < len(data):
            wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            # the transaction log is written when a save commits; cache and other files are not a sign
            if name.startswith(b"dovecot.index.log") and wd in self._wd:
                users.add(self._wd[wd])
        self.wakeups += len(users)
        return users

    def _check(self, user: str) -> None:
        conn = self._sessions[user]
        self.checks += 1
        conn.noop()
        first = self._next_uid[user]
        typ, data = conn.uid("FETCH", f"{first}:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        now = time.monotonic()
        if typ != "OK":
            raise RuntimeError(f"UID FETCH on {user}'s INBOX failed: {data!r}")
        for item in data:
            if not isinstance(item, tuple):
                continue
            uid_match = _UID.search(item[0])
            if not uid_match or int(uid_match.group(1)) < first:
                continue  # "N:*" also names the last message when nothing is new
            uid = int(uid_match.group(1))
            self._next_uid[user] = max(self._next_uid[user], uid + 1)
            found = _MESSAGE_ID.search(item[1])
            if found:
                self.seen.setdefault(found.group(1).decode("ascii", "replace"), now)
