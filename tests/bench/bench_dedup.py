#!/usr/bin/env python3
"""Dedup and compression benchmark: raw bytes vs wire bytes, and seeding throughput with and without.

Not a test: it prints figures (nothing here asserts a speed or a ratio).

(a) generated: the handbook's corpus generator fills several mailboxes on the primary; 20 % of
    the attachments come from a shared pool, so the same files recur across users.
(b) realistic: the realistic part of the handbook's public corpus, stored in one mailbox with
    IMAP APPEND of the exact file bytes.

Each corpus is seeded twice into a fresh standby through both gateways: with content-addressed
parts (the default ``part_threshold``) and without (``part_threshold`` larger than any part, so
only whole identical messages are deduplicated). Printed per run: raw bytes (the bodies the
shipped changes refer to), bytes sent before compression, wire bytes, wire/raw, and seeding
throughput. The standby is compared with the primary after each run.

    python tests/bench/bench_dedup.py [--users 4] [--count 500] [--repeat 1] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mailrepl.shared.adapters.base import AppendItem  # noqa: E402
from mailrepl.shared.adapters.imap import ImapAdapter, ImapEndpoint  # noqa: E402
from mailrepl.shared.errors import MessageRejected  # noqa: E402
from tests.support.dovecot import DovecotServer  # noqa: E402
from tests.support.gateways import GatewayPair  # noqa: E402
from tests.bench.bench_seed import cpu_seconds  # noqa: E402
from tests.support.mailcompare import assert_same_mailbox, corpus_files  # noqa: E402

NO_PARTS = 1 << 40  # a part threshold no part reaches: whole messages only


def primary_adapter(primary: DovecotServer) -> ImapAdapter:
    """The primary reached through its master user, as the source gateway reaches it."""
    endpoint = ImapEndpoint(host="127.0.0.1", port=primary.imap_port, tls="none", service_user=primary.master_user,
                            service_password=primary.master_password, auth="sasl-plain")
    return ImapAdapter("primary", endpoint)


def harness_dir(arg: str | None) -> Path:
    path = Path(arg) if arg else Path(__file__).resolve().parents[3] / "shared" / "harness"
    if not (path / "make-corpus.py").is_file():
        raise SystemExit(f"bench_dedup: make-corpus.py not found in {path} (use --harness)")
    return path


def fill_generated(primary: DovecotServer, users: list[str], count: int, harness: Path) -> None:
    for i, user in enumerate(users):
        subprocess.run(
            [sys.executable, str(harness / "make-corpus.py"), "--user", user, "--password", primary.user_password,
             "--count", str(count), "--seed", str(100 + i), "--tag", f"d{i}", "--shared-frac", "0.2",
             "--lmtp-port", str(primary.lmtp_port), "--imap-port", str(primary.imap_port)],
            check=True, stdout=subprocess.DEVNULL,
        )


def fill_realistic(primary: DovecotServer, user: str) -> int:
    files = [p for p in corpus_files() if "/realistic/" in str(p)]
    session = primary_adapter(primary).open(user)
    date = datetime(2024, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    stored = 0
    try:
        for i in range(0, len(files), 100):
            items = [AppendItem(p.read_bytes(), frozenset(), date) for p in files[i : i + 100]]
            try:
                session.append("INBOX", items)
                stored += len(items)
            except MessageRejected:
                for item in items:
                    try:
                        session.append("INBOX", [item])
                        stored += 1
                    except MessageRejected:
                        pass
    finally:
        session.close()
    return stored


def information_floor(primary: DovecotServer, users: list[str]) -> tuple[int, int]:
    """(raw bytes, bytes no lossless scheme can avoid sending): every distinct non-text part,
    base64-decoded and zstd-compressed, once. The generator's attachments are random bytes, so
    no dedup or compression can put fewer than these bytes on the wire."""
    import email
    import hashlib
    from email import policy

    import zstandard

    adapter = primary_adapter(primary)
    cctx = zstandard.ZstdCompressor(level=3)
    raw, distinct = 0, {}
    for user in users:
        session = adapter.open(user)
        try:
            for folder in session.list_folders():
                uids = [m.uid for m in session.changes_since(folder.name, None).new]
                for msg in session.fetch(folder.name, uids):
                    raw += len(msg.body)
                    for part in email.message_from_bytes(msg.body, policy=policy.compat32).walk():
                        if part.is_multipart() or part.get_content_maintype() == "text":
                            continue
                        data = part.get_payload(decode=True) or b""
                        key = hashlib.sha256(data).digest()
                        if key not in distinct:
                            distinct[key] = min(len(data), len(cctx.compress(data)))
        finally:
            session.close()
    return raw, sum(distinct.values())


def seed(primary: DovecotServer, users: list[str], work: Path, label: str, part_threshold: int | None) -> dict:
    standby = DovecotServer("standby", users)
    standby.start()
    run = work / label
    run.mkdir()
    pair = GatewayPair(run, primary, standby, users=users, source_state=f"sqlite:///{run}/s.sqlite",
                       recovery_state=f"sqlite:///{run}/r.sqlite", part_threshold=part_threshold)
    try:
        pair.start()
        procs = {g.role: g.proc.pid for g in (pair.source, pair.recovery)}
        cpu0 = {role: cpu_seconds(pid) for role, pid in procs.items()}
        t0 = time.monotonic()
        pair.protect(*users)
        st = pair.wait_synced(users, timeout=1800, settle=0.5)
        secs = time.monotonic() - t0
        cpu = {role: cpu_seconds(pid) - cpu0[role] for role, pid in procs.items()}
        for u in users:
            assert_same_mailbox(primary, standby, u)
        raw = sum(m["bytes"]["shipped_raw"] for m in st.values() if m["address"] in users)
        payload = sum(m["bytes"]["sent_before_compression"] for m in st.values() if m["address"] in users)
        wire = pair.wire_bytes()
        msgs = sum(m["last_captured_seq"] for m in st.values() if m["address"] in users)
        return dict(label=label, seconds=secs, raw=raw, payload=payload, wire=wire, changes=msgs,
                    parts_stored=len(pair.blob_files()), cpu=cpu)
    finally:
        pair.stop()
        standby.stop()
        standby.cleanup()


def show(corpus: str, messages: int, r: dict) -> None:
    print(f"{corpus:10s} {r['label']:10s} raw {r['raw'] / 1e6:8.1f} MB  sent {r['payload'] / 1e6:8.1f} MB  "
          f"wire {r['wire'] / 1e6:8.1f} MB  wire/raw {r['wire'] / r['raw']:.3f}  "
          f"{messages / r['seconds']:6.0f} msg/s  {r['raw'] / 1e6 / r['seconds']:6.1f} MB/s raw  "
          f"parts at DR {r['parts_stored']}  CPU source {r['cpu']['source']:.2f} s, "
          f"recovery {r['cpu']['recovery']:.2f} s", flush=True)


def runs(repeat: int):
    """Both modes ``repeat`` times, in alternating order (the machine's load drifts)."""
    modes = [("parts", None), ("no-parts", NO_PARTS)]
    for rnd in range(repeat):
        for mode in (modes if rnd % 2 == 0 else modes[::-1]):
            yield rnd, mode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--count", type=int, default=500, help="messages per user in the generated corpus")
    ap.add_argument("--harness", help="directory holding make-corpus.py (default: ../shared/harness)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each mode, in alternating order")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    harness = harness_dir(a.harness)
    work = Path(tempfile.mkdtemp(prefix="mailrepl-bench-dedup-"))
    figures: dict = {}
    try:
        users = [f"user{i}" for i in range(a.users)]
        primary = DovecotServer("primary", users)
        primary.start()
        try:
            fill_generated(primary, users, a.count, harness)
            n = a.users * a.count
            raw, floor = information_floor(primary, users)
            figures["generated_floor"] = dict(raw=raw, floor=floor)
            print(f"generated  floor: {floor / 1e6:.1f} MB of distinct incompressible attachment bytes in "
                  f"{raw / 1e6:.1f} MB = {floor / raw:.3f} x raw, the least any lossless scheme can send", flush=True)
            for rnd, (label, threshold) in runs(a.repeat):
                r = seed(primary, users, work, f"gen-{label}-{rnd}", threshold)
                r["label"] = label
                figures.setdefault(f"generated_{label}", []).append(r)
                show("generated", n, r)
        finally:
            primary.stop()
            primary.cleanup()

        primary = DovecotServer("primary", ["alice"])
        primary.start()
        try:
            n = fill_realistic(primary, "alice")
            for rnd, (label, threshold) in runs(a.repeat):
                r = seed(primary, ["alice"], work, f"real-{label}-{rnd}", threshold)
                r["label"] = label
                figures.setdefault(f"realistic_{label}", []).append(r)
                show("realistic", n, r)
        finally:
            primary.stop()
            primary.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if a.json:
            Path(a.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
