"""What the WAN benchmark (``bench_wan.py``) shares between its modes: the two corpora, resetting
the DR site between runs, waiting for the standby, sampling the link.

Corpora, each in a mailbox of its own on the primary:

- ``gen``: the handbook's deterministic generator, exactly as ``bench_seed.py`` fills its mailbox
  (``make-corpus.py --seed 1 --attach-kb 140``, LMTP delivery, flags set afterwards over IMAP),
  ``count`` messages (2,000: about 80 MB);
- ``real``: the realistic part of the handbook's public corpus (SpamAssassin mailing-list and
  personal mail and spam of 2002-2003, ``realistic/spamassassin/<group>/*.eml``, 3,125 files), of
  which ``count`` files are taken: every ``hard_ham`` file (125), every ``spam`` file (500), then
  ``easy_ham`` in name order. Each is stored with IMAP APPEND of the file's exact bytes (the
  mbox ``From`` line many begin with included), no flags, internal date 2024-02-03 04:05:06 UTC,
  as ``bench_dedup.py`` stores it. The set is larger than 2,000, so no file is stored twice;
  above 3,125 the files are taken again, each copy with its ``Message-ID`` header made distinct
  (``<copyN.`` prefixed to the identifier; a header added when a file has none), copy 1 on.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from mailrepl.shared.adapters.base import AppendItem
from mailrepl.shared.errors import MessageRejected
from tests.bench.bench_dedup import primary_adapter
from tests.bench.timeline import progress_row
from tests.support.dovecot import mailbox_size as dovecot_mailbox_size
from tests.support.mailcompare import corpus_files
from tests.support.two_site import TwoSiteRig

__all__ = ["LinkSampler", "cpu_seconds", "fill_generated", "fill_public", "fill_public_into", "harness_dir", "mailbox_size",
           "public_selection", "reset_mailrepl", "synced", "wait_synced"]

REPO = Path(__file__).resolve().parents[2]
PUBLIC_GROUPS = ("hard_ham", "spam", "easy_ham")
PUBLIC_DATE = datetime(2024, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
_MESSAGE_ID = re.compile(rb"(?im)^(Message-ID:[ \t]*<)")
POLL = 0.1  # seconds between status requests


def harness_dir(arg: str | None) -> Path:
    path = Path(arg) if arg else REPO.parent / "shared" / "harness"
    if not (path / "make-corpus.py").is_file():
        raise SystemExit(f"bench_wan: make-corpus.py not found in {path} (use --harness)")
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fill_generated(rig: TwoSiteRig, user: str, count: int, harness: Path) -> None:
    primary = rig.primary
    subprocess.run(
        [sys.executable, str(harness / "make-corpus.py"), "--user", user, "--password", primary.user_password,
         "--count", str(count), "--seed", "1", "--attach-kb", "140",
         "--lmtp-port", str(primary.lmtp_port), "--imap-port", str(primary.imap_port)],
        check=True, stdout=subprocess.DEVNULL,
    )


def public_selection(count: int) -> list[tuple[Path, int]]:
    """``count`` (file, copy number) pairs in the order described in the module doc."""
    files = [p for p in corpus_files() if "/realistic/" in str(p)]
    by_group = {g: sorted(p for p in files if p.parent.name == g) for g in PUBLIC_GROUPS}
    ordered = [p for g in PUBLIC_GROUPS for p in by_group[g]]
    if not ordered:
        raise SystemExit("bench_wan: no realistic files in the public corpus")
    return [(ordered[i % len(ordered)], i // len(ordered)) for i in range(count)]


def _copy_bytes(raw: bytes, copy: int) -> bytes:
    if copy == 0:
        return raw
    if _MESSAGE_ID.search(raw):
        return _MESSAGE_ID.sub(lambda m: m.group(1) + f"copy{copy}.".encode(), raw, count=1)
    return f"Message-ID: <copy{copy}.noid@bench.example.org>\r\n".encode() + raw


def fill_public(rig: TwoSiteRig, user: str, count: int) -> tuple[int, int]:
    """Store the selection in ``user``'s INBOX; (stored, refused by the primary)."""
    return fill_public_into(rig.primary, user, count)


def fill_public_into(primary, user: str, count: int) -> tuple[int, int]:
    """Store the selection in ``user``'s INBOX on the Dovecot ``primary``; (stored, refused)."""
    items = [AppendItem(_copy_bytes(path.read_bytes(), copy), frozenset(), PUBLIC_DATE)
             for path, copy in public_selection(count)]
    session = primary_adapter(primary).open(user)
    stored = refused = 0
    try:
        for i in range(0, len(items), 100):
            chunk = items[i:i + 100]
            try:
                session.append("INBOX", chunk)
                stored += len(chunk)
            except MessageRejected:
                for item in chunk:
                    try:
                        session.append("INBOX", [item])
                        stored += 1
                    except MessageRejected:
                        refused += 1
    finally:
        session.close()
    return stored, refused


def mailbox_size(rig: TwoSiteRig, user: str) -> tuple[int, int]:
    """(messages, bytes) of a user's whole mailbox on the primary (RFC822.SIZE)."""
    return dovecot_mailbox_size(rig.primary, user)


def reset_mailrepl(rig: TwoSiteRig) -> None:
    """Both gateways stopped, their state and the DR blob store removed, the standby emptied of
    every user, both gateways started again and the source's pre-flight check of the primary
    run: the next protect seeds from nothing."""
    rig.pair.stop()
    for pattern in ("source.sqlite*", "recovery.sqlite*"):
        for path in rig.tmp.glob(pattern):
            path.unlink()
    shutil.rmtree(rig.tmp / "blobs", ignore_errors=True)
    for user in rig.users:
        rig.standby.wipe_user(user)
    rig.pair.start()
    # the pre-flight check runs once per server, at the first protection after start: part of
    # start-up (untimed), not of a seed
    rig.pair.preflight("primary", rig.users[0])


def synced(st: dict, min_seq: int = 1) -> bool:
    return (st.get("phase") == "replicating" and st.get("copy_queue") == 0 and st.get("replay_queue") == 0
            and st.get("last_applied_seq") == st.get("last_captured_seq") and (st.get("last_captured_seq") or 0) >= min_seq)


def wait_synced(rig: TwoSiteRig, user: str, timeout: float, timeline: list | None = None) -> dict:
    """Poll the source gateway until ``user`` is seeded and applied (bench_seed's condition);
    ``timeline`` collects (seconds, captured, copy queue, replay queue, applied) at each poll."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        try:
            st = rig.pair.status().get(user, {})
        except Exception:  # the API may be busy for a moment; keep polling
            st = {}
        if timeline is not None and st:
            timeline.append(progress_row(time.monotonic() - t0, st))
        if synced(st):
            return st
        time.sleep(POLL)
    raise SystemExit(f"bench_wan: {user} not in sync after {timeout:g} s: {rig.pair.status().get(user)}")


class LinkSampler:
    """The link's interface counters every ``interval`` s in a thread: ``samples`` holds
    ``(time.monotonic(), bytes to DR, bytes from DR)``."""

    def __init__(self, rig: TwoSiteRig, interval: float = 1.0) -> None:
        self.rig, self.interval = rig, interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-sampler", daemon=True)

    def _sample(self) -> None:
        crossed = self.rig.bytes_crossed()
        self.samples.append((time.monotonic(), crossed["to_ns"], crossed["from_ns"]))

    def _run(self) -> None:
        self._sample()
        next_due = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, next_due - time.monotonic())):
            self._sample()
            next_due += self.interval

    def __enter__(self) -> LinkSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sample()
