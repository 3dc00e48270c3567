"""Admin API routes both gateways share: API tokens and the audit log (role ``admin``).

``POST /api/v1/tokens`` ``{"name", "role"}`` -> the new token, shown once (201);
``GET /api/v1/tokens`` -> every token without secrets; ``DELETE /api/v1/tokens/{name}`` -> revoke;
``GET /api/v1/audit?limit=&since=`` -> the newest audit entries, newest first.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from mailrepl.shared.runtime.audit import AuditLog
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.runtime.principals import Principal
from mailrepl.shared.runtime.tokens import NoSuchToken, TokenExists, TokenStore

__all__ = ["security_router", "TokenRequest", "TokenInfoModel", "NewToken", "TokenList", "AuditEntryModel",
           "AuditList"]

MAX_AUDIT = 1000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    role: Literal["viewer", "operator", "admin"]


class TokenInfoModel(_Model):
    name: str
    role: str
    created_at: str
    created_by: str
    revoked_at: str | None


class NewToken(TokenInfoModel):
    token: str  # shown once: only its SHA-256 is kept


class TokenList(_Model):
    tokens: list[TokenInfoModel]


class AuditEntryModel(_Model):
    id: int
    at: str
    principal: str | None
    role: str | None
    method: str
    path: str
    target: str | None
    status: int


class AuditList(_Model):
    entries: list[AuditEntryModel]


def security_router(tokens: TokenStore, audit: AuditLog, authz: Authorizer) -> APIRouter:
    admin = authz.require("admin")
    r = APIRouter(prefix="/api/v1", tags=["security"], responses=ERROR_RESPONSES)

    @r.post("/tokens", response_model=NewToken, status_code=201, responses={409: {"description": "name in use"}})
    def create_token(body: TokenRequest, who: Principal = Depends(admin)) -> NewToken:
        """A new admin API token with a role; the token is in this answer only."""
        try:
            token, info = tokens.create(body.name, body.role, created_by=who.name)
        except TokenExists as exc:
            raise HTTPException(409, str(exc)) from exc
        return NewToken(token=token, **info.to_json())

    @r.get("/tokens", response_model=TokenList, dependencies=[Depends(admin)])
    def list_tokens() -> TokenList:
        return TokenList(tokens=[TokenInfoModel(**t.to_json()) for t in tokens.list()])

    @r.delete("/tokens/{name}", response_model=TokenInfoModel, dependencies=[Depends(admin)],
              responses={404: {"description": "no such token"}})
    def revoke_token(name: str) -> TokenInfoModel:
        """Refuse the token from the next request on (revoking twice changes nothing)."""
        try:
            return TokenInfoModel(**tokens.revoke(name).to_json())
        except NoSuchToken as exc:
            raise HTTPException(404, str(exc)) from exc

    @r.get("/audit", response_model=AuditList, dependencies=[Depends(admin)])
    def read_audit(limit: int = Query(default=100, ge=1, le=MAX_AUDIT),
                   since: datetime | None = Query(default=None, description="ISO 8601; without zone: UTC")) -> AuditList:
        """The newest audit entries (at or after ``since``), newest first."""
        if since is not None:
            since = since.replace(tzinfo=timezone.utc) if since.tzinfo is None else since.astimezone(timezone.utc)
        return AuditList(entries=[AuditEntryModel(**e.to_json()) for e in audit.entries(limit=limit, since=since)])

    return r
