#!/usr/bin/env python3
"""Fetch and append throughput: mailrepl's IMAP adapter against Python's ``imaplib``.

Not a test: it prints figures (nothing here asserts a speed). Both sides move the same
messages through the same server and account:

- append: ``imaplib.IMAP4.append``, one message per command, against ``ImapSession.append``
  with batches of 100 (one MULTIAPPEND each, LITERAL+; the replay engine's default batch);
- fetch: ``imaplib`` ``UID FETCH`` of ``(UID FLAGS INTERNALDATE BODY.PEEK[])`` in chunks of 200,
  one command at a time, against ``ImapSession.fetch`` (chunks of 200, two in flight).

Every run writes into a fresh folder and checks that both sides read back the same bytes.
Without ``--port`` it starts a private Dovecot (``tests.support.dovecot``, needs root).

    python tests/bench/bench_imap_client.py [--count 1000] [--runs 3]
    python tests/bench/bench_imap_client.py --host H --port P --user U --master M --password PW
"""
from __future__ import annotations

import argparse
import hashlib
import imaplib
import random
import statistics
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mailrepl.shared.adapters.base import AppendItem  # noqa: E402
from mailrepl.shared.adapters.imap import ImapAdapter, ImapEndpoint  # noqa: E402

DATE = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
APPEND_BATCH = 100
FETCH_CHUNK = 200
WORDS = ("replication", "mailbox", "standby", "primary", "cursor", "folder", "message", "gateway", "the", "a")


def make_messages(count: int, seed: int = 7) -> list[bytes]:
    """Deterministic text messages with a long-tailed size mix (median ~8 KB, some ~400 KB)."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        size = int(min(400_000, rnd.lognormvariate(9.0, 1.1)))
        lines = []
        total = 0
        while total < size:
            line = " ".join(rnd.choice(WORDS) for _ in range(12))
            lines.append(line)
            total += len(line) + 2
        head = (f"From: bench{i % 17}@example.org\r\nTo: user@example.org\r\nSubject: bench message {i}\r\n"
                f"Message-ID: <{i}.{seed}@bench.example.org>\r\nDate: Mon, 6 May 2024 07:08:09 +0000\r\n\r\n")
        out.append(head.encode() + "\r\n".join(lines).encode() + b"\r\n")
    return out


class Target:
    """Where to measure: a server and the credentials of a master user acting for ``user``."""

    def __init__(self, host: str, port: int, user: str, master: str, password: str) -> None:
        self.host, self.port, self.user, self.master, self.password = host, port, user, master, password

    def imaplib(self) -> imaplib.IMAP4:
        conn = imaplib.IMAP4(self.host, self.port, timeout=120)
        token = f"{self.user}\0{self.master}\0{self.password}".encode()
        conn.authenticate("PLAIN", lambda _challenge: token)
        return conn

    def session(self):
        endpoint = ImapEndpoint(self.host, self.port, "none", self.master, self.password, "sasl-plain", timeout=120)
        return ImapAdapter("bench", endpoint).open(self.user)


@contextmanager
def private_dovecot() -> Iterator[Target]:
    from tests.support.dovecot import DovecotServer

    server = DovecotServer("bench", ["bench"], mail_fsync="optimized")
    server.start()
    try:
        yield Target("127.0.0.1", server.imap_port, "bench", server.master_user, server.master_password)
    finally:
        server.cleanup()


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def append_imaplib(target: Target, folder: str, bodies: list[bytes]) -> int:
    conn = target.imaplib()
    try:
        conn.create(f'"{folder}"')
        date = imaplib.Time2Internaldate(DATE)
        for body in bodies:
            typ, data = conn.append(f'"{folder}"', "(\\Seen)", date, body)
            if typ != "OK":
                raise RuntimeError(f"imaplib append failed: {data}")
        return len(bodies)
    finally:
        conn.logout()


def append_mailrepl(target: Target, folder: str, bodies: list[bytes]) -> int:
    session = target.session()
    try:
        stored = 0
        for i in range(0, len(bodies), APPEND_BATCH):
            items = [AppendItem(b, frozenset({"\\Seen"}), DATE) for b in bodies[i : i + APPEND_BATCH]]
            stored += len(session.append(folder, items).uids)
        return stored
    finally:
        session.close()


def fetch_imaplib(target: Target, folder: str) -> list[str]:
    conn = target.imaplib()
    try:
        conn.select(f'"{folder}"', readonly=True)
        typ, data = conn.uid("SEARCH", None, "ALL")
        uids = data[0].split()
        digests = []
        for i in range(0, len(uids), FETCH_CHUNK):
            typ, data = conn.uid("FETCH", b",".join(uids[i : i + FETCH_CHUNK]).decode(),
                                 "(UID FLAGS INTERNALDATE BODY.PEEK[])")
            digests += [hashlib.sha256(part[1]).hexdigest() for part in data if isinstance(part, tuple)]
        return digests
    finally:
        conn.logout()


def fetch_mailrepl(target: Target, folder: str) -> list[str]:
    session = target.session()
    try:
        info = session.folder_info(folder)
        return [hashlib.sha256(m.body).hexdigest() for m in session.fetch(folder, range(1, info.uidnext))]
    finally:
        session.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="an existing server; without it a private Dovecot is started")
    parser.add_argument("--user", default="bench")
    parser.add_argument("--master", default="repl")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    bodies = make_messages(args.count)
    megabytes = sum(map(len, bodies)) / 1e6
    expected = sorted(hashlib.sha256(b).hexdigest() for b in bodies)
    print(f"{len(bodies)} messages, {megabytes:.1f} MB, {args.runs} runs (median)\n")

    def measure(target: Target) -> dict[str, list[tuple[float, float]]]:
        figures: dict[str, list[tuple[float, float]]] = {}
        stamp = int(time.time())
        for run in range(args.runs):
            for name, append, fetch in (("imaplib", append_imaplib, fetch_imaplib),
                                        ("mailrepl", append_mailrepl, fetch_mailrepl)):
                folder = f"bench-{name}-{stamp}-{run}"
                wall, cpu, stored = timed(lambda: append(target, folder, bodies))
                assert stored == len(bodies), f"{name} stored {stored}"
                figures.setdefault(f"append {name}", []).append((wall, cpu))
                wall, cpu, digests = timed(lambda: fetch(target, folder))
                assert sorted(digests) == expected, f"{name} read back different bytes"
                figures.setdefault(f"fetch {name}", []).append((wall, cpu))
        return figures

    if args.port:
        figures = measure(Target(args.host, args.port, args.user, args.master, args.password))
    else:
        with private_dovecot() as target:
            figures = measure(target)

    print("| what | msg/s | MB/s | wall s | client CPU s |")
    print("|---|---|---|---|---|")
    for what, samples in figures.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(f"| {what} | {len(bodies) / wall:,.0f} | {megabytes / wall:,.1f} | {wall:.2f} | {cpu:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
