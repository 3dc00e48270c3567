"""History routes of the recovery gateway's admin API: what each mailbox's history holds and costs.

``GET /api/v1/history`` (viewer): every mailbox with history, as last measured;
``GET /api/v1/history/{address}`` (viewer): one mailbox, measured now, with its snapshots;
``POST /api/v1/history/maintain`` (operator): take due snapshots and prune now (also hourly).
"""
from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException
from mailrepl.recovery.history import HistoryKeeper, HistorySpace
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.store.models import HistorySnapshot, Replica
from pydantic import BaseModel
from sqlalchemy import select

__all__ = ["find_replica", "history_router"]


class SpaceInfo(BaseModel):
    server: str
    address: str
    retention_days: float
    changes: int
    change_bytes: int
    snapshots: int
    snapshot_bytes: int
    body_bytes: int
    total_bytes: int
    oldest: datetime | None
    from_start: bool
    newest_snapshot_seq: int | None
    unavailable: str | None


class SnapshotInfo(BaseModel):
    seq: int
    at: datetime | None
    messages: int
    bytes: int
    taken_at: datetime


class HistoryDetail(SpaceInfo):
    snapshot_list: list[SnapshotInfo]


class HistoryList(BaseModel):
    mailboxes: list[SpaceInfo]


class MaintainResult(BaseModel):
    snapshots: int
    pruned_changes: int
    pruned_snapshots: int


def _info(space: HistorySpace) -> dict:
    return space.to_json()


def find_replica(s, address: str, server: str | None) -> Replica:
    q = select(Replica).where(Replica.address == address)
    if server is not None:
        q = q.where(Replica.server == server)
    reps = list(s.scalars(q))
    if not reps:
        raise HTTPException(404, f"no replicated mailbox {address!r}" + (f" of server {server!r}" if server else ""))
    if len(reps) > 1:
        raise HTTPException(409, f"{address!r} is replicated from several servers; name one with ?server=")
    return reps[0]


def history_router(keeper: HistoryKeeper, authz: Authorizer) -> APIRouter:
    r = APIRouter(prefix="/api/v1/history", tags=["history"], responses=ERROR_RESPONSES)
    viewer, operator = [Depends(authz.require("viewer"))], [Depends(authz.require("operator"))]

    @r.get("", response_model=HistoryList, dependencies=viewer)
    def list_history() -> HistoryList:
        spaces = sorted(keeper.spaces(), key=lambda x: (x.server, x.address))
        return HistoryList(mailboxes=[SpaceInfo(**_info(x)) for x in spaces])

    @r.post("/maintain", response_model=MaintainResult, dependencies=operator)
    def maintain() -> MaintainResult:
        """Take the base snapshots that are due and prune what no restore within retention needs."""
        return MaintainResult(**keeper.maintain())

    @r.get("/{address}", response_model=HistoryDetail, dependencies=viewer)
    def get_history(address: str, server: str | None = None) -> HistoryDetail:
        with keeper.store.read() as s:
            rep = find_replica(s, address, server)
            snaps = [SnapshotInfo(seq=x.seq, at=x.at, messages=x.messages, bytes=len(x.data), taken_at=x.taken_at)
                     for x in s.scalars(select(HistorySnapshot).where(HistorySnapshot.replica_id == rep.id)
                                        .order_by(HistorySnapshot.seq))]
            rid = rep.id
        space = keeper.space(rid, fresh=True)
        if space is None:
            raise HTTPException(404, f"no history is kept for {address!r} (history retention is 0)")
        return HistoryDetail(**_info(space), snapshot_list=snaps)

    return r
