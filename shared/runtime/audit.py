"""The audit log of both gateways' admin APIs: who did what, when, with what outcome.

:class:`AuditMiddleware` (ASGI) watches the admin API (``/api/v1`` without the source
gateways' ``/api/v1/ingest``) and the gated ops pages (``/metrics``, API docs). It records

- every state-changing call (POST, PUT, PATCH, DELETE), whatever its outcome;
- every refused call (401, 403), whatever its method;

with the principal the route authorised (``request.state.principal``: name and role; none when
the credentials were missing or wrong), the method, the path, a short summary of the target
(addresses, server, token name, role; never a secret) and the HTTP status. Entries are written
to the state store's ``audit_log`` table after the response is known and logged on the
``mailrepl.audit`` logger, with control characters escaped. ``GET /api/v1/audit`` reads them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, MutableMapping
from urllib.parse import parse_qsl

import anyio
from sqlalchemy import select

from mailrepl.shared.model import utcnow
from mailrepl.shared.runtime.process import escape_controls
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import AuditEntry

__all__ = ["AuditRecord", "AuditLog", "AuditMiddleware"]

log = logging.getLogger("mailrepl.audit")

CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REFUSED = frozenset({401, 403})
BODY_CAP = 64 * 1024  # of a request body kept to summarise its target (admin bodies are small)
TARGET_CAP = 500
_BODY_KEYS = ("addresses", "server", "all", "enabled", "confirm", "abort", "name", "role")
_QUERY_KEYS = ("server", "grace_seconds")
_ADDRESSES_SHOWN = 5


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    principal: str | None
    role: str | None
    method: str
    path: str
    target: str | None
    status: int
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(id=self.id, at=self.at.isoformat(), principal=self.principal, role=self.role, method=self.method,
                    path=self.path, target=self.target, status=self.status)


class AuditLog:
    """The ``audit_log`` table."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, rec: AuditRecord) -> None:
        who = f"{rec.principal} ({rec.role})" if rec.principal else "unauthenticated caller"
        line = f"{rec.method} {rec.path}" + (f" [{rec.target}]" if rec.target else "") + f" by {who} -> {rec.status}"
        log.log(logging.WARNING if rec.status in REFUSED else logging.INFO, "%s", escape_controls(line))
        with self.store.tx() as s:
            s.add(AuditEntry(at=rec.at, principal=rec.principal, role=rec.role, method=rec.method, path=rec.path[:2000],
                             target=rec.target, status=rec.status))

    def entries(self, *, limit: int = 100, since: datetime | None = None) -> list[AuditRecord]:
        """The newest ``limit`` entries (at or after ``since``), newest first."""
        q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if since is not None:
            q = q.where(AuditEntry.at >= since)
        with self.store.read() as s:
            return [AuditRecord(at=e.at, principal=e.principal, role=e.role, method=e.method, path=e.path,
                                target=e.target, status=e.status, id=e.id) for e in s.scalars(q)]


def _summary(body: bytes, query: bytes) -> str | None:
    """The target of a call in a few words: the JSON body's and query's non-secret keys."""
    parts: list[str] = []
    try:
        doc = json.loads(body) if body else None
    except (ValueError, RecursionError):  # a hostile body is summarised as nothing
        doc = None
    if isinstance(doc, dict):
        for key in _BODY_KEYS:
            value = doc.get(key)
            if value is None or value == [] or value is False and key in ("all", "confirm", "abort"):
                continue
            if key == "addresses" and isinstance(value, list):
                shown = ",".join(str(a) for a in value[:_ADDRESSES_SHOWN])
                more = len(value) - _ADDRESSES_SHOWN
                value = shown + (f" (+{more} more)" if more > 0 else "")
            parts.append(f"{key}={value}")
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key in _QUERY_KEYS:
            parts.append(f"{key}={value}")
    if not parts:
        return None
    return escape_controls(" ".join(parts))[:TARGET_CAP]


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AuditMiddleware:
    """Records the watched calls of an ASGI app in an :class:`AuditLog` once their status is known."""

    def __init__(self, app, audit: AuditLog, *, prefix: str = "/api/v1", exclude: tuple[str, ...] = ("/api/v1/ingest",),
                 also: tuple[str, ...] = ("/metrics", "/docs", "/redoc", "/openapi.json"),
                 refusals_only: tuple[str, ...] = ()) -> None:
        self.app = app
        self.audit = audit
        self.prefix, self.exclude, self.also = prefix, exclude, also
        self.refusals_only = refusals_only  # calls that change nothing however they are made: refusals only

    def _watched(self, path: str) -> bool:
        if path in self.also:
            return True
        return (path == self.prefix or path.startswith(self.prefix + "/")) and not any(
            path == e or path.startswith(e + "/") for e in self.exclude)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._watched(scope["path"]):
            await self.app(scope, receive, send)
            return
        method = scope["method"].upper()
        path = scope["path"]
        changing = method in CHANGING and not any(path == p or path.startswith(p + "/") for p in self.refusals_only)
        body = bytearray()
        status = 500

        async def receive_kept() -> MutableMapping[str, Any]:
            message = await receive()
            if changing and message["type"] == "http.request" and len(body) < BODY_CAP:
                body.extend(message.get("body", b"")[: BODY_CAP - len(body)])
            return message

        recorded = False

        async def record() -> None:
            nonlocal recorded
            recorded = True
            if not (changing or status in REFUSED):
                return
            principal = (scope.get("state") or {}).get("principal")
            rec = AuditRecord(
                at=utcnow(), principal=getattr(principal, "name", None), role=getattr(principal, "role", None),
                method=method, path=escape_controls(scope["path"]),
                target=_summary(bytes(body), scope.get("query_string", b"")), status=status,
            )
            try:
                await anyio.to_thread.run_sync(self.audit.record, rec)
            except Exception:  # noqa: BLE001 - the call is answered anyway; a lost entry is logged
                log.exception("could not write the audit entry of %s %s", method, escape_controls(scope["path"]))

        async def send_seen(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # written before the caller hears the answer: the log's order is the order in
                # which callers saw their calls answered
                await record()
            await send(message)

        try:
            await self.app(scope, receive_kept, send_seen)
        finally:
            if not recorded:  # no answer was started (the application failed): recorded as a 500
                await record()
