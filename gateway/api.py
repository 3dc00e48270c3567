"""REST admin API of the source gateway (under /api/v1): status for viewers, protection for operators."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Response

from mailrepl.gateway.registry import Ambiguous, NotFound, Registry
from mailrepl.gateway.verify_jobs import last_verdict
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES, MailboxDetail, MailboxList, MailboxStatus, ProtectionBody, ServerProtection
from mailrepl.shared.runtime.authz import Authorizer

__all__ = ["admin_router"]


def admin_router(registry: Registry, authz: Authorizer, on_change) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["admin"], responses=ERROR_RESPONSES)
    viewer, operator = [Depends(authz.require("viewer"))], [Depends(authz.require("operator"))]

    def resolve(address: str, server: str | None) -> tuple[str, str]:
        try:
            return registry.resolve(address, server)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except Ambiguous as exc:
            raise HTTPException(409, str(exc)) from exc

    @r.get("/mailboxes", response_model=MailboxList, dependencies=viewer)
    def list_mailboxes() -> Response:
        # every status in one query, serialised once (10,000 mailboxes: not validated again)
        return MailboxList.model_construct(mailboxes=registry.list_status()).response()

    @r.get("/mailboxes/{address}", response_model=MailboxDetail, dependencies=viewer)
    def get_mailbox(address: str, server: str | None = None) -> MailboxDetail:
        srv, addr = resolve(address, server)
        try:
            detail = registry.detail(srv, addr)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        detail.verify = last_verdict(registry.store, srv, addr)
        return detail

    @r.put("/mailboxes/{address}/protection", response_model=MailboxStatus, dependencies=operator)
    def put_protection(address: str, body: ProtectionBody, server: str | None = None) -> MailboxStatus:
        srv, addr = resolve(address, server)
        try:
            status = registry.set_protection(srv, addr, body.enabled)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        on_change()
        return status

    @r.put("/servers/{server}/protection", response_model=ServerProtection, dependencies=operator)
    def put_server_protection(server: str, body: ProtectionBody) -> ServerProtection:
        try:
            statuses = registry.set_server_protection(server, body.enabled)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        on_change()
        return ServerProtection(server=server, mailboxes=statuses)

    return r
