"""What both gateways' REST APIs share: bearer-token auth, health, metrics, API docs, the status schema.

``/healthz`` is open (liveness probes). ``/metrics``, ``/docs``, ``/redoc`` and ``/openapi.json``
need a viewer token unless the gateway's ``metrics_open`` / ``docs_open`` setting opens them.
"""
from __future__ import annotations

import contextlib

import hmac
from typing import AsyncIterator, Callable, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict

from mailrepl.shared.errors import MailreplError
from mailrepl.shared.runtime.authz import AUTH_RESPONSES, Authorizer

__all__ = [
    "bearer_auth",
    "make_app",
    "ByteCounts",
    "MailboxStatus",
    "MailboxDetail",
    "FolderStatus",
    "SeedingProgress",
    "RejectedInfo",
    "ProtectionBody",
    "ServerProtection",
    "MailboxList",
]

_bearer = HTTPBearer(auto_error=False)


def bearer_auth(token: str) -> Callable:
    """A dependency accepting exactly ``Authorization: Bearer <token>`` (constant-time compare)."""

    def check(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return check


def make_app(
    title: str, registry: CollectorRegistry, health: Callable[[], dict], refresh: Callable[[], None] = lambda: None,
    *, authz: Authorizer, metrics_open: bool = False, docs_open: bool = False,
    start: Callable[[], None] = lambda: None, stop: Callable[[], None] = lambda: None,
) -> FastAPI:
    """The FastAPI app of a gateway: ``start``/``stop`` run the gateway's workers with the server.

    ``/metrics`` and the API docs need a viewer token (``authz``) unless ``metrics_open`` /
    ``docs_open``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        start()
        try:
            yield
        finally:
            stop()

    app = FastAPI(title=title, version="1", openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)
    viewer = [Depends(authz.require("viewer"))]
    metrics_guard = [] if metrics_open else viewer
    docs_guard = [] if docs_open else viewer
    metrics_doc = {} if metrics_open else {"responses": AUTH_RESPONSES}
    docs_doc = dict(include_in_schema=False)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        return {"status": "ok", **health()}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse, dependencies=metrics_guard, **metrics_doc)
    def metrics() -> PlainTextResponse:
        refresh()
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", dependencies=docs_guard, **docs_doc)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=docs_guard, **docs_doc)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{title} - API")

    @app.get("/redoc", dependencies=docs_guard, **docs_doc)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{title} - API")

    @app.exception_handler(MailreplError)
    def _mailrepl_error(_: Request, exc: MailreplError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503 if exc.retryable else 500)

    return app


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProtectionBody(_Model):
    enabled: bool


class RejectedInfo(_Model):
    seq: int
    folder: str
    reason: str


class ByteCounts(_Model):
    """What crossed the WAN for a mailbox, and what dedup and compression saved."""

    captured: int  # message bodies as captured from the server
    shipped_raw: int  # bodies the shipped changes refer to
    sent_before_compression: int  # skeletons and parts not already held at DR
    wire: int  # bytes on the wire (this mailbox's share of the compressed batches)
    saved_by_dedup: int  # shipped_raw - sent_before_compression
    saved_by_compression: int  # sent_before_compression - wire

    @classmethod
    def of(cls, captured: int, raw: int, payload: int, wire: int) -> "ByteCounts":
        return cls(captured=captured, shipped_raw=raw, sent_before_compression=payload, wire=wire,
                   saved_by_dedup=max(0, raw - payload), saved_by_compression=max(0, payload - wire))


class MailboxStatus(_Model):
    address: str
    server: str
    protected: bool
    phase: Literal["idle", "seeding", "replicating", "error"]
    active_site: Literal["primary", "dr"]
    copy_queue: int | None
    replay_queue: int | None
    lag_seconds: float | None
    last_captured_seq: int
    last_applied_seq: int | None
    error: str | None
    rejected: int
    bytes: ByteCounts | None = None  # on the capturing side
    site_state: str | None = None  # replicating, cutting-over, active-at-dr, failing-back, switching-back


class FolderStatus(_Model):
    name: str
    cursor: str | None
    messages: int | None
    pending: int


class SeedingProgress(_Model):
    messages_done: int
    messages_total: int
    bytes_done: int
    bytes_total: int


class SiteTransitionInfo(_Model):
    before: str
    after: str
    actor: str  # admin, auto, source
    detail: str | None
    at: str


class MailboxDetail(MailboxStatus):
    folders: list[FolderStatus]
    seeding: SeedingProgress
    rejected_messages: list[RejectedInfo]
    site_since: str | None = None
    transitions: list[SiteTransitionInfo] = []
    failback_report: dict | None = None
    # recovery gateway: the DR capture state matches everything applied (a cutover reads nothing)
    standby_view_current: bool | None = None


class MailboxList(_Model):
    mailboxes: list[MailboxStatus]


class ServerProtection(_Model):
    server: str
    mailboxes: list[MailboxStatus]
