"""REST API of the recovery gateway: batch ingest for source gateways, admin status under /api/v1.

The ingest routes answer source gateways only: the caller's principal comes from
``SourceAccess.dependency()`` (client certificate or per-source token), and each route checks
that what it names belongs to that source before anything is read or written
(``mailrepl.recovery.source_access``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from mailrepl.recovery.alert_sources import replica_statuses
from mailrepl.recovery.ingest_order import IngestOrder
from mailrepl.recovery.source_access import SourceAccess
from mailrepl.recovery.standby_view import is_fresh
from mailrepl.shared.runtime.principals import Principal
from mailrepl.recovery.disk_guard import DiskGuard
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES, ErrorDetail, retry_after, MailboxDetail, MailboxList, MailboxStatus, RejectedInfo, SeedingProgress, AlteredInfo
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.errors import DiskFull, UnsupportedVersion, WireError
from mailrepl.shared.model import utcnow
from mailrepl.shared.site_state import active_site
from mailrepl.recovery.site import history, report_of
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import AlteredMessage, InboxRow, RejectedMessage, Replica
from mailrepl.shared.protocol.messages import HeldAnswer, HeldQuery
from mailrepl.shared.protocol.wire import MAX_DECODED_BYTES, MAX_TOKEN, MEDIA_TYPE, decode_batch
from mailrepl.shared.engines.progress_signal import MAX_WAIT
from mailrepl.shared.engines.receiver import Receiver

__all__ = ["ingest_router", "admin_router", "replica_status"]


MAX_WAITERS = 64  # progress queries that may wait at once; more are answered at once

INGEST_RESPONSES = {**ERROR_RESPONSES, 507: {
    "model": ErrorDetail, "description": "no space left to store the batch: nothing of it is acknowledged; "
                                         "send it again after Retry-After seconds"}}


def ingest_router(receiver: Receiver, access: SourceAccess, max_bytes: int,
                  max_inflated: int = MAX_DECODED_BYTES, disk: DiskGuard | None = None,
                  order: IngestOrder | None = None) -> APIRouter:
    r = APIRouter(prefix="/api/v1/ingest", tags=["ingest"], responses=INGEST_RESPONSES)
    as_source = access.dependency()
    order = order or IngestOrder()

    @r.post("/batches")
    async def post_batch(request: Request, caller: Principal = Depends(as_source)) -> dict:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip() != MEDIA_TYPE:
            raise HTTPException(415, f"expected Content-Type {MEDIA_TYPE}")
        # batches of one source sent side by side are stored in the order they arrive in
        with order.arriving(caller.source_id or "") as ticket:
            data = await request.body()
            if len(data) > max_bytes:
                raise HTTPException(413, f"batch larger than {max_bytes} bytes")
            # decompressing, hash checks and the store write run off the event loop, so the API
            # keeps answering while a large batch is taken in
            turn = functools.partial(order.wait_turn, ticket=ticket)
            return await run_in_threadpool(_ingest_stored, receiver, access, caller, data, max_inflated, disk, turn)

    waiting = [0]  # progress queries waiting now (bounded: each holds a connection)

    @r.get("/progress")
    async def progress(source: str, caller: Principal = Depends(as_source),
                       wait: float = Query(0.0, ge=0.0, le=MAX_WAIT),
                       seen: str | None = Query(None, max_length=MAX_TOKEN)) -> dict:
        """Where the source's replicas stand. With ``seen`` (the ``token`` of an earlier answer)
        and ``wait``: answered once a replay pass applied something after it (or after ``wait``
        seconds), with only the replicas applied since; without, or with a token this process
        did not give, at once with all of them."""
        access.source_of(caller, source)
        signal = receiver.signal
        since = signal.since(seen)
        if wait and waiting[0] < MAX_WAITERS:
            waiting[0] += 1
            try:
                await signal.wait(since, wait)
            finally:
                waiting[0] -= 1
        token = signal.token  # before the read: what is applied after it is in the next answer
        ack = await run_in_threadpool(receiver.progress, source, signal.replicas(since))
        return dataclasses.replace(ack, token=token).to_json()

    @r.post("/missing", response_model=HeldAnswer)
    def missing(query: HeldQuery, caller: Principal = Depends(as_source)) -> HeldAnswer:
        """Of these message bodies (SHA-256) and parts (XXH3-128), the ones this side lacks."""
        shas, keys = receiver.bodies.missing(query.messages, query.parts)
        return HeldAnswer(messages=shas, parts=keys)

    return r


def _ingest_stored(receiver: Receiver, access: SourceAccess, caller: Principal, data: bytes, max_inflated: int,
                   disk: DiskGuard | None, turn: Callable | None = None) -> dict:
    """``_ingest``, refused with 507 + Retry-After when the batch cannot be stored for lack of
    space (checked first against the floor; a write that still fails rolled back)."""
    if disk is None:
        return _ingest(receiver, access, caller, data, max_inflated, turn)
    try:
        disk.check()
        answer = _ingest(receiver, access, caller, data, max_inflated, turn)
    except DiskFull as exc:
        raise HTTPException(507, disk.refused_for(exc), headers={"Retry-After": retry_after(exc.back_off)}) from exc
    if any(r.get("status") == "ok" for r in answer.get("results", ())):
        # something was written: the disk has room again (a batch answered only with gaps,
        # e.g. the one sent behind a refused batch, wrote nothing and proves nothing)
        disk.stored()
    return answer


def _ingest(receiver: Receiver, access: SourceAccess, caller: Principal, data: bytes, max_inflated: int,
            turn: Callable | None = None) -> dict:
    """``turn(source, ready)``: waits while a batch sent before this one is still arriving."""
    try:
        batch = decode_batch(data, max_bytes=max_inflated)
    except UnsupportedVersion as exc:
        raise HTTPException(400, str(exc)) from exc
    except WireError as exc:
        raise HTTPException(400, f"malformed batch: {exc}") from exc
    access.admit(caller, batch)  # the whole batch, before the receiver writes anything
    if turn is not None:
        turn(batch.source, ready=lambda: receiver.continues(batch))
    return receiver.ingest(batch).to_json()


def replica_status(s, rep: Replica, extras: dict | None = None) -> MailboxStatus:
    lag = 0.0
    if rep.applied_seq < rep.received_seq:
        oldest = s.scalar(
            select(InboxRow.captured_at).where(InboxRow.replica_id == rep.id, InboxRow.seq == rep.applied_seq + 1)
        )
        if oldest is not None:
            lag = max(0.0, (utcnow() - oldest).total_seconds()) if oldest.tzinfo else 0.0
    rejected = s.scalars(select(RejectedMessage.id).where(RejectedMessage.replica_id == rep.id)).all()
    altered = s.scalar(select(func.count(AlteredMessage.id)).where(AlteredMessage.replica_id == rep.id))
    return MailboxStatus(
        address=rep.address,
        server=rep.server,
        protected=True,
        phase="error" if rep.error else "replicating",
        active_site=active_site(rep.site_state),
        copy_queue=None,
        replay_queue=rep.received_seq - rep.applied_seq,
        lag_seconds=round(lag, 3),
        last_captured_seq=rep.received_seq,
        last_applied_seq=rep.applied_seq,
        error=rep.error,
        rejected=len(rejected),
        altered=altered or 0,
        site_state=rep.site_state,
        **(extras or {}),
    )


class GcResult(BaseModel):
    bodies_deleted: int
    parts_scanned: int
    parts_deleted: int
    bytes_freed: int
    parts_kept_recent: int


def admin_router(store: Store, authz: Authorizer,
                 collect_garbage: Callable[[float | None], object] | None = None,
                 extras: Callable[[int], dict] = lambda rid: {},
                 holds: Callable[[int], list[dict] | None] = lambda rid: None,
                 extras_all: Callable[[list[tuple[int, str, str]]], dict[int, dict]] | None = None) -> APIRouter:
    """Status (viewer) and garbage collection (operator); ``extras``: more status fields of a
    replica (``history_bytes``: what its history holds; ``held_deletions``: what the mass-delete
    guard holds); ``extras_all``: the same for every replica of a listing at once (by replica id;
    without it ``extras`` is asked for each); ``holds``: the guard's holds of a replica, for its detail."""
    if extras_all is None:
        def extras_all(replicas: list[tuple[int, str, str]]) -> dict[int, dict]:
            return {rid: extras(rid) for rid, _, _ in replicas}
    listing = replica_statuses(store, extras_all)
    r = APIRouter(prefix="/api/v1", tags=["admin"], responses=ERROR_RESPONSES)
    viewer, operator = [Depends(authz.require("viewer"))], [Depends(authz.require("operator"))]

    if collect_garbage is not None:
        @r.post("/gc", response_model=GcResult, dependencies=operator)
        def gc(grace_seconds: float | None = Query(default=None, ge=0)) -> GcResult:
            """Delete received bodies nothing refers to, then the parts no kept body refers to."""
            return GcResult(**dataclasses.asdict(collect_garbage(grace_seconds)))

    def find(s, address: str, server: str | None) -> Replica:
        q = select(Replica).where(Replica.address == address)
        if server is not None:
            q = q.where(Replica.server == server)
        reps = list(s.scalars(q))
        if not reps:
            raise HTTPException(404, f"no replicated mailbox {address!r}" + (f" of server {server!r}" if server else ""))
        if len(reps) > 1:
            raise HTTPException(409, f"{address!r} is replicated from several servers; name one with ?server=")
        return reps[0]

    @r.get("/mailboxes", response_model=MailboxList, dependencies=viewer)
    def list_mailboxes() -> Response:
        # every replica's status in one query and its extras in a few (10,000 mailboxes: not
        # 20,000 more queries), serialised once
        return MailboxList.model_construct(mailboxes=listing()).response()

    @r.get("/mailboxes/{address}", response_model=MailboxDetail, dependencies=viewer)
    def get_mailbox(address: str, server: str | None = None) -> MailboxDetail:
        with store.read() as s:
            rep = find(s, address, server)
            base = replica_status(s, rep, extras(rep.id))
            rejected = [
                RejectedInfo(seq=x.seq, folder=x.folder, reason=x.reason, message_id=x.message_id, subject=x.subject,
                             date=x.msg_date)
                for x in s.scalars(select(RejectedMessage).where(RejectedMessage.replica_id == rep.id).order_by(RejectedMessage.seq))
            ]
            altered = [
                AlteredInfo(seq=x.seq, folder=x.folder, what=x.what, sha256=x.sha256, standby_sha256=x.standby_sha256,
                            sent_size=x.sent_size, stored_size=x.stored_size, message_id=x.message_id,
                            subject=x.subject, date=x.msg_date)
                for x in s.scalars(select(AlteredMessage).where(AlteredMessage.replica_id == rep.id).order_by(AlteredMessage.seq))
            ]
            return MailboxDetail(
                **base.model_dump(), folders=[], rejected_messages=rejected, altered_messages=altered,
                seeding=SeedingProgress(messages_done=0, messages_total=0, bytes_done=0, bytes_total=0),
                site_since=rep.site_since.isoformat() if rep.site_since else None,
                transitions=history(s, rep.id), failback_report=report_of(rep),
                standby_view_current=is_fresh(rep), holds=holds(rep.id),
            )

    return r
