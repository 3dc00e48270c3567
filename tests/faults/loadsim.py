"""A seeded traffic generator for the fault suite: mail arriving by LMTP while users work over IMAP.

Delivery threads hand messages to the primary's LMTP listener (public corpus messages and
generated ones with unique Message-IDs, some with attachments from a shared pool so that the
same part recurs); user threads log in as random users and read (which sets ``\\Seen``), set and
clear flags and keywords, move messages between folders, delete and expunge, and create folders.

It runs while faults are injected and tolerates the primary being down: a failed operation is
counted (per kind) and retried later, never counted as done. An LMTP delivery counts as
delivered only when the server answered 250 after the data; a delivery cut off by a crash, or
refused, is counted as failed or refused. What the generator did is only reported: the suite
judges replication by comparing the primary with the standby, not by these counts.

Every thread draws from its own ``random.Random`` derived from the seed and the thread's name,
so a seed gives the same sequence of choices (the interleaving with faults depends on timing).
"""
from __future__ import annotations

import base64
import collections
import imaplib
import random
import smtplib
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.dovecot import lmtp_recipient, lmtp_send
from tests.support.imapclient import login_as_user

__all__ = ["LoadSim", "TrafficCounts", "pick_corpus"]

CORPUS_MAX_BYTES = 256 * 1024  # keep traffic quick: larger corpus messages are left out
BASE_FOLDERS = ("Archive", "Work", "Lists")
MAX_FOLDERS = 8  # per user, created folders included
FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "\\Draft", "$Label1", "$Label2", "$Forwarded", "project-x")
NETWORK_ERRORS = (OSError, EOFError, imaplib.IMAP4.abort, smtplib.SMTPException, socket.timeout)


@dataclass
class TrafficCounts:
    """What the generator did. ``changes`` counts messages changed (or folders created) per kind."""

    delivered: int = 0
    delivery_failed: int = 0  # connection lost or temporary refusal: not delivered (or not known to be)
    delivery_refused: int = 0  # the server refused that message for good (5xx)
    changes: collections.Counter = field(default_factory=collections.Counter)
    failed: collections.Counter = field(default_factory=collections.Counter)  # operations, per kind

    @property
    def changes_made(self) -> int:
        return sum(self.changes.values())

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.changes.items()))
        fails = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "none"
        return (f"delivered {self.delivered} (failed {self.delivery_failed}, refused {self.delivery_refused}); "
                f"changes {self.changes_made} ({kinds}); failed operations: {fails}")


def pick_corpus(files: Sequence[Path], count: int, seed: int) -> list[bytes]:
    """``count`` corpus messages of at most ``CORPUS_MAX_BYTES``, drawn with ``seed``."""
    small = [p for p in files if p.stat().st_size <= CORPUS_MAX_BYTES]
    if not small:
        raise FileNotFoundError("no corpus message is small enough for traffic")
    rng = random.Random(f"corpus:{seed}")
    return [p.read_bytes() for p in rng.sample(small, min(count, len(small)))]


