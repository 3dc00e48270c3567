"""Applying the recovery gateway's answers (a batch's acknowledgement, a progress answer) to the
outbox and the mailboxes' positions: acknowledged and applied sequence numbers, the outbox rows
and bodies the peer no longer needs, conflicts, gaps, refusals and the bytes accounting.

Core statements, for many mailboxes at a time: a progress answer changes dozens of mailboxes a
second; loading each as an ORM object and flushing it cost more than the answer itself.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy import bindparam, delete, select, update

from mailrepl.shared.engines.batch_builder import Built
from mailrepl.shared.protocol.wire import Ack
from mailrepl.shared.store import Store
from mailrepl.shared.store.chunks import IN_CHUNK
from mailrepl.shared.store.models import Mailbox, OutboxRow
from mailrepl.shared.store.outbox import drop_unreferenced_bodies

__all__ = ["Outcome", "apply_ack"]

log = logging.getLogger("mailrepl.shipper")

_OUTBOX = OutboxRow.__table__
# what applying an answer reads of each mailbox it names
_COUNTERS = (Mailbox.id, Mailbox.server, Mailbox.address, Mailbox.acked_seq, Mailbox.applied_seq, Mailbox.last_seq,
             Mailbox.rejected, Mailbox.dr_error)
# statements built once (an answer is applied several times a second), run for many mailboxes at a time
_MAILBOX = Mailbox.__table__
_APPLY = update(_MAILBOX).where(_MAILBOX.c.id == bindparam("m")).values(
    acked_seq=bindparam("acked"), applied_seq=bindparam("applied"),
    shipped_raw_bytes=_MAILBOX.c.shipped_raw_bytes + bindparam("raw"),
    shipped_payload_bytes=_MAILBOX.c.shipped_payload_bytes + bindparam("payload"),
    shipped_wire_bytes=_MAILBOX.c.shipped_wire_bytes + bindparam("wire"))
_APPLIED_SHAS = select(_OUTBOX.c.sha256).where(_OUTBOX.c.mailbox_id == bindparam("m"), _OUTBOX.c.seq <= bindparam("a"),
                                               _OUTBOX.c.sha256.is_not(None))
_DROP_APPLIED = delete(_OUTBOX).where(_OUTBOX.c.mailbox_id == bindparam("m"), _OUTBOX.c.seq <= bindparam("a"))


@dataclass
class Outcome:
    send_whole: set[str] = field(default_factory=set)  # bodies the peer could not reassemble: sent unsplit
    waiting: bool = False  # a mailbox the answer moved waits to be applied at DR
    # (server, address) of gaps that ask again for changes known here to be applied at DR: an
    # answer overtaken by later ones, or a peer that lost changes (``check_loss`` tells which)
    doubtful: set[tuple[str, str]] = field(default_factory=set)


def apply_ack(store: Store, body_lock: threading.Lock, ack: Ack, built: Built | None = None, wire_bytes: int = 0,
              *, forward_only: bool = False, check_loss: bool = False) -> Outcome:
    """Apply ``ack`` (for a sent batch ``built`` of ``wire_bytes`` on the wire, with its bytes
    accounting). ``forward_only``: an answer of the progress watcher, taken while batches may
    be in flight — it moves positions forward only (an answer read before a batch was stored
    must not send that batch again); the shipper's own progress queries see a peer that lost
    changes.

    A gap that asks for changes already applied at DR (and removed here) is only *doubtful*
    (``Outcome.doubtful``): batches travel side by side, and one that reached the peer before
    the batch sent ahead of it is answered as a gap, an answer that the progress watcher may
    have overtaken meanwhile. ``check_loss``: a progress answer asked with no batch in flight,
    which is never overtaken: a mailbox the peer holds less of than was applied there lost
    changes, and is set aside with that error."""
    outcome = Outcome()
    released: set[str] = set()
    # not flushed on its own: lost in a power failure, the peer's next answer says it again
    # (a change sent again is a no-op there), and the outbox rows it removes come back
    with store.read() as s:
        todo = _changed(s, ack, built, every=check_loss)
    if not todo:
        return outcome
    with body_lock, store.tx(durable=False) as s:
        # Core statements: a progress answer changes dozens of mailboxes a second; loading
        # each as an ORM object and flushing it cost more than the answer itself
        rows = {(r.server, r.address): r for r in s.execute(
            select(*_COUNTERS).where(Mailbox.id.in_([mid for mid, _ in todo])))}
        applied_upto: list[dict] = []
        counters: list[dict] = []  # the usual change: acknowledged and applied positions, bytes sent
        for _, res in todo:
            row = rows.get((res.server, res.address))
            if row is None:
                continue
            sent = _account(row, built, wire_bytes) if built is not None and res.status == "ok" else None
            values: dict = {}
            acked, applied = row.acked_seq, row.applied_seq
            if res.status == "conflict":
                values["ship_error"] = f"recovery gateway reports a conflict: {res.detail}"
                log.error("%s/%s: %s", res.server, res.address, values["ship_error"])
            elif res.status == "gap":
                resend = res.resend_from or 1
                if resend <= applied:  # nothing changes here until a progress answer tells which
                    outcome.doubtful.add((res.server, res.address))
                else:
                    acked = min(acked, resend - 1)
            elif res.status == "error":
                values["ship_error"] = f"recovery gateway: {res.detail}"
            elif res.status == "missing":  # asked again and sent on the next run
                log.info("%s/%s: recovery gateway lacks %d bodies or parts it was said to hold",
                         res.server, res.address, len(res.missing))
                if res.whole:
                    log.warning("%s/%s: %d bodies did not reassemble at the recovery gateway; "
                                "sending them unsplit", res.server, res.address, len(res.whole))
                    outcome.send_whole.update(res.whole)
            if res.status == "ok" and check_loss and res.acked < applied:
                values["ship_error"] = (
                    f"recovery gateway lost changes from {res.acked + 1} on, which were already applied and "
                    "removed here; protect the mailbox again to re-seed"
                )
                log.error("%s/%s: %s", res.server, res.address, values["ship_error"])
            if res.status == "ok" and forward_only:
                acked = max(acked, min(res.acked, row.last_seq))
            elif res.status == "ok":
                if res.acked < acked:
                    # the peer holds less than it acknowledged before (it dropped a damaged
                    # body and asks again): send again from there
                    acked = max(res.acked, applied)
                else:
                    acked = min(res.acked, row.last_seq)
            if res.applied > applied:
                applied = min(res.applied, row.last_seq)
                applied_upto.append({"m": row.id, "a": applied})
            if sent is not None or acked != row.acked_seq or applied != row.applied_seq:
                counters.append({"m": row.id, "acked": acked, "applied": applied,
                                 **(sent or {"raw": 0, "payload": 0, "wire": 0})})
            if res.rejected and json.dumps(list(res.rejected)) != row.rejected:
                values["rejected"] = json.dumps(list(res.rejected))
            if res.status != "error" and row.dr_error != res.dr_error:
                values["dr_error"] = res.dr_error  # set and cleared by the recovery gateway's answer
            if values:
                s.execute(update(Mailbox).where(Mailbox.id == row.id).values(**values))
        if counters:
            s.execute(_APPLY, counters)
        for upto in applied_upto:
            released.update(s.scalars(_APPLIED_SHAS, upto))
        if applied_upto:
            s.execute(_DROP_APPLIED, applied_upto)
        outcome.waiting = any(c["acked"] > c["applied"] for c in counters)
        # bodies of the removed rows that no remaining row refers to (same message elsewhere)
        drop_unreferenced_bodies(s, released, store)
    return outcome


def _account(row, built: Built, wire_bytes: int) -> dict:
    """The bytes accounting of a sent batch's mailbox ``row``: what its byte counters grow by."""
    who = (row.server, row.address)
    payload = built.payload.get(who, 0)
    # the compressed batch is shared: each mailbox carries its share of the payload
    total = built.payload_total
    return {"raw": built.raw.get(who, 0), "payload": payload,
            "wire": round(wire_bytes * payload / total) if total else 0}


