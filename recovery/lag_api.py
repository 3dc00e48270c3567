"""Lagged-copy routes of the recovery gateway's admin API (``mailrepl.recovery.replay_gate``).

``GET /api/v1/lag`` (viewer): every lagged mailbox: its delay, the received changes waiting and
how many are not yet due; ``GET /api/v1/lag/{address}/set-aside`` (viewer): the changes a cutover
left out (captured after the time chosen), kept in the inbox: each with its sequence number,
kind, folder and capture time. They stay in the mailbox's history, so ``mailrepl restore`` at a
later time brings their messages back.
"""
from __future__ import annotations

from fastapi import APIRouter, Depends
from mailrepl.recovery.history_api import find_replica
from mailrepl.recovery.replay_gate import ReplayGate
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.store.models import Replica
from pydantic import BaseModel
from sqlalchemy import select

__all__ = ["lag_router"]


class LagInfo(BaseModel):
    server: str
    address: str
    replay_delay_seconds: float
    waiting: int
    not_yet_due: int
    oldest_waiting: str | None


class LagList(BaseModel):
    mailboxes: list[LagInfo]


class SetAside(BaseModel):
    server: str
    address: str
    cutover_seq: int | None
    changes: list[dict]


def lag_router(gate: ReplayGate, authz: Authorizer) -> APIRouter:
    r = APIRouter(prefix="/api/v1/lag", tags=["lag"], responses=ERROR_RESPONSES)
    viewer = [Depends(authz.require("viewer"))]

    @r.get("", response_model=LagList, dependencies=viewer)
    def lagged() -> LagList:
        with gate.store.read() as s:
            reps = [(rep.id, rep.server, rep.address) for rep in
                    s.scalars(select(Replica).order_by(Replica.server, Replica.address))]
        out = []
        for rid, server, address in reps:
            w = gate.waiting(rid)
            if w is not None:
                out.append(LagInfo(server=server, address=address, **w))
        return LagList(mailboxes=out)

    @r.get("/{address}/set-aside", response_model=SetAside, dependencies=viewer)
    def set_aside(address: str, server: str | None = None) -> SetAside:
        with gate.store.read() as s:
            rep = find_replica(s, address, server)
            rid, srv, cut = rep.id, rep.server, rep.cutover_seq
        return SetAside(server=srv, address=address, cutover_seq=cut, changes=gate.set_aside(rid))

    return r