class LoadSim:
    """Traffic against one Dovecot-like server (``host``, ``imap_port``, ``lmtp_port``, ``user_password``).

    ``start()`` launches ``deliverers`` LMTP threads and ``workers`` IMAP threads; ``stop()`` ends
    them and returns the counts. ``pause`` is the mean think time between two operations of a thread.
    """

    def __init__(self, server, users: Sequence[str], *, seed: int, corpus: Sequence[bytes],
                 deliverers: int = 2, workers: int = 2, pause: float = 0.05) -> None:
        if not users:
            raise ValueError("traffic needs at least one user")
        self.server, self.users, self.seed = server, list(users), seed
        self.corpus = list(corpus)
        self.deliverers, self.workers, self.pause = deliverers, workers, pause
        self.counts = TrafficCounts()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._serial = 0
        self._folders = {u: list(BASE_FOLDERS) for u in self.users}
        self._attachments = [_random_bytes(random.Random(f"att:{seed}:{i}"), 24_000 + 4_000 * i) for i in range(4)]

    # --- control ---------------------------------------------------------------------------

    def populate(self, per_user: int) -> int:
        """Deliver ``per_user`` messages to every user before protection starts; returns how many."""
        rng = random.Random(f"populate:{self.seed}")
        done = 0
        for user in self.users:
            conn = login_as_user(self.server.host, self.server.imap_port, user, self.server.user_password)
            try:
                for folder in BASE_FOLDERS:
                    conn.create(_q(folder))
            finally:
                conn.logout()
            by_folder: dict[str | None, list[bytes]] = collections.defaultdict(list)
            for _ in range(per_user):
                by_folder[rng.choice((None, None, "Archive", "Work", "Lists"))].append(self._message(rng, user))
            for folder, raws in by_folder.items():
                done += self.server.deliver_many(user, raws, folder)
        with self._lock:
            self.counts.delivered += done
        return done

    def start(self) -> None:
        self._stop.clear()
        for i in range(self.deliverers):
            self._spawn(f"deliver-{i}", self._deliver_loop)
        for i in range(self.workers):
            self._spawn(f"user-{i}", self._user_loop)

    def stop(self, timeout: float = 60.0) -> TrafficCounts:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        stuck = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        if stuck:
            raise RuntimeError(f"traffic threads did not stop: {stuck}")
        return self.counts

    def _spawn(self, name: str, loop) -> None:
        rng = random.Random(f"{self.seed}:{name}")
        t = threading.Thread(target=self._guard, args=(loop, rng), name=f"loadsim-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def _guard(self, loop, rng: random.Random) -> None:
        try:
            loop(rng)
        except BaseException as exc:  # a bug in the generator must not pass unnoticed
            with self._lock:
                self.counts.failed[f"crashed: {type(exc).__name__}: {exc}"] += 1
            raise

    def _think(self, rng: random.Random) -> None:
        self._stop.wait(rng.expovariate(1 / self.pause) if self.pause > 0 else 0)

    def _count(self, kind: str, n: int = 1, *, failed: bool = False) -> None:
        with self._lock:
            (self.counts.failed if failed else self.counts.changes)[kind] += n

    # --- deliveries ------------------------------------------------------------------------

    def _message(self, rng: random.Random, user: str) -> bytes:
        if self.corpus and rng.random() < 0.4:
            return rng.choice(self.corpus)
        with self._lock:
            self._serial += 1
            serial = self._serial
        size = rng.choice((300, 2_000, 8_000, 30_000))
        text = _random_text(rng, size)
        head = (f"From: sender{rng.randrange(50)}@example.net\r\nTo: {user}@example.org\r\n"
                f"Subject: traffic {serial} for {user}\r\nMessage-ID: <fault.{self.seed}.{serial}@loadsim.example>\r\n"
                f"Date: Tue, 01 Dec 2026 10:{serial % 60:02d}:00 +0000\r\nMIME-Version: 1.0\r\n")
        if rng.random() < 0.2:  # a recurring attachment: the same part in many messages
            att = rng.choice(self._attachments)
            b = f"b{serial}"
            return (head + f'Content-Type: multipart/mixed; boundary="{b}"\r\n\r\n--{b}\r\n'
                    f"Content-Type: text/plain\r\n\r\n{text}\r\n--{b}\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Transfer-Encoding: base64\r\n\r\n").encode() + att + f"\r\n--{b}--\r\n".encode()
        return (head + f"Content-Type: text/plain\r\n\r\n{text}\r\n").encode()

    def _deliver_loop(self, rng: random.Random) -> None:
        lmtp: smtplib.LMTP | None = None
        while not self._stop.is_set():
            user = rng.choice(self.users)
            folder = rng.choice((None, None, None, "Lists"))
            raw = self._message(rng, user)
            try:
                if lmtp is None:
                    lmtp = smtplib.LMTP(self.server.host, self.server.lmtp_port, timeout=30)
                outcome = _lmtp_send(lmtp, lmtp_recipient(user, folder), raw)
            except NETWORK_ERRORS:
                outcome = "failed"
                lmtp = _drop(lmtp)
                self._stop.wait(0.2 + rng.random() * 0.3)
            with self._lock:
                if outcome == "delivered":
                    self.counts.delivered += 1
                elif outcome == "refused":
                    self.counts.delivery_refused += 1
                else:
                    self.counts.delivery_failed += 1
            self._think(rng)
        _drop(lmtp)

    # --- user actions ----------------------------------------------------------------------

    def _user_loop(self, rng: random.Random) -> None:
        actions = (("read", 3), ("flags", 4), ("move", 2), ("delete", 2), ("create", 1))
        names, weights = zip(*actions)
        while not self._stop.is_set():
            user = rng.choice(self.users)
            try:
                conn = login_as_user(self.server.host, self.server.imap_port, user, self.server.user_password,
                                     timeout=30)
            except (*NETWORK_ERRORS, imaplib.IMAP4.error):
                self._count("login", failed=True)
                self._stop.wait(0.2 + rng.random() * 0.3)
                continue
            try:
                for _ in range(rng.randint(1, 6)):
                    if self._stop.is_set():
                        break
                    kind = rng.choices(names, weights)[0]
                    try:
                        done = getattr(self, f"_do_{kind}")(conn, user, rng)
                    except imaplib.IMAP4.error:  # NO/BAD: e.g. the folder went away meanwhile
                        self._count(kind, failed=True)
                        continue
                    except NETWORK_ERRORS:
                        self._count(kind, failed=True)
                        self._stop.wait(0.2 + rng.random() * 0.3)
                        break
                    if done:
                        self._count(kind, done)
                    self._think(rng)
            finally:
                try:
                    conn.logout()
                except (*NETWORK_ERRORS, imaplib.IMAP4.error):
                    pass

    def _select_some(self, conn: imaplib.IMAP4, user: str, rng: random.Random, most: int) -> tuple[str, list[bytes]]:
        folder = rng.choice(["INBOX", "INBOX", *self._folders[user]])
        _ok(conn.select(_q(folder)), "SELECT")
        typ, data = conn.uid("SEARCH", None, "ALL")
        _ok((typ, data), "SEARCH")
        uids = data[0].split() if data and data[0] else []
        return folder, rng.sample(uids, min(len(uids), rng.randint(1, most)))

    def _do_read(self, conn, user, rng) -> int:
        _, uids = self._select_some(conn, user, rng, 3)
        if not uids:
            return 0
        _ok(conn.uid("FETCH", b",".join(uids).decode(), "(BODY[])"), "FETCH")  # sets \Seen
        return len(uids)

    def _do_flags(self, conn, user, rng) -> int:
        _, uids = self._select_some(conn, user, rng, 8)
        if not uids:
            return 0
        flags = " ".join(rng.sample(FLAGS, rng.randint(1, 3)))
        op = rng.choice(("+FLAGS", "+FLAGS", "-FLAGS"))
        _ok(conn.uid("STORE", b",".join(uids).decode(), op, f"({flags})"), "STORE")
        return len(uids)

    def _do_move(self, conn, user, rng) -> int:
        folder, uids = self._select_some(conn, user, rng, 5)
        targets = [f for f in ["INBOX", *self._folders[user]] if f != folder]
        if not uids:
            return 0
        _ok(conn.uid("MOVE", b",".join(uids).decode(), _q(rng.choice(targets))), "MOVE")
        return len(uids)

    def _do_delete(self, conn, user, rng) -> int:
        _, uids = self._select_some(conn, user, rng, 3)
        if not uids:
            return 0
        uid_set = b",".join(uids).decode()
        _ok(conn.uid("STORE", uid_set, "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
        _ok(conn.uid("EXPUNGE", uid_set), "UID EXPUNGE")
        return len(uids)

    def _do_create(self, conn, user, rng) -> int:
        with self._lock:
            folders = self._folders[user]
            if len(folders) >= MAX_FOLDERS:
                return 0
            name = rng.choice((f"Project {len(folders)}", f"Archive/{2020 + len(folders)}", f"Team-{len(folders)}"))
            if name in folders:
                return 0
            folders.append(name)
        typ, data = conn.create(_q(name))
        if typ != "OK" and b"exists" not in b" ".join(d for d in data if d).lower():
            raise imaplib.IMAP4.error(f"CREATE {name!r}: {data!r}")
        return 1


def _lmtp_send(lmtp: smtplib.LMTP, rcpt: str, raw: bytes) -> str:
    code, _reply = lmtp_send(lmtp, rcpt, raw)
    if code == 250:
        return "delivered"
    return "refused" if 500 <= code < 600 else "failed"
    try:
        code, reply = lmtp.data(raw)
    except smtplib.SMTPDataError as exc:
        code = exc.smtp_code
    if code == 250:
        return "delivered"
    return "refused" if 500 <= code < 600 else "failed"


def _drop(lmtp: smtplib.LMTP | None) -> None:
    if lmtp is not None:
        try:
            lmtp.close()
        except OSError:
            pass
    return None


def _ok(result: tuple, what: str) -> None:
    typ, data = result
    if typ != "OK":
        raise imaplib.IMAP4.error(f"{what}: {data!r}")


def _q(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _random_text(rng: random.Random, size: int) -> str:
    words = ("replication", "mailbox", "standby", "primary", "quarterly", "report", "meeting", "invoice",
             "the", "of", "and", "to", "budget", "server", "disaster", "recovery", "review", "draft")
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(words) for _ in range(10))
        out.append(line)
        n += len(line) + 2
    return "\r\n".join(out)


def _random_bytes(rng: random.Random, size: int) -> bytes:
    raw = rng.randbytes(size)
    b64 = base64.b64encode(raw)
    return b"\r\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
