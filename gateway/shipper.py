"""Shipper: outbox -> batches -> the recovery gateway, with retry and exponential back-off.

A batch holds, per mailbox, the next contiguous range of unacknowledged changes (from
``acked_seq + 1``) plus the bodies they refer to. Outbox rows stay until the peer reports them
*applied*, so a batch is never lost: not acknowledged -> sent again (the receiver treats the
same sequence number with the same content as a no-op).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Mapping

import httpx
from sqlalchemy import delete, func, select

from shared.errors import StoreError, TransportError, WireError
from shared.model import Change, SeqRange
from shared.store import Store
from shared.store.models import Mailbox, OutboxBody, OutboxRow
from shared.wire import MEDIA_TYPE, Ack, Batch, Segment, encode_batch

__all__ = ["Shipper", "ShipStats"]

log = logging.getLogger("mailrepl.shipper")


class ShipStats:
    def __init__(self) -> None:
        self.batches = 0
        self.changes = 0
        self.wire_bytes = 0
        self.raw_bytes = 0


class Shipper:
    def __init__(
        self,
        store: Store,
        source_id: str,
        client: httpx.Client,
        *,
        token: str,
        max_changes: int = 1000,
        max_bytes: int = 32 * 1024 * 1024,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        body_lock: threading.Lock | None = None,
    ) -> None:
        self.store = store
        self.source_id = source_id
        self.client = client
        self.token = token
        self.max_changes = max_changes
        self.max_bytes = max_bytes
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.body_lock = body_lock or threading.Lock()
        self.stats = ShipStats()
        self.last_error: str | None = None
        self.wake_event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shipper-prepare")

    # ------------------------------------------------------------------ building

    def build_batch(self, after: Mapping[tuple[str, str], int] | None = None) -> tuple[Batch, int] | None:
        """The next batch and its raw size, or None when nothing waits.

        Each mailbox's segment starts after its acknowledged sequence number, or after
        ``after[(server, address)]`` when that is further (a batch already in flight).
        """
        after = after or {}
        segments: list[Segment] = []
        blobs: dict[str, bytes] = {}
        budget_changes, budget_bytes, raw = self.max_changes, self.max_bytes, 0
        with self.store.read() as s:
            mailboxes = list(
                s.scalars(
                    select(Mailbox)
                    .where(Mailbox.last_seq > Mailbox.acked_seq, Mailbox.ship_error.is_(None))
                    .order_by(Mailbox.acked_seq - Mailbox.last_seq, Mailbox.id)
                )
            )
            for mbx in mailboxes:
                if budget_changes <= 0 or budget_bytes <= 0:
                    break
                start = max(mbx.acked_seq, after.get((mbx.server, mbx.address), 0))
                if start >= mbx.last_seq:
                    continue
                rows = list(
                    s.execute(
                        select(OutboxRow.seq, OutboxRow.change, OutboxRow.sha256, OutboxRow.size, OutboxRow.created_at)
                        .where(OutboxRow.mailbox_id == mbx.id, OutboxRow.seq > start)
                        .order_by(OutboxRow.seq)
                        .limit(budget_changes)
                    )
                )
                picked = []
                for seq, text, sha, size, created in rows:
                    if picked and (seq != picked[-1][0] + 1 or size > budget_bytes):
                        break
                    picked.append((seq, text, sha, size, created))
                    budget_bytes -= size
                if not picked or picked[0][0] != start + 1:
                    log.error("outbox of %s/%s does not continue at %d", mbx.server, mbx.address, start + 1)
                    continue
                wanted = sorted({sha for _, _, sha, _, _ in picked if sha and sha not in blobs})
                for i in range(0, len(wanted), 500):
                    for sha, data in s.execute(
                        select(OutboxBody.sha256, OutboxBody.data).where(OutboxBody.sha256.in_(wanted[i : i + 500]))
                    ):
                        blobs[sha] = data
                        raw += len(data)
                missing = [sha for sha in wanted if sha not in blobs]
                if missing:
                    raise StoreError(f"outbox body {missing[0][:16]}… of {mbx.address} is missing", retryable=False)
                budget_changes -= len(picked)
                segments.append(
                    Segment(
                        server=mbx.server,
                        address=mbx.address,
                        range=SeqRange(picked[0][0], picked[-1][0]),
                        changes=tuple(Change.from_dict(json.loads(t)) for _, t, _, _, _ in picked),
                        captured=tuple(_iso(c) for *_, c in picked),
                    )
                )
        if not segments:
            return None
        return Batch(source=self.source_id, segments=tuple(segments), blobs=blobs), raw

    # ------------------------------------------------------------------ sending

    def ship_once(self) -> bool:
        """Send one batch and record its acknowledgement. True if a batch was sent."""
        built = self.build_batch()
        if built is None:
            return False
        batch, raw = built
        data = encode_batch(batch)
        ack = self._post(data)
        self._account(batch, raw, data)
        self._record(ack)
        return True

    def ship_pipelined(self) -> int:
        """Send batches until the outbox is drained; returns how many were sent.

        The next batch is read and compressed while the current one is in flight (both release
        the GIL), so the link and the peer are kept busy. Any failure or any answer other than
        "ok" ends the run: the next run starts again from what the peer acknowledged.
        """
        sent = 0
        upto: dict[tuple[str, str], int] = {}
        pending = self._prepare(upto)
        while pending is not None and not self._stop.is_set():
            batch, raw, data = pending
            for seg in batch.segments:
                upto[(seg.server, seg.address)] = seg.range.last
            ahead = self._ahead.submit(self._prepare, dict(upto))
            try:
                ack = self._post(data)
                self._account(batch, raw, data)
                self._record(ack)
            finally:
                try:
                    pending = ahead.result()
                except Exception as exc:  # noqa: BLE001 - built again from the store next run
                    log.warning("preparing the next batch failed: %s", exc)
                    pending = None
            sent += 1
            if any(res.status != "ok" for res in ack.results):
                break
        return sent

    def _prepare(self, after: Mapping[tuple[str, str], int]) -> tuple[Batch, int, bytes] | None:
        built = self.build_batch(after)
        if built is None:
            return None
        batch, raw = built
        return batch, raw, encode_batch(batch)

    def _account(self, batch: Batch, raw: int, data: bytes) -> None:
        self.stats.batches += 1
        self.stats.changes += sum(len(seg.range) for seg in batch.segments)
        self.stats.wire_bytes += len(data)
        self.stats.raw_bytes += raw

    def _post(self, data: bytes) -> Ack:
        try:
            r = self.client.post(
                "/api/v1/ingest/batches",
                content=data,
                headers={"Content-Type": MEDIA_TYPE, "Authorization": f"Bearer {self.token}"},
            )
        except httpx.HTTPError as exc:
            raise TransportError(f"recovery gateway unreachable: {exc.__class__.__name__}: {exc}") from exc
        if r.status_code >= 500 or r.status_code == 429:
            raise TransportError(f"recovery gateway answered {r.status_code}: {r.text[:200]}")
        if r.status_code != 200:
            raise TransportError(
                f"recovery gateway refused the batch ({r.status_code}): {_detail(r)}", retryable=True, back_off=5.0
            )
        try:
            return Ack.from_json(r.json())
        except ValueError as exc:
            raise WireError(f"unreadable acknowledgement: {exc}") from exc

    def poll_progress(self) -> None:
        """Ask the peer how far it has applied (acks only come with batches)."""
        try:
            r = self.client.get(
                "/api/v1/ingest/progress",
                params={"source": self.source_id},
                headers={"Authorization": f"Bearer {self.token}"},
            )
        except httpx.HTTPError as exc:
            raise TransportError(f"recovery gateway unreachable: {exc.__class__.__name__}: {exc}") from exc
        if r.status_code != 200:
            raise TransportError(f"recovery gateway answered {r.status_code} to a progress query: {_detail(r)}")
        self._record(Ack.from_json(r.json()))

    def _record(self, ack: Ack) -> None:
        released: set[str] = set()
        with self.body_lock, self.store.tx() as s:
            for res in ack.results:
                mbx = s.scalar(select(Mailbox).where(Mailbox.server == res.server, Mailbox.address == res.address))
                if mbx is None:
                    continue
                if res.status == "conflict":
                    mbx.ship_error = f"recovery gateway reports a conflict: {res.detail}"
                    log.error("%s/%s: %s", res.server, res.address, mbx.ship_error)
                elif res.status == "gap":
                    resend = res.resend_from or 1
                    if resend <= mbx.applied_seq:
                        mbx.ship_error = (
                            f"recovery gateway lost changes from {resend} on, which were already applied and "
                            "removed here; protect the mailbox again to re-seed"
                        )
                    else:
                        mbx.acked_seq = min(mbx.acked_seq, resend - 1)
                elif res.status == "error":
                    mbx.ship_error = f"recovery gateway: {res.detail}"
                if res.status == "ok":
                    mbx.acked_seq = max(mbx.acked_seq, min(res.acked, mbx.last_seq))
                if res.applied > mbx.applied_seq:
                    mbx.applied_seq = min(res.applied, mbx.last_seq)
                    done = (OutboxRow.mailbox_id == mbx.id) & (OutboxRow.seq <= mbx.applied_seq)
                    released.update(s.scalars(select(OutboxRow.sha256).where(done, OutboxRow.sha256.is_not(None))))
                    s.execute(delete(OutboxRow).where(done))
                mbx.rejected = json.dumps(list(res.rejected)) if res.rejected else mbx.rejected
            s.flush()
            # bodies of the removed rows that no remaining row refers to (same message elsewhere)
            gone = sorted(released)
            for i in range(0, len(gone), 500):
                part = gone[i : i + 500]
                used = select(OutboxRow.sha256).where(OutboxRow.sha256.in_(part))
                s.execute(delete(OutboxBody).where(OutboxBody.sha256.in_(part), OutboxBody.sha256.not_in(used)))

    # ------------------------------------------------------------------ loop

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shipper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake_event.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._ahead.shutdown(wait=False, cancel_futures=True)

    def _pending_apply(self) -> bool:
        with self.store.read() as s:
            return bool(s.scalar(select(func.count()).select_from(Mailbox).where(Mailbox.applied_seq < Mailbox.acked_seq)))

    def _loop(self) -> None:
        delay = self.retry_initial
        last_poll = 0.0
        while not self._stop.is_set():
            try:
                sent = self.ship_pipelined() > 0
                if not sent and self._pending_apply() and time.monotonic() - last_poll > 0.5:
                    self.poll_progress()
                    last_poll = time.monotonic()
                self.last_error = None
                delay = self.retry_initial
                if sent:
                    continue
                self.wake_event.wait(0.5)
                self.wake_event.clear()
            except Exception as exc:  # noqa: BLE001 - kept, retried with back-off, never dropped
                self.last_error = str(exc)
                log.warning("shipping failed: %s (retry in %.1fs)", exc, delay)
                self._stop.wait(max(delay, getattr(exc, "back_off", 0.0)))
                delay = min(self.retry_max, delay * 2)


def _iso(dt: datetime | None) -> str:
    return dt.isoformat() if dt is not None else ""


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail"))
    except ValueError:
        return r.text[:200]
