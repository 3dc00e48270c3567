"""Build the next batch from the outbox, sending each body and each part across the WAN once.

1. Per mailbox (most behind first; least behind first with ``live_first``), the next contiguous range of unacknowledged changes, up to
   ``max_changes`` in all.
2. Ask the recovery gateway which of the bodies these changes refer to it lacks (one round trip).
   Bodies it holds — the same message delivered to many mailboxes, a message that came back —
   do not travel at all.
3. Trim the ranges so that the bodies that must travel stay within ``max_bytes``; split each into
   its skeleton and parts (``mailrepl.shared.content.mime_split``).
4. Ask which of those parts it lacks (a second round trip): an attachment it already holds, from
   any message, mailbox or server, does not travel either. Parts already in a batch in flight
   count as held. A body the recovery gateway could not reassemble to its hash is sent
   unsplit (``send_whole``) from then on.

While the recovery gateway lacked nearly every body asked about last time (a seed: at least
``ONE_QUESTION_FROM`` of them; so too before its first answer), both questions are asked at
once instead: the ranges are trimmed as if every body had to travel (the bound holds), those
bodies are split, and one round trip asks for bodies and parts together; what it holds is then
left out, bodies and the parts only they needed. Across a long link that saves a round trip per
batch, which on a busy link waits behind the batches in flight. Where it held more (mail
delivered to many mailboxes), the two questions come back: a batch is then filled by what
really travels.

Accounting per mailbox: ``raw`` (the bodies its changes refer to, as captured) and ``payload``
(the skeleton and part bytes it put into the batch, before compression); the shipper adds the
wire bytes after compression.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Collection, Mapping, Sequence

from sqlalchemy import select

from mailrepl.shared.errors import StoreError
from mailrepl.shared.content.mime_split import BLOB_THRESHOLD, split_message, whole_skeleton
from mailrepl.shared.model import Change, SeqRange
from mailrepl.shared.store import Store
from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.models import Mailbox, OutboxBody, OutboxRow
from mailrepl.shared.protocol.wire import Batch, Segment

__all__ = ["BatchBuilder", "Built", "Held"]

_ROW, _BODY = OutboxRow.__table__, OutboxBody.__table__  # Core: rows are read as tuples

Held = Callable[[Sequence[str], Sequence[str]], tuple[list[str], list[str]]]  # -> missing (bodies, parts)
ONE_QUESTION_FROM = 0.9  # share of the bodies asked about that the peer lacked, last time


@dataclass
class Built:
    batch: Batch
    raw: dict[tuple[str, str], int] = field(default_factory=dict)  # per mailbox
    payload: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def raw_total(self) -> int:
        return sum(self.raw.values())

    @property
    def payload_total(self) -> int:
        return sum(self.payload.values())


@dataclass
class _Range:
    mbx: tuple[int, str, str]  # id, server, address
    rows: list[tuple[int, str, str | None, int, datetime | None]]  # seq, change, sha256, size, created


class BatchBuilder:
    def __init__(self, store: Store, source_id: str, held: Held, *, max_changes: int, max_bytes: int,
                 part_threshold: int = BLOB_THRESHOLD, where=None) -> None:
        self.store = store
        self.where = where  # optional SQL condition on Mailbox: which mailboxes ship (site state)
        self.source_id = source_id
        self.held = held  # asks the recovery gateway; must raise on failure, never guess
        self.max_changes = max_changes
        self.max_bytes = max_bytes
        # least behind first (live changes ahead of a seed: the link is capped), else most behind first;
        # then a batch that starts with live mailboxes (at most ``live_backlog`` changes behind) holds
        # only those, so it does not wait behind a throttled seed
        self.live_first = False
        self.live_backlog = 0
        self.part_threshold = part_threshold
        # bodies the recovery gateway could not reassemble: sent unsplit from now on
        self.send_whole: set[str] = set()
        # of the bodies last asked about, the share the peer lacked; before the first answer it is
        # taken to lack them all (a gateway starts with a seed or a backlog more often than not): a
        # wrong guess costs one batch trimmed as if every body travelled, and the answer corrects it
        self.lacked_share = 1.0

    def build(self, after: Mapping[tuple[str, str], int] | None = None,
              in_flight: Collection[str] = frozenset()) -> Built | None:
        """The next batch, or None when nothing waits.

        Each mailbox's range starts after its acknowledged sequence number, or after
        ``after[(server, address)]`` when that is further (a batch already in flight).
        """
        ranges = self._candidates(after or {})
        if not ranges:
            return None
        shas = list(dict.fromkeys(r[2] for rng in ranges for r in rng.rows if r[2]))
        one_question = bool(shas) and self.lacked_share >= ONE_QUESTION_FROM
        if one_question:
            ranges = self._trim(ranges, set(shas))  # as if every body travels: the bound holds
            shas = list(dict.fromkeys(r[2] for rng in ranges for r in rng.rows if r[2]))
            lacking = set(shas)  # for now: the answer below tells
        else:
            lacking = set(self.held(shas, [])[0]) if shas else set()
            self._learn(len(lacking), len(shas))
            ranges = self._trim(ranges, lacking)
        built = Built(Batch(self.source_id, ()))
        split: dict[str, tuple[tuple[str, str], bytes, list[str]]] = {}  # sha -> owner, skeleton, part keys
        blobs: dict[str, bytes] = {}  # each part once, however many bodies hold it
        with self.store.read() as s:
            for rng in ranges:
                who = (rng.mbx[1], rng.mbx[2])
                built.raw[who] = built.raw.get(who, 0) + sum(r[3] for r in rng.rows if r[2])
                need = [r[2] for r in rng.rows if r[2] in lacking and r[2] not in split]
                for sha, data in self._bodies(s, dict.fromkeys(need), rng.mbx[2]):
                    if sha in self.send_whole:
                        split[sha] = (who, whole_skeleton(data), [])
                        continue
                    pieces = split_message(data, threshold=self.part_threshold)
                    split[sha] = (who, pieces.skeleton, [key for key, _ in pieces.blobs])
                    for key, body in pieces.blobs:
                        blobs.setdefault(key, body)
        candidates = [k for k in blobs if k not in in_flight]
        if one_question:
            lacked, lacked_parts = self.held(shas, candidates)
            lacking = set(lacked)
            self._learn(len(lacking), len(shas))
            split = {sha: v for sha, v in split.items() if sha in lacking}  # held: nothing of it travels
            missing_parts = set(lacked_parts)
        else:
            missing_parts = set(self.held([], candidates)[1]) if candidates else set()
        messages: dict[str, bytes] = {}
        parts: dict[str, bytes] = {}
        owner: dict[str, tuple[str, str]] = {}  # body / part -> first mailbox that needed it
        for sha, (who, skeleton, keys) in split.items():
            messages[sha] = skeleton
            owner[sha] = who
            for key in keys:
                if key in missing_parts and key not in parts:
                    parts[key] = blobs[key]
                    owner[key] = who
        del blobs
        for sha, skeleton in messages.items():
            built.payload[owner[sha]] = built.payload.get(owner[sha], 0) + len(skeleton)
        for key, body in parts.items():
            built.payload[owner[key]] = built.payload.get(owner[key], 0) + len(body)
        segments = tuple(
            Segment(
                server=rng.mbx[1], address=rng.mbx[2],
                range=SeqRange(rng.rows[0][0], rng.rows[-1][0]),
                changes=tuple(Change.from_dict(json.loads(r[1])) for r in rng.rows),
                captured=tuple(r[4].isoformat() if r[4] is not None else "" for r in rng.rows),
            )
            for rng in ranges
        )
        built.batch = Batch(source=self.source_id, segments=segments, messages=messages, parts=parts)
        return built

    # ------------------------------------------------------------------ steps

    def _learn(self, lacked: int, asked: int) -> None:
        if asked:
            self.lacked_share = lacked / asked

    def _candidates(self, after: Mapping[tuple[str, str], int]) -> list[_Range]:
        budget = self.max_changes
        out: list[_Range] = []
        with self.store.read() as s:
            mailboxes = list(s.execute(
                select(Mailbox.id, Mailbox.server, Mailbox.address, Mailbox.acked_seq, Mailbox.last_seq)
                .where(Mailbox.last_seq > Mailbox.acked_seq, Mailbox.ship_error.is_(None),
                       *(() if self.where is None else (self.where,)))
                .order_by(*((Mailbox.last_seq - Mailbox.acked_seq,) if self.live_first
                            else (Mailbox.acked_seq - Mailbox.last_seq,)), Mailbox.id)
            ))
            live_only = False
            for mid, server, address, acked, last in mailboxes:
                if budget <= 0:
                    break
                start = max(acked, after.get((server, address), 0))
                if start >= last:
                    continue
                if self.live_first:
                    live = last - acked <= self.live_backlog
                    if not out:
                        live_only = live
                    elif live_only and not live:
                        break
                rows = list(s.execute(
                    select(_ROW.c.seq, _ROW.c.change, _ROW.c.sha256, _ROW.c.size, _ROW.c.created_at)
                    .where(_ROW.c.mailbox_id == mid, _ROW.c.seq > start)
                    .order_by(_ROW.c.seq)
                    .limit(budget)
                ))
                picked = []
                for row in rows:
                    if picked and row[0] != picked[-1][0] + 1:
                        break
                    picked.append(tuple(row))
                if not picked or picked[0][0] != start + 1:
                    raise StoreError(f"outbox of {server}/{address} does not continue at {start + 1}", retryable=False)
                budget -= len(picked)
                out.append(_Range((mid, server, address), picked))
        return out

    def _trim(self, ranges: list[_Range], lacking: set[str]) -> list[_Range]:
        """Cut the ranges where the bodies that must travel would exceed ``max_bytes``."""
        budget = self.max_bytes
        counted: set[str] = set()
        out: list[_Range] = []
        for rng in ranges:
            keep = []
            for row in rng.rows:
                sha, size = row[2], row[3]
                cost = size if sha in lacking and sha not in counted else 0
                if cost and cost > budget and (keep or out):
                    break
                keep.append(row)
                if cost:
                    counted.add(sha)
                    budget -= cost
            if keep:
                out.append(_Range(rng.mbx, keep))
            if len(keep) < len(rng.rows) or budget <= 0:
                break
        return out

    def _bodies(self, s, shas: Mapping[str, None], address: str):
        """``(sha, plaintext)`` of the bodies ``shas``: from their rows, or read from the spool's
        segments (in segment and offset order, each segment opened once)."""
        wanted = list(shas)
        found = 0
        sealer, spool = self.store.sealer, self.store.spool
        for part in chunks(wanted, 100):  # bodies are large: few per query
            spooled = []
            for sha, data, segment, at, length in s.execute(
                    select(_BODY.c.sha256, _BODY.c.data, _BODY.c.segment, _BODY.c.seg_offset, _BODY.c.seg_length)
                    .where(_BODY.c.sha256.in_(part))):
                found += 1
                if segment is None:
                    yield sha, sealer.open(data, sha)
                else:
                    spooled.append((sha, segment, at, length))
            if spooled:
                if spool is None:
                    raise StoreError(f"an outbox body of {address} is in spool segment {spooled[0][1]}, but this "
                                     "gateway has no outbox spool configured (outbox_dir)", retryable=False)
                spooled.sort(key=lambda p: (p[1], p[2]))
                yield from spool.read(spooled)
        if found != len(wanted):
            raise StoreError(f"an outbox body of {address} is missing", retryable=False)
