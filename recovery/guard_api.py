"""Mass-delete guard routes of the recovery gateway's admin API (``mailrepl.recovery.delete_guard``).

``GET /api/v1/guard`` (viewer): the mailboxes whose deletions are held; ``POST
/api/v1/guard/{address}/release`` and ``…/discard`` (operator): play the held changes on the
standby, or drop the held deletions and play the rest; 409 while the mailbox is not replicating
(users on the standby: nothing is replayed into it).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException
from mailrepl.recovery.delete_guard import DeleteGuard
from mailrepl.recovery.history_api import find_replica
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.store.models import Replica
from pydantic import BaseModel
from sqlalchemy import select

__all__ = ["guard_router"]


class HeldInfo(BaseModel):
    server: str
    address: str
    tripped: bool
    since: str | None
    deletions: int | None
    mailbox_messages: int | None
    held: int


class HeldList(BaseModel):
    mailboxes: list[HeldInfo]


class Resolved(BaseModel):
    server: str
    address: str
    action: Literal["release", "discard"]
    played: int
    discarded: int
    rejected: int


def guard_router(guard: DeleteGuard, authz: Authorizer,
                 resolve: Callable[[int, bool], dict]) -> APIRouter:
    """``resolve(replica id, discard)``: play the held changes under the replica's lock."""
    r = APIRouter(prefix="/api/v1/guard", tags=["guard"], responses=ERROR_RESPONSES)
    viewer, operator = [Depends(authz.require("viewer"))], [Depends(authz.require("operator"))]

    @r.get("", response_model=HeldList, dependencies=viewer)
    def held() -> HeldList:
        out = []
        counts = guard.held_counts()
        with guard.store.read() as s:
            reps = {rep.id: rep for rep in s.scalars(select(Replica).where(Replica.id.in_(list(counts) or [-1])))}
        for rid, rep in sorted(reps.items(), key=lambda x: (x[1].server, x[1].address)):
            st = guard.status(rid) or {}
            out.append(HeldInfo(server=rep.server, address=rep.address, tripped=st.get("tripped", False),
                                since=st.get("since"), deletions=st.get("deletions"),
                                mailbox_messages=st.get("mailbox_messages"), held=st.get("held", 0)))
        return HeldList(mailboxes=out)

    def act(address: str, server: str | None, discard: bool) -> Resolved:
        with guard.store.read() as s:
            rep = find_replica(s, address, server)
            rid, srv = rep.id, rep.server
        if guard.status(rid) is None:
            raise HTTPException(409, f"nothing of {address!r} is held")
        result = resolve(rid, discard)
        return Resolved(server=srv, address=address, action="discard" if discard else "release", **result)

    @r.post("/{address}/release", response_model=Resolved, dependencies=operator)
    def release(address: str, server: str | None = None) -> Resolved:
        """Play the held changes on the standby, in their order: the deletions were wanted."""
        return act(address, server, False)

    @r.post("/{address}/discard", response_model=Resolved, dependencies=operator)
    def discard(address: str, server: str | None = None) -> Resolved:
        """Drop the held deletions (the standby keeps the messages); play the other held changes."""
        return act(address, server, True)

    return r
