"""The request guard: what every API request of a gateway passes before any body byte is read.

A pure ASGI middleware (:class:`RequestGuard`, installed by ``api_common.make_app``), in order:

1. **authentication** — the bearer token (``Authorization: Bearer …``) and the TLS client
   certificate of the connection go to the gateway's :data:`~mailrepl.shared.runtime.principals.Resolver`;
   no principal → ``401`` with ``WWW-Authenticate: Bearer``, except on the policy's open paths.
   The principal is kept in ``scope["state"]["principal"]`` (``request.state.principal``).
   *Which* principal may use a route is decided by the route itself, afterwards;
2. **media type** — a request with a body whose ``Content-Type`` is not one the route takes → ``415``;
3. **body cap** — a ``Content-Length`` over the route's cap → ``413`` at once; without one (chunked)
   the body is counted as the application reads it, and the read that passes the cap fails with
   ``413`` — nothing beyond the cap is buffered;
4. **concurrency** — a route with ``max_concurrent`` answers ``429`` with ``Retry-After`` while that
   many of its requests are under way (back-pressure; the shipper waits, see ``peer_client``).

Any refusal of a request whose body was not read to its end closes the connection
(``Connection: close``), so the server stops reading it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, MutableMapping

import anyio.to_thread
from starlette.exceptions import HTTPException

from mailrepl.shared.runtime.principals import Resolver, client_cert

__all__ = ["BodyRule", "GuardPolicy", "RequestGuard", "JSON"]

JSON = "application/json"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, eq=False)
class BodyRule:
    """What a route takes: a body of at most ``max_bytes`` of one of ``media_types``, and at most
    ``max_concurrent`` requests at a time (None: unbounded)."""

    max_bytes: int
    media_types: tuple[str, ...] = (JSON,)
    max_concurrent: int | None = None
    retry_after: int = 1  # seconds a client told "busy" (429) should wait


@dataclass(frozen=True)
class GuardPolicy:
    """A gateway's guard: who may in (``resolver``; ``open_paths`` need no credentials), and the
    body rule of each ``(METHOD, path)`` (``default`` for every other request)."""

    resolver: Resolver
    default: BodyRule
    open_paths: frozenset[str] = frozenset({"/healthz"})
    routes: Mapping[tuple[str, str], BodyRule] = field(default_factory=dict)

    def rule(self, method: str, path: str) -> BodyRule:
        return self.routes.get((method, path), self.default)


class RequestGuard:
    """The ASGI middleware applying a :class:`GuardPolicy` (see the module docstring)."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy
        self._busy: dict[int, int] = {}  # id(rule) -> requests under way (one event loop: no lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        length_text = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length: int | None = None
        if length_text is not None:
            if not length_text.isdigit() or len(length_text) > 20:
                await _refuse(send, 400, "Content-Length is not a number", close=True)
                return
            length = int(length_text)
        has_body = chunked or bool(length)
        path, method = scope["path"], scope["method"]

        if path not in self.policy.open_paths:
            # a stored token is looked up in the state store: off the event loop
            principal = await anyio.to_thread.run_sync(self.policy.resolver, _bearer(headers.get("authorization")),
                                                       client_cert(scope))
            if principal is None:
                await _refuse(send, 401, "missing or wrong credentials", close=has_body,
                              extra=[(b"www-authenticate", b"Bearer")])
                return
            scope.setdefault("state", {})["principal"] = principal

        rule = self.policy.rule(method, path)
        if has_body:
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media not in rule.media_types:
                await _refuse(send, 415, f"expected Content-Type {' or '.join(rule.media_types)}, "
                                         f"got {media or 'none'}", close=True)
                return
            if length is not None and length > rule.max_bytes:
                await _refuse(send, 413, f"request body larger than {rule.max_bytes} bytes", close=True)
                return

        key = id(rule)
        if rule.max_concurrent is not None:
            if self._busy.get(key, 0) >= rule.max_concurrent:
                await _refuse(send, 429, f"busy: {rule.max_concurrent} such requests under way; retry later",
                              close=has_body, extra=[(b"retry-after", str(rule.retry_after).encode())])
                return
            self._busy[key] = self._busy.get(key, 0) + 1
        try:
            await self._run(scope, receive, send, rule.max_bytes, has_body)
        finally:
            if rule.max_concurrent is not None:
                self._busy[key] -= 1

    async def _run(self, scope: Scope, receive: Receive, send: Send, cap: int, has_body: bool) -> None:
        seen = 0
        done = not has_body
        started = False

        async def counted() -> Message:
            nonlocal seen, done
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if not message.get("more_body", False):
                    done = True
                if seen > cap:
                    raise HTTPException(413, f"request body larger than {cap} bytes")
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not done:  # the rest of the body will not be read: end the connection
                    message = dict(message)
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except HTTPException as exc:  # a read past the cap that the application did not handle
            if started or exc.status_code != 413:
                raise
            await _refuse(send, 413, str(exc.detail), close=True)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _refuse(send: Send, status: int, detail: str, *, close: bool,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode()), *(extra or [])]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
