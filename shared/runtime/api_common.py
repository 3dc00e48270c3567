"""What both gateways' REST APIs share: health, metrics, API docs, the status schema, the
request guard (``guard.py``), role checks (``authz.py``) and how errors answer.

``/healthz`` is open (liveness probes). ``/metrics``, ``/docs``, ``/redoc`` and ``/openapi.json``
need a viewer token unless the gateway's ``metrics_open`` / ``docs_open`` setting opens them.

Errors: a refused request is a 4xx with a one-line ``detail``; a 5xx is only our own fault and
never carries SQL or exception text (a state-store failure answers a generic 503 and logs the
detail); a retryable failure carries ``Retry-After`` (bounded). Request validation errors never
echo the input (a ``1e400`` or ``NaN`` in a body is a 422, not a 500).
"""
from __future__ import annotations

import contextlib
import logging
import math

import hmac
from typing import Any, AsyncIterator, Callable, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, StrictBool

from mailrepl.shared.errors import MailreplError, StoreError
from mailrepl.shared.runtime.authz import AUTH_RESPONSES, Authorizer
from mailrepl.shared.runtime.guard import GuardPolicy, RequestGuard

__all__ = [
    "ERROR_RESPONSES",
    "RETRY_AFTER_MAX",
    "bearer_auth",
    "make_app",
    "retry_after",
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
log = logging.getLogger("mailrepl.api")

RETRY_AFTER_MAX = 60  # seconds: the longest back-off an answer asks for


class ErrorDetail(BaseModel):
    detail: Any


# the refusals every guarded route may answer (documented in the OpenAPI schema)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "malformed request (a batch that does not decode)"},
    401: {"model": ErrorDetail, "description": "missing or wrong credentials"},
    403: {"model": ErrorDetail, "description": "the credentials' role may not do this"},
    404: {"model": ErrorDetail, "description": "no such mailbox or server"},
    409: {"model": ErrorDetail, "description": "ambiguous, or the mailbox's state does not allow it"},
    413: {"model": ErrorDetail, "description": "request body over the route's limit"},
    415: {"model": ErrorDetail, "description": "unsupported Content-Type"},
    422: {"model": ErrorDetail, "description": "the request does not validate"},
    429: {"model": ErrorDetail, "description": "busy: retry after Retry-After seconds"},
    503: {"model": ErrorDetail, "description": "temporarily unavailable: retry after Retry-After seconds"},
}


def retry_after(back_off: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1, at most ``RETRY_AFTER_MAX``."""
    if not math.isfinite(back_off):
        return str(RETRY_AFTER_MAX)
    return str(max(1, min(RETRY_AFTER_MAX, math.ceil(back_off))))


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
    guard: GuardPolicy | None = None,
) -> FastAPI:
    """The FastAPI app of a gateway: ``start``/``stop`` run the gateway's workers with the server;
    ``guard`` authenticates and bounds every request before its body is read; routes check roles
    with ``authz``. ``/metrics`` and the API docs need a viewer token unless ``metrics_open`` /
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
    def _mailrepl_error(request: Request, exc: MailreplError) -> JSONResponse:
        if isinstance(exc, StoreError):
            log.error("%s %s: state store failed: %s", request.method, request.url.path, exc)
            detail = "the state store is unavailable; retry later"
        else:
            log.warning("%s %s: %s: %s", request.method, request.url.path, exc.__class__.__name__, exc)
            detail = " ".join(str(exc).split())[:300]  # our own one-line message, no control characters
        if exc.retryable:
            return JSONResponse({"detail": detail}, status_code=503,
                                headers={"Retry-After": retry_after(exc.back_off)})
        return JSONResponse({"detail": detail}, status_code=500)

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # the input is not echoed (it may be huge, a secret, or a float JSON cannot carry)
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    if guard is not None:
        app.add_middleware(RequestGuard, policy=guard)
    return app


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ProtectionBody(_Model):
    enabled: StrictBool  # {"enabled": "yes"} is refused, not read as true


class RejectedInfo(_Model):
    seq: int
    folder: str
    reason: str
    message_id: str | None = None
    subject: str | None = None
    date: str | None = None


class AlteredInfo(_Model):
    """A message the standby stored with other bytes than were sent."""

    seq: int
    folder: str
    what: str
    sha256: str
    standby_sha256: str
    sent_size: int
    stored_size: int
    message_id: str | None = None
    subject: str | None = None
    date: str | None = None


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
    altered: int = 0  # recovery gateway: messages the standby stored otherwise than sent
    bytes: ByteCounts | None = None  # on the capturing side
    site_state: str | None = None  # replicating, cutting-over, active-at-dr, failing-back, switching-back
    # back-pressure (source gateway): what the outbox holds for this mailbox (captured, not yet
    # applied at DR) in bytes of bodies, and its alarm: "warning: …", "full: … capture paused", "disk full: …"
    queue_bytes: int | None = None
    queue_alarm: str | None = None
    # history (recovery gateway): bytes the mailbox's history holds; None: no history kept
    history_bytes: int | None = None
    # mass-delete guard (recovery gateway): changes held for an operator; None: nothing held
    held_deletions: int | None = None
    # lagged copy (recovery gateway): the replay delay and the received changes not yet due
    replay_delay_seconds: float | None = None
    delayed_changes: int | None = None


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
    # recovery gateway: messages the standby stored otherwise than sent (e.g. 8-bit headers rewritten)
    altered_messages: list[AlteredInfo] = []
    site_since: str | None = None
    transitions: list[SiteTransitionInfo] = []
    failback_report: dict | None = None
    # recovery gateway: the DR capture state matches everything applied (a cutover reads nothing)
    standby_view_current: bool | None = None
    # source gateway: the last verify of this mailbox (verdict, job, at, kinds, differences)
    verify: dict | None = None
    # recovery gateway: what the mass-delete guard holds of this mailbox (each with a ``message``)
    holds: list[dict] | None = None


class MailboxList(_Model):
    mailboxes: list[MailboxStatus]

    def response(self) -> Response:
        """This list as its JSON answer, serialised once: built from the state store's typed columns
        (``model_construct``), so not validated and converted again on the way out as a route's
        return value would be (10,000 mailboxes: most of a listing's time)."""
        return Response(content=self.model_dump_json(), media_type="application/json")


class ServerProtection(_Model):
    server: str
    mailboxes: list[MailboxStatus]