def _changed(s, ack: Ack, built: Built | None, every: bool = False) -> list[tuple[int, object]]:
    """The results of ``ack`` that change something here (``every``: all of them), with their
    mailbox's id: one read of every answered mailbox's counters (a progress answer names all of
    a source's mailboxes, most of them unchanged), instead of loading each mailbox."""
    if not ack.results:
        return []
    wanted = {(r.server, r.address) for r in ack.results}
    query = select(*_COUNTERS).where(Mailbox.server.in_({srv for srv, _ in wanted}))
    if built is not None or len(wanted) <= IN_CHUNK:
        # a batch's answer names its own few mailboxes, a full progress answer all of them
        query = query.where(Mailbox.address.in_({address for _, address in wanted}))
    current = {(r.server, r.address): r for r in s.execute(query) if (r.server, r.address) in wanted}
    todo = []
    for res in ack.results:
        row = current.get((res.server, res.address))
        if row is not None and (built is not None or every or _differs(res, row)):
            todo.append((row.id, res))
    return todo


def _differs(res, row) -> bool:
    """Whether applying progress answer ``res`` would change the mailbox's ``row`` (see ``_record``)."""
    if res.status != "ok":
        return True  # conflicts, gaps, errors and missing bodies are always handled
    acked = max(res.acked, row.applied_seq) if res.acked < row.acked_seq else min(res.acked, row.last_seq)
    if acked != row.acked_seq or res.applied > row.applied_seq:
        return True
    if res.rejected and json.dumps(list(res.rejected)) != row.rejected:
        return True
    return row.dr_error != res.dr_error
