"""REST endpoints of cutover and failback on the recovery gateway.

Admin (``/api/v1``): ``POST /cutover``, ``POST /failback`` (role operator), ``GET /failover`` (viewer).
Source gateways (``/api/v1/ingest``, a source's certificate or token, each request only for
that source and its mailboxes: ``mailrepl.recovery.source_access``): ``GET /sites``,
``POST /reverse``, ``POST /resync``, ``POST /rebase`` (see ``mailrepl.recovery.failback``; their
requests and answers are ``mailrepl.shared.protocol.messages``).
nginx mail proxy: ``GET /auth`` (``auth_http``, see ``mailrepl.recovery.redirect``).
"""
from __future__ import annotations

import hmac
from datetime import datetime
from typing import Callable, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from mailrepl.recovery.autofailover import FailoverMonitor
from mailrepl.recovery.cutover import CutoverService
from mailrepl.recovery.failback import FailbackService
from mailrepl.recovery.redirect import Redirect
from mailrepl.recovery.replay_gate import ReplayGate
from mailrepl.recovery.site import NoSuchMailbox, find_replica_ids
from mailrepl.recovery.source_access import SourceAccess
from mailrepl.shared.runtime.principals import Principal
from mailrepl.shared.errors import IllegalTransition
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Replica, SiteTransition
from mailrepl.shared.protocol.messages import (
    MailboxRef, Name, RebaseAnswer, RebaseRequest, ResyncAnswer, ReverseRequest, SitesAnswer,
)
from mailrepl.shared.protocol.wire import MEDIA_TYPE, encode_batch

__all__ = ["site_admin_router", "site_ingest_router", "redirect_router"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Selection(_Model):
    addresses: list[Name] = Field(default=[], max_length=100_000)
    server: Name | None = None  # the primary server (as the source gateway names it)
    all: StrictBool = False  # every replicated mailbox of ``server``


class CutoverRequest(Selection):
    # a lagged copy (``[lag]``): play every received change (default), those captured up to
    # ``until`` (the later ones are set aside: kept, listed), or nothing more
    play: Literal["all", "until", "none"] = "all"
    until: datetime | None = None


class FailbackRequest(Selection):
    confirm: StrictBool = False  # switch users back to the primary now (else: a later request with confirm)
    abort: StrictBool = False  # stop a failback under way; users stay at DR


class Results(_Model):
    results: list[dict]


def _selected(store: Store, sel: Selection) -> list[int]:
    if not sel.all and not sel.addresses:
        raise HTTPException(422, "name the mailboxes (addresses) or a whole server (server + all)")
    with store.read() as s:
        try:
            return find_replica_ids(s, addresses=sel.addresses, server=sel.server, all_of_server=sel.all)
        except NoSuchMailbox as exc:
            raise HTTPException(404, str(exc)) from exc


def _guard(fn: Callable, *args, **kw):
    try:
        return fn(*args, **kw)
    except IllegalTransition as exc:
        raise HTTPException(409, str(exc)) from exc


def site_admin_router(store: Store, authz: Authorizer, cutover: CutoverService, failback: FailbackService,
                      monitor: FailoverMonitor, auto: bool, gate: ReplayGate | None = None) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["cutover"], responses=ERROR_RESPONSES)
    viewer, operator = [Depends(authz.require("viewer"))], [Depends(authz.require("operator"))]

    @r.post("/cutover", response_model=Results, dependencies=operator)
    async def post_cutover(body: CutoverRequest) -> JSONResponse:
        """Move users of these mailboxes to the standby (works while the primary site is down); a
        lagged copy plays what ``play`` says first."""
        ids = _selected(store, body)
        if (body.play == "until") != (body.until is not None) or (body.until is not None and body.until.tzinfo is None):
            raise HTTPException(422, "play \"until\" needs until, a time with a UTC offset (and only it does)")
        if gate is not None:
            gate.at_cutover(ids, body.play, body.until)
        results = await run_in_threadpool(_guard, cutover.cutover, ids, actor="admin")
        if gate is not None and body.play != "all":
            for rid, res in zip(ids, results):
                res["set_aside"] = len(gate.set_aside(rid))
        # plain values built by the cutover: serialised as they are, not validated and encoded
        # again field by field (10,000 mailboxes: seconds)
        return JSONResponse({"results": results})

    @r.post("/failback", response_model=Results, dependencies=operator)
    async def post_failback(body: FailbackRequest) -> Results:
        """Replay the standby's changes on the primary; with ``confirm``, switch users back."""
        ids = _selected(store, body)
        if body.abort:
            return Results(results=await run_in_threadpool(_guard, failback.abort, ids))

        def run() -> list[dict]:
            with store.read() as s:
                states = {rid: s.get(Replica, rid).site_state for rid in ids}
            todo = [rid for rid, st in states.items() if st != "failing-back"]
            out = {}
            if todo:
                for res, rid in zip(failback.failback(todo, confirm=False), todo):
                    out[rid] = res
            if body.confirm:
                for rid in ids:
                    out[rid] = failback.confirm(rid)
            return [out.get(rid) or failback.status(rid) for rid in ids]

        return Results(results=await run_in_threadpool(_guard, run))

    @r.get("/failover", dependencies=viewer)
    def get_failover() -> dict:
        """Automatic failover: whether it is on, the primaries' health, the automatic actions."""
        with store.read() as s:
            events = [dict(server=rep.server, address=rep.address, before=t.before, after=t.after, detail=t.detail,
                           at=t.at.isoformat())
                      for t, rep in s.execute(select(SiteTransition, Replica).join(Replica)
                                              .where(SiteTransition.actor == "auto").order_by(SiteTransition.id))]
        return dict(auto=auto, servers=monitor.health(), automatic_actions=events)

    return r


