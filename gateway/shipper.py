"""Shipper: outbox -> batches -> the recovery gateway, with retry and exponential back-off.

A batch holds, per mailbox, the next contiguous range of unacknowledged changes (from
``acked_seq + 1``) plus the bodies they refer to. Outbox rows stay until the peer reports them
*applied*, so a batch is never lost: not acknowledged -> sent again (the receiver treats the
same sequence number with the same content as a no-op). The recovery gateway is reached through
``mailrepl.shared.protocol.peer_client``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from mailrepl.gateway.ack_apply import apply_ack
from mailrepl.shared.content.mime_split import BLOB_THRESHOLD
from mailrepl.shared.engines.batch_builder import BatchBuilder, Built
from mailrepl.shared.errors import PeerRefused
from mailrepl.shared.protocol.link_rate import LinkRateCap
from mailrepl.shared.protocol.peer_client import HttpClient, PeerClient, as_peer_client
from mailrepl.shared.protocol.wire import Ack, SegmentResult, encode_batch
from mailrepl.shared.runtime.background import Background
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Mailbox
from sqlalchemy import func, select, update

__all__ = ["ShipStats", "Shipper"]

log = logging.getLogger("mailrepl.shipper")

REFUSED_PREFIX = "refused by the recovery gateway: "
INSUFFICIENT_STORAGE = 507  # the recovery gateway could not store a batch: its disk is full
REFUSED_RETRY = 300.0  # seconds: mailboxes set aside for a refusal are tried again this often
IN_FLIGHT = 2  # batches on the link at once (a round trip and the peer's store write hidden)
LIVE_BACKLOG = 20  # under a rate cap, a mailbox at most this many changes behind ships as live traffic
# while batches flow (a seed), the peer is asked how far it applied at most this often when a
# mailbox outside the batch just sent waits to be applied: an ack only tells about the mailboxes
# of its own batch, so without it their applied position (status, lag) would stand still until
# the shipper runs out of work
PROGRESS_EVERY = 1.0
# with nothing to send, how often the peer is asked how far it applied while a mailbox waits to be
# applied there (each answer names every mailbox of the source: its cost grows with their number)
PROGRESS_IDLE_EVERY = 1.0
# ... and while the progress watcher follows the peer's replay (a peer that answers waiting
# progress queries), only this often: the watcher hears of each replay pass as it commits
PROGRESS_WATCHED_EVERY = 5.0
PROGRESS_WAIT = 5.0  # seconds the recovery gateway may hold the watcher's progress query
WATCH_GAP = 0.05  # seconds between two of the watcher's queries (replay groups commit in runs)


class ShipStats:
    def __init__(self) -> None:
        self.batches = 0
        self.changes = 0
        self.wire_bytes = 0
        self.raw_bytes = 0  # bodies the shipped changes refer to, as captured
        self.payload_bytes = 0  # skeletons and parts actually sent, before compression


class Shipper:
    def __init__(
        self,
        store: Store,
        source_id: str,
        peer: PeerClient | HttpClient,
        *,
        token: str | None = None,
        max_changes: int = 1000,
        max_bytes: int = 32 * 1024 * 1024,
        part_threshold: int = BLOB_THRESHOLD,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        body_lock: threading.Lock | None = None,
        rate_cap: LinkRateCap | None = None,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        self.store = store
        self.rate_cap = rate_cap if rate_cap is not None and rate_cap.enabled else None
        self.source_id = source_id
        # the recovery gateway; an HTTP client (base URL the recovery gateway) is wrapped with ``token``
        self.peer = as_peer_client(peer, token=token, source_id=source_id)
        self.max_changes = max_changes
        self.max_bytes = max_bytes
        self._shrink_until: float | None = None  # one body per batch until then (a 413 to find)
        self._last_progress = float("-inf")  # when the peer was last asked how far it applied
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.body_lock = body_lock or threading.Lock()
        self.stats = ShipStats()
        self.last_error: str | None = None
        self.peer_disk_full: str | None = None  # the recovery gateway's reason while it refuses for lack of space
        self.wake_event = threading.Event()
        self._background = Background("shipper", self._loop)
        self._stop = self._background.stopping
        self.in_flight = max(1, in_flight)
        self._senders = ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="shipper-send")
        # follows the peer's replay: a waiting progress query, answered as a replay pass commits
        self._watcher = Background("progress-watcher", self._watch)
        self._acked = threading.Event()  # set when an answer leaves a mailbox waiting to be applied
        self.watching = False  # the peer answers waiting progress queries (and the watcher runs)
        # gaps asking again for changes applied at DR: settled by a progress query with nothing in flight
        self._doubtful: set[tuple[str, str]] = set()
        # a mailbox cut over to DR ships no more (what it captured late is re-based at failback)
        self.builder = BatchBuilder(store, source_id, self._held, max_changes=max_changes, max_bytes=max_bytes,
                                    part_threshold=part_threshold, where=Mailbox.site_state == "replicating")

    @property
    def client(self) -> HttpClient:
        """The HTTP client the recovery gateway is reached through."""
        return self.peer.http

    @client.setter
    def client(self, http: HttpClient) -> None:
        self.peer = self.peer.over(http)  # same token and source, another route to the peer

    # ------------------------------------------------------------------ building

    def build_batch(self, after: Mapping[tuple[str, str], int] | None = None,
                    in_flight: Collection[str] = frozenset()) -> Built | None:
        """The next batch (see ``mailrepl.shared.engines.batch_builder``), or None when nothing waits."""
        return self.builder.build(after, in_flight)

    def _held(self, shas: Sequence[str], keys: Sequence[str]) -> tuple[list[str], list[str]]:
        """Ask the recovery gateway which of these bodies and parts it lacks."""
        lacking = self.peer.missing(shas, keys)
        return lacking.messages, lacking.parts

    # ------------------------------------------------------------------ sending

    def ship_once(self) -> bool:
        """Send one batch and record its acknowledgement. True if a batch was sent."""
        built = self.build_batch()
        if built is None:
            return False
        data = encode_batch(built.batch)
        ack = self._send(data, built)
        if ack is not None:
            self._record(ack, built, len(data))
        self.settle_doubts()
        return True

    def ship_pipelined(self) -> int:
        """Send batches until the outbox is drained; returns how many were sent.

        Up to ``in_flight`` batches travel at once (one under a rate cap), each on its own
        connection, and the next is read, split and compressed meanwhile (the store, zstd and
        the socket release the GIL): across a long link the link and the peer are kept busy
        instead of idling a round trip and the peer's store write per batch. The peer stores
        batches of one source in the order they arrive (``mailrepl.recovery.ingest_order``);
        their answers are applied here in the order sent. Any failure or any answer other than
        "ok" ends the run once the batches in flight are answered: the next run starts again
        from what the peer acknowledged.
        """
        self.settle_doubts()  # left by a run that failed: settled before anything is sent again
        sent = 0
        depth = 1 if self.rate_cap is not None else self.in_flight
        upto: dict[tuple[str, str], int] = {}
        window: deque[tuple[Built, int, Future]] = deque()
        pending = self._prepare(upto, frozenset())
        try:
            while not self._stop.is_set():
                while pending is not None and len(window) < depth and not self._stop.is_set():
                    built, data = pending
                    if self._live_overtaken(built):
                        # live changes came in after this seed batch was prepared: they go first
                        pending = self._prepare(dict(upto), _parts(window))
                        if pending is None:
                            break
                        built, data = pending
                    for seg in built.batch.segments:
                        upto[(seg.server, seg.address)] = seg.range.last
                    window.append((built, len(data), self._senders.submit(self._send, data, built)))
                    del data
                    pending = None
                    try:
                        pending = self._prepare(dict(upto), _parts(window))
                    except Exception as exc:  # noqa: BLE001 - built again from the store next run
                        log.warning("preparing the next batch failed: %s", exc)
                if not window:
                    break
                built, size, answer = window.popleft()
                ack = answer.result()
                if ack is not None:
                    self._record(ack, built, size)
                sent += 1
                if ack is None or any(res.status != "ok" for res in ack.results):
                    break
                if time.monotonic() - self._last_progress >= PROGRESS_EVERY and \
                        self._pending_apply(besides={(seg.server, seg.address) for seg in built.batch.segments}):
                    self.poll_progress()
        finally:
            # the batches still in flight are answered before the run ends (their acks count)
            for built, size, answer in window:
                try:
                    ack = answer.result()
                except Exception as exc:  # noqa: BLE001 - sent again from what the peer acknowledged
                    log.debug("a batch in flight failed: %s", exc)
                    continue
                if ack is not None:
                    self._record(ack, built, size)
                sent += 1
        return sent

    def _send(self, data: bytes, built: Built) -> Ack | None:
        """Send one batch; None if the peer refused it for its mailboxes, which are then set aside
        (``ship_error``, tried again every ``REFUSED_RETRY`` seconds) so the others go on: those the
        peer named (403/422), or the one mailbox of a batch too large for it (413: a message
        bigger than the recovery gateway's ``max_batch_bytes``)."""
        try:
            if self.rate_cap is None:
                return self.peer.send_batch(data)
            live = not self._seeding(built)
            return self.peer.send_batch(data, paced=self.rate_cap.chunks(data, live=live))
        except PeerRefused as exc:
            if exc.status_code in (403, 422) and exc.mailboxes:
                self._set_aside(exc.mailboxes, exc.detail)
                return None
            if exc.status_code != 413:
                raise
            mailboxes = {(seg.server, seg.address) for seg in built.batch.segments}
            if self._shrink_until is None or len(mailboxes) > 1:
                # find the culprit: one body per batch until it is set aside
                self._shrink_until = time.monotonic() + REFUSED_RETRY
                self.builder.max_bytes = 1
                log.warning("recovery gateway refused a batch of %d bytes as too large: sending one body per "
                            "batch to find the message it cannot take", len(data))
                return None
            self._set_aside(sorted(mailboxes), f"a batch of {len(data)} bytes holding a single message body is "
                                               f"over the recovery gateway's limit ({exc.detail})")
            self._unshrink()
            return None

    def _seeding(self, built: Built) -> bool:
        """Is the batch bulk traffic under the cap: does it carry changes of a mailbox being seeded,
        or of one more than ``LIVE_BACKLOG`` changes behind (a seed, a mass import, a resync)?"""
        who = {(seg.server, seg.address) for seg in built.batch.segments}
        with self.store.read() as s:
            rows = s.execute(select(Mailbox.server, Mailbox.address, Mailbox.phase, Mailbox.last_seq - Mailbox.acked_seq)
                             .where(Mailbox.address.in_({a for _, a in who})))
            return any((server, address) in who and (phase == "seeding" or behind > LIVE_BACKLOG)
                       for server, address, phase, behind in rows)

    def _live_overtaken(self, built: Built) -> bool:
        """Under a cap: is ``built`` a seed batch while a live mailbox outside it waits (its
        change captured after the batch was prepared ahead)? Then it is prepared again, live first."""
        if not self.builder.live_first or not self._seeding(built):
            return False
        inside = {(seg.server, seg.address) for seg in built.batch.segments}
        with self.store.read() as s:
            waiting = s.execute(select(Mailbox.server, Mailbox.address).where(
                Mailbox.last_seq > Mailbox.acked_seq, Mailbox.last_seq - Mailbox.acked_seq <= LIVE_BACKLOG,
                Mailbox.phase != "seeding", Mailbox.ship_error.is_(None), Mailbox.site_state == "replicating"))
            return any((server, address) not in inside for server, address in waiting)

    def _fit_to_cap(self) -> None:
        """Under a cap: batches of half a second of it, least behind mailboxes first, so a live
        change goes in the next batch instead of after the seed."""
        if self.rate_cap is None or self._shrink_until is not None:
            return
        self.builder.max_bytes = self.rate_cap.batch_bytes(self.max_bytes)
        self.builder.live_first = self.builder.max_bytes < self.max_bytes
        self.builder.live_backlog = LIVE_BACKLOG

    def _unshrink(self) -> None:
        self._shrink_until = None
        self.builder.max_bytes = self.max_bytes

    def _set_aside(self, mailboxes: Sequence[tuple[str, str]], detail: str) -> None:
        reason = f"{REFUSED_PREFIX}{detail} (tried again every {REFUSED_RETRY:.0f} s)"
        with self.store.tx() as s:
            for server, address in mailboxes:
                mbx = s.scalar(select(Mailbox).where(Mailbox.server == server, Mailbox.address == address))
                if mbx is not None:
                    mbx.ship_error = reason
                    log.error("%s/%s: %s", server, address, reason)

    def release_refused(self) -> int:
        """Mailboxes set aside for a refusal are shipped again (the admin may have fixed the
        standby or the binding meanwhile); returns how many."""
        with self.store.tx() as s:
            return s.execute(update(Mailbox).where(Mailbox.ship_error.startswith(REFUSED_PREFIX, autoescape=True))
                             .values(ship_error=None)).rowcount or 0

    def _prepare(self, after: Mapping[tuple[str, str], int], in_flight: Collection[str]) -> tuple[Built, bytes] | None:
        built = self.build_batch(after, in_flight)
        if built is None:
            return None
        data = encode_batch(built.batch)
        # the bodies travel in ``data`` now: keep their keys (parts in flight), not a second copy
        built.batch = replace(built.batch, messages=dict.fromkeys(built.batch.messages, b""),
                              parts=dict.fromkeys(built.batch.parts, b""))
        return built, data

    def poll_progress(self) -> None:
        """Ask the peer how far it has applied (acks only come with batches)."""
        self._last_progress = time.monotonic()
        self._record(self.peer.progress())

    def settle_doubts(self) -> None:
        """Ask how far the peer holds the mailboxes whose batch was answered with a gap asking for
        changes applied at DR (``mailrepl.gateway.ack_apply``), with no batch in flight: an
        answer overtaken by the progress watcher's is let go (the batch is sent again from what
        the peer holds), a peer that holds less than it applied lost changes (set aside, with
        that error). Kept for the next run if the peer does not answer."""
        if not self._doubtful:
            return
        doubtful, self._doubtful = self._doubtful, set()
        try:
            ack = self.peer.progress()
        except BaseException:
            self._doubtful |= doubtful
            raise
        answered = {(res.server, res.address): res for res in ack.results if (res.server, res.address) in doubtful}
        # a mailbox the peer does not name at all holds nothing there
        results = tuple(answered.get(who) or SegmentResult(who[0], who[1], "ok", 0) for who in sorted(doubtful))
        self._last_progress = time.monotonic()
        apply_ack(self.store, self.body_lock, Ack(results), check_loss=True)
        for res in results:
            log.info("%s/%s: a batch answered as a gap behind changes applied at DR: the recovery gateway "
                     "holds up to %d", res.server, res.address, res.acked)

    def _record(self, ack: Ack, built: Built | None = None, wire_bytes: int = 0, *, forward_only: bool = False) -> None:
        """Apply an acknowledgement (and, for a sent batch, its bytes accounting) to the store
        (``mailrepl.gateway.ack_apply``). ``forward_only``: an answer of the progress watcher."""
        if built is not None:
            self.stats.batches += 1
            self.stats.changes += sum(len(seg.range) for seg in built.batch.segments)
            self.stats.wire_bytes += wire_bytes
            self.stats.raw_bytes += built.raw_total
            self.stats.payload_bytes += built.payload_total
        outcome = apply_ack(self.store, self.body_lock, ack, built, wire_bytes, forward_only=forward_only)
        self.builder.send_whole.update(outcome.send_whole)
        if outcome.doubtful:  # only batch answers have gaps: only the shipper's thread gets here
            self._doubtful |= outcome.doubtful
        if outcome.waiting:
            self._acked.set()  # the watcher follows their replay

    # ------------------------------------------------------------------ loop

    def start(self) -> None:
        self._background.start()
        self._watcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake_event.set()
        self._acked.set()
        self._background.stop(timeout)
        self._watcher.stop(0)  # not waited for: a progress query held at the peer ends on its own
        self._senders.shutdown(wait=False, cancel_futures=True)

    def _pending_apply(self, besides: Collection[tuple[str, str]] = frozenset()) -> bool:
        """Does a mailbox (other than ``besides``, (server, address)) wait to be applied at DR?"""
        with self.store.read() as s:
            if not besides:
                return bool(s.scalar(select(func.count()).select_from(Mailbox)
                                     .where(Mailbox.applied_seq < Mailbox.acked_seq)))
            waiting = s.execute(select(Mailbox.server, Mailbox.address).where(Mailbox.applied_seq < Mailbox.acked_seq))
            return any((server, address) not in besides for server, address in waiting)

    def _watch(self) -> None:
        """While a mailbox waits to be applied at DR, hold a progress query at the peer that it
        answers as soon as a replay pass commits (``PROGRESS_WAIT`` at most): the applied
        position here, the status and the end of a seed follow the standby within a round trip,
        not a polling interval. A peer that gives no token is polled by the shipper instead."""
        token: str | None = None
        delay = self.retry_initial
        while not self._stop.is_set():
            try:
                if not self._pending_apply():
                    self._acked.wait(PROGRESS_WAIT)
                    self._acked.clear()
                    continue
                ack = self.peer.progress(seen=token, wait=PROGRESS_WAIT if token is not None else 0.0)
                if ack.token is None:
                    self.watching = False
                    log.info("recovery gateway does not answer waiting progress queries: polled instead")
                    return
                self.watching, token = True, ack.token
                if not self._stop.is_set():
                    self._record(ack, forward_only=True)
                delay = self.retry_initial
                self._stop.wait(WATCH_GAP)
            except Exception as exc:  # noqa: BLE001 - the shipper's own progress queries go on meanwhile
                log.debug("progress watcher: %s (again in %.1fs)", exc, delay)
                self._stop.wait(max(delay, getattr(exc, "back_off", 0.0) or 0.0))
                delay = min(self.retry_max, delay * 2)

    def _loop(self) -> None:
        delay = self.retry_initial
        last_release = -REFUSED_RETRY
        while not self._stop.is_set():
            try:
                if self._shrink_until is not None and time.monotonic() > self._shrink_until:
                    self._unshrink()  # the culprit was not found meanwhile: batches of full size again
                if time.monotonic() - last_release >= REFUSED_RETRY:
                    last_release = time.monotonic()
                    self.release_refused()
                self._fit_to_cap()
                sent = self.ship_pipelined() > 0
                every = PROGRESS_WATCHED_EVERY if self.watching else PROGRESS_IDLE_EVERY
                if not sent and time.monotonic() - self._last_progress >= every and self._pending_apply():
                    self.poll_progress()
                self.last_error = None
                self.peer_disk_full = None
                delay = self.retry_initial
                if sent:
                    continue
                self.wake_event.wait(0.5)
                self.wake_event.clear()
            except Exception as exc:  # noqa: BLE001 - kept, retried with back-off, never dropped
                self.last_error = str(exc)
                if isinstance(exc, PeerRefused) and exc.status_code == INSUFFICIENT_STORAGE:
                    self.peer_disk_full = exc.detail  # kept queued here, sent again after its Retry-After
                log.warning("shipping failed: %s (retry in %.1fs)", exc, delay)
                self._stop.wait(max(delay, getattr(exc, "back_off", 0.0)))
                delay = min(self.retry_max, delay * 2)



def _parts(window) -> frozenset[str]:
    """The parts of the batches in flight: held by the peer for the next batch's purpose."""
    return frozenset(key for built, _, _ in window for key in built.batch.parts)
