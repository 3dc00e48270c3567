"""Server-side push: a mail server tells the source gateway that a mailbox changed.

``POST /api/v1/push/{server}`` with ``{"user": "<address>"}`` (role viewer: it changes nothing,
it only starts that mailbox's capture cycle now instead of at its next poll). Dovecot's
push_notification plugin posts it from ``deploy/dovecot/mailrepl-push.lua`` after every
transaction that changed a mailbox. Unknown servers, unknown or unprotected mailboxes are
answered ``{"woken": false}`` (a mail server knows more users than are protected). The body is
small JSON capped by the request guard before it is read; answered calls are not written to the
audit log (one per change on the server), refused ones are.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

from fastapi import APIRouter, Depends
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Mailbox
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import bindparam, select

__all__ = ["PUSH_PREFIX", "PushCounter", "push_router"]

PUSH_PREFIX = "/api/v1/push"

# the protected mailbox a wake-up names: built once (one call per change on the server)
_WOKEN_QUERY = select(Mailbox.id).where(Mailbox.server == bindparam("server"), Mailbox.address == bindparam("address"),
                                        Mailbox.protected.is_(True), Mailbox.active_site == "primary")


class PushBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    user: str = Field(min_length=1, max_length=320, pattern=r"^[^\x00-\x1f\x7f]+$")


class PushAnswer(BaseModel):
    woken: bool


class PushCounter:
    """Wake-ups received (``mailrepl_source_push_wakeups_total``): woken, or for no protected mailbox."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.woken = self.ignored = 0

    def count(self, woken: bool) -> None:
        with self._lock:
            if woken:
                self.woken += 1
            else:
                self.ignored += 1


def push_router(store: Store, authz: Authorizer, wake: Callable[[Hashable], None], counter: PushCounter) -> APIRouter:
    r = APIRouter(prefix=PUSH_PREFIX, tags=["push"], responses=ERROR_RESPONSES)

    @r.post("/{server}", response_model=PushAnswer, dependencies=[Depends(authz.require("viewer"))])
    def push(server: str, body: PushBody) -> PushAnswer:
        with store.read() as s:
            mid = s.scalar(_WOKEN_QUERY, {"server": server, "address": body.user})
        if mid is not None:
            wake(mid)
        counter.count(mid is not None)
        return PushAnswer(woken=mid is not None)

    return r