def site_ingest_router(access: SourceAccess, gateway_id: str, failback: FailbackService,
                       resyncs: Callable[[str], list[dict]] = lambda source: []) -> APIRouter:
    r = APIRouter(prefix="/api/v1/ingest", tags=["ingest"], responses=ERROR_RESPONSES)
    as_source = access.dependency()

    @r.get("/sites", response_model=SitesAnswer)
    def sites(source: str, caller: Principal = Depends(as_source)) -> SitesAnswer:
        """Mailboxes of this source that are not replicating, with their site state, and those
        whose standby copy needs a resync."""
        access.source_of(caller, source)
        return SitesAnswer(gateway=gateway_id, mailboxes=failback.sites(source), resync=resyncs(source))

    @r.post("/reverse", response_class=Response,
            responses={200: {"content": {MEDIA_TYPE: {}}, "description": "the next batch of standby changes"},
                       204: {"description": "nothing to pull"}})
    def reverse(body: ReverseRequest, caller: Principal = Depends(as_source)) -> Response:
        """Record failback progress; answer the next batch of standby changes (204: none)."""
        access.check_mailboxes(caller, body.source, ((p.server, p.address) for p in body.progress))
        _guard(failback.record_progress, body.source, [p.model_dump() for p in body.progress])
        batch = _guard(failback.next_batch, body.source, [(p.server, p.address) for p in body.progress])
        if batch is None:
            return Response(status_code=204)
        return Response(content=encode_batch(batch), media_type=MEDIA_TYPE)

    @r.post("/resync", response_model=ResyncAnswer)
    def resync(body: MailboxRef, caller: Principal = Depends(as_source)) -> ResyncAnswer:
        access.check_mailboxes(caller, body.source, [(body.server, body.address)])
        return ResyncAnswer(base_seq=_guard(failback.resync, body.source, body.server, body.address))

    # the mailbox's failback status as it is: only the keys it has, none added as null
    @r.post("/rebase", response_model=RebaseAnswer, response_model_exclude_unset=True)
    def rebase(body: RebaseRequest, caller: Principal = Depends(as_source)) -> dict:
        access.check_mailboxes(caller, body.source, [(body.server, body.address)])
        return _guard(failback.rebase, body.source, body.server, body.address, base_seq=body.base_seq,
                      applied=body.applied, born=body.born, report=body.report)

    return r


def redirect_router(redirect: Redirect, key: str | None) -> APIRouter:
    """``GET /auth``: with a ``key``, nginx must send it as ``X-Mailrepl-Key`` (compared in constant
    time); ``key`` None only when the configuration explicitly turned the requirement off."""
    r = APIRouter(tags=["redirect"])

    @r.get("/auth", response_class=Response,
           responses={200: {"content": {}, "description": "the answer is in the Auth-* headers"}})
    def auth_http(request: Request) -> Response:
        """nginx mail proxy ``auth_http``: which server this user's login goes to."""
        h = request.headers
        if key is not None and not hmac.compare_digest((h.get("x-mailrepl-key") or "").encode("utf-8", "surrogateescape"),
                                                       key.encode("utf-8", "surrogateescape")):
            return Response(headers={"Auth-Status": "Temporary server problem, try again later", "Auth-Wait": "5"})
        answer = redirect.answer(h.get("auth-user", ""), h.get("auth-protocol", "imap"))
        return Response(headers=answer.headers)

    return r
