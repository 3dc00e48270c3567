#!/usr/bin/env python3
"""History disk cost: bytes the recovery gateway keeps per day of a mailbox's changes.

Not a test: it prints figures (nothing here asserts a size).

A mailbox is seeded with ``--seed`` messages of the handbook's public corpus (the "realistic"
part first) and then lives ``--days`` days of ordinary use: each day ``--new`` new messages
(corpus bytes), ``--flags`` flag changes, ``--moves`` moves to an archive folder and
``--deletes`` expunges of older mail. The data path is the real one — capture, wire, receiver,
replay, history keeper — against in-memory mail servers, with the state store (SQLite) and the
blob store on disk. After each day the history is snapshotted and measured:

- changes: the applied changes kept (their stored JSON),
- snapshots: the compressed base snapshots,
- bodies: messages kept only for history (deleted on the primary, or superseded), whole size,
- on disk for those bodies: their skeletons (state store) and the blob-store parts only they hold
  (attachments no live message shares).

Printed: the totals after each day, and bytes of history per day of changes (mean over the days
after the seed) — what retention costs: multiply by ``retention_days``.

    python tests/bench/bench_history.py [--seed 300] [--days 7] [--new 60] [--flags 120] [--moves 20] [--deletes 40]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mailrepl.recovery.history import HistoryKeeper
from mailrepl.recovery.history_settings import HistorySettings
from mailrepl.shared.store.models import (
    IdMapEntry,
    InboxBody,
    InboxPart,
    InboxRow,
    Replica,
)
from sqlalchemy import func, select

from tests.support.mailcompare import corpus_files
from tests.unit.test_pipeline_memory import Pipeline


def history_only_bytes(p: Pipeline, rid: int) -> tuple[int, int]:
    """(skeleton bytes in the state store, blob-store bytes of parts) that only bodies kept for
    history refer to."""
    with p.dst.read() as s:
        live_bodies = select(IdMapEntry.sha256).where(IdMapEntry.replica_id == rid)
        waiting = select(InboxRow.sha256).where(InboxRow.state == "received", InboxRow.sha256.is_not(None))
        live_keys = set(s.scalars(select(InboxPart.key).where(InboxPart.sha256.in_(live_bodies))))
        live_keys |= set(s.scalars(select(InboxPart.key).where(InboxPart.sha256.in_(waiting))))
        all_keys = set(s.scalars(select(InboxPart.key)))
        skeletons = s.scalar(select(func.coalesce(func.sum(func.length(InboxBody.data)), 0)).where(
            InboxBody.sha256.not_in(live_bodies), InboxBody.sha256.not_in(waiting)))
    total = 0
    for key in all_keys - live_keys:
        path = p.blobs.root / key[:2] / key[2:4] / key
        if path.exists():
            total += path.stat().st_size
    return int(skeletons), total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=300)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--new", type=int, default=60)
    ap.add_argument("--flags", type=int, default=120)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--deletes", type=int, default=40)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    files = sorted(corpus_files(), key=lambda f: ("realistic" not in str(f), str(f)))
    need = args.seed + args.days * args.new
    if len(files) < need:
        raise SystemExit(f"the corpus has {len(files)} messages, {need} needed")
    rnd = random.Random(16)
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        p = Pipeline(Path(tmp), chunk=200)
        keeper = HistoryKeeper(p.dst, HistorySettings(retention_days=14, snapshot_every_changes=5000,
                                                      snapshot_every_hours=24))
        feed = iter(files)
        for _ in range(args.seed):
            p.primary.deliver("alice", next(feed).read_bytes())
        p.sync()
        with p.dst.read() as s:
            rid = s.scalar(select(Replica.id))
        keeper.snapshot(rid)
        rows = []

        def measure(day: int) -> dict:
            keeper.snapshot(rid)  # the day's base snapshot
            h = keeper.measure(rid)
            skeletons, parts = history_only_bytes(p, rid)
            row = {"day": day, "changes": h.changes, "change_bytes": h.change_bytes, "snapshots": h.snapshots,
                   "snapshot_bytes": h.snapshot_bytes, "history_only_message_bytes": h.body_bytes,
                   "history_only_skeleton_bytes": skeletons, "history_only_part_bytes": parts}
            row["total_on_disk"] = row["change_bytes"] + row["snapshot_bytes"] + skeletons + parts
            rows.append(row)
            return row

        base = measure(0)
        for day in range(1, args.days + 1):
            for _ in range(args.new):
                p.primary.deliver("alice", next(feed).read_bytes())
            box = p.primary.box("alice")
            inbox = sorted(box["INBOX"].msgs)
            for uid in rnd.sample(inbox, min(args.flags, len(inbox))):
                p.primary.set_flags("alice", "INBOX", uid, rnd.choice([{"\\Seen"}, {"\\Seen", "\\Flagged"}, set()]))
            p.sync()
            inbox = sorted(p.primary.box("alice")["INBOX"].msgs)
            for uid in inbox[: args.moves]:
                p.primary.move("alice", "INBOX", uid, "Archive")
            inbox = sorted(p.primary.box("alice")["INBOX"].msgs)
            p.primary.expunge("alice", "INBOX", inbox[: args.deletes])
            p.sync()
            p.assert_equal()
            measure(day)
        last = rows[-1]
        per_day = {k: (last[k] - base[k]) / args.days for k in
                   ("changes", "change_bytes", "snapshot_bytes", "history_only_message_bytes",
                    "history_only_skeleton_bytes", "history_only_part_bytes", "total_on_disk")}
        print(f"mailbox: {args.seed} corpus messages seeded; per day {args.new} new, {args.flags} flag changes, "
              f"{args.moves} moves, {args.deletes} deletes; {args.days} days")
        print(f"{'day':>4} {'changes':>8} {'change B':>10} {'snapshots':>9} {'snapshot B':>10} "
              f"{'hist-only msgs B':>16} {'skeletons B':>11} {'parts B':>9} {'on disk B':>10}")
        for r in rows:
            print(f"{r['day']:>4} {r['changes']:>8} {r['change_bytes']:>10} {r['snapshots']:>9} {r['snapshot_bytes']:>10} "
                  f"{r['history_only_message_bytes']:>16} {r['history_only_skeleton_bytes']:>11} "
                  f"{r['history_only_part_bytes']:>9} {r['total_on_disk']:>10}")
        print("per day of changes: " + ", ".join(f"{k} {v:,.0f}" for k, v in per_day.items()))
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "per_day": per_day, "args": vars(args)}, default=str,
                                            indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
