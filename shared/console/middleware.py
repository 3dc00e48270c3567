"""The ``/ui`` routes of a gateway (an ASGI middleware outside the API's request guard).

- ``GET /ui/login``, ``POST /ui/login`` (form: ``token``, ``csrf``): sign-in with an API token,
  checked by the gateway's own resolver (the same as the API's); on success a session cookie
  ``mailrepl_session`` (HttpOnly, SameSite=Strict, Path=/ui, Secure over TLS);
- ``POST /ui/logout`` (``X-CSRF-Token`` or form ``csrf``);
- ``GET /ui/`` the console (sign-in page without a session), ``GET /ui/static/<file>``;
- ``GET /ui/session``: who is signed in, the role, the CSRF token, what this gateway can do;
- ``/ui/api/<path>``: forwarded to ``/api/v1/<path>`` of the same app with the session's token as
  ``Authorization: Bearer`` — through the request guard, the route's role check and the audit
  log exactly like any API client. Every method but GET/HEAD needs ``X-CSRF-Token`` equal to the
  session's (403 otherwise), and an ``Origin`` header, when sent, must be this gateway's.

Nothing from the browser is trusted: the sign-in body is capped (4 KiB) before it is parsed, a
forwarded path may only hold the characters of addresses and names, and cookies and
Authorization headers of the browser are not passed on.
"""
from __future__ import annotations

import html
import json
import re
import secrets
from importlib import resources
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs

import anyio.to_thread

from mailrepl.shared.console.sessions import Session, SessionStore
from mailrepl.shared.runtime.principals import ADMIN_ROLES, Principal, client_cert

__all__ = ["ConsoleMiddleware", "SESSION_COOKIE", "LOGIN_COOKIE", "CSRF_HEADER"]

SESSION_COOKIE = "mailrepl_session"
LOGIN_COOKIE = "mailrepl_login"
CSRF_HEADER = "x-csrf-token"
MAX_FORM_BYTES = 4096
STATIC = {"console.js": "text/javascript", "console.css": "text/css"}
_FORWARD = re.compile(r"[A-Za-z0-9._~@%+=-]+(/[A-Za-z0-9._~@%+=-]+)*\Z")
SAFE_METHODS = ("GET", "HEAD")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _asset(name: str) -> bytes:
    return resources.files("mailrepl.shared.console").joinpath("static", name).read_bytes()


class ConsoleMiddleware:
    def __init__(self, app, *, resolver: Callable[[str | None, Mapping[str, Any] | None], Principal | None],
                 sessions: SessionStore, info: Mapping[str, Any], secure: bool = False) -> None:
        self.app, self.resolver, self.sessions, self.info, self.secure = app, resolver, sessions, dict(info), secure
        self._assets = {name: _asset(name) for name in STATIC}
        self._index, self._login = _asset("index.html"), _asset("login.html").decode()

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/ui" or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        cookies = _cookies(headers.get("cookie", ""))
        session = self.sessions.get(cookies.get(SESSION_COOKIE))
        if path.startswith("/ui/api/"):
            await self._forward(scope, receive, send, method, headers, session, path[len("/ui/api/"):])
        elif path in ("/ui", "/ui/") and method in SAFE_METHODS:
            if session is None:
                await _redirect(send, "/ui/login")
            else:
                await _send(send, 200, self._index, "text/html; charset=utf-8", page=True)
        elif path == "/ui/login" and method in SAFE_METHODS:
            await self._login_page(send, "")
        elif path == "/ui/login" and method == "POST":
            await self._sign_in(scope, receive, send, headers, cookies)
        elif path == "/ui/logout" and method == "POST":
            form = await _read_form(receive, headers)
            if session is None or not session.csrf_ok(headers.get(CSRF_HEADER) or (form or {}).get("csrf")):
                await _json(send, 403, {"detail": "missing or wrong CSRF token"})
                return
            self.sessions.drop(session.id)
            await _redirect(send, "/ui/login", cookies=[self._cookie(SESSION_COOKIE, "", "/ui", expire=True)])
        elif path == "/ui/session" and method in SAFE_METHODS:
            if session is None:
                await _json(send, 401, {"detail": "not signed in"})
            else:
                await _json(send, 200, {"name": session.name, "role": session.role, "csrf": session.csrf, **self.info})
        elif path.startswith("/ui/static/") and method in SAFE_METHODS and path[len("/ui/static/"):] in STATIC:
            name = path[len("/ui/static/"):]
            await _send(send, 200, self._assets[name], STATIC[name] + "; charset=utf-8",
                        extra=[(b"cache-control", b"no-cache")])
        else:
            await _json(send, 404 if method in SAFE_METHODS or method == "POST" else 405, {"detail": "not found"})

    # ------------------------------------------------------------------ sign-in

    def _cookie(self, name: str, value: str, path: str, *, expire: bool = False) -> str:
        parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
        if self.secure:
            parts.append("Secure")
        if expire:
            parts.append("Max-Age=0")
        return "; ".join(parts)

    async def _login_page(self, send, error: str, status: int = 200) -> None:
        nonce = secrets.token_urlsafe(24)  # double-submit: the form field must match the cookie
        page = (self._login.replace("{{csrf}}", nonce)
                .replace("{{error}}", html.escape(error))
                .replace("{{error_class}}", "error" if error else "error hidden")
                .replace("{{gateway}}", html.escape(f"{self.info.get('gateway_role', '')} gateway "
                                                    f"{self.info.get('gateway_id', '')}")))
        await _send(send, status, page.encode(), "text/html; charset=utf-8", page=True,
                    cookies=[self._cookie(LOGIN_COOKIE, nonce, "/ui/login")])

    async def _sign_in(self, scope, receive, send, headers, cookies) -> None:
        form = await _read_form(receive, headers)
        if form is None:
            await _json(send, 413 if headers.get("content-length", "0").isdigit() else 400,
                        {"detail": f"a sign-in form of at most {MAX_FORM_BYTES} bytes, urlencoded"})
            return
        expected = cookies.get(LOGIN_COOKIE, "")
        if not expected or not secrets.compare_digest(form.get("csrf", "").encode(), expected.encode()):
            await _json(send, 403, {"detail": "missing or wrong CSRF token (reload the sign-in page)"})
            return
        token = form.get("token", "").strip()
        principal = None
        if token and len(token) <= 512 and token.isprintable():
            principal = await anyio.to_thread.run_sync(self.resolver, token, client_cert(scope))
        if principal is None or principal.role not in ADMIN_ROLES:
            await self._login_page(send, "This token is not accepted.", status=401)
            return
        s = self.sessions.create(token, principal.name, principal.role)
        await _redirect(send, "/ui/", cookies=[self._cookie(SESSION_COOKIE, s.id, "/ui"),
                                               self._cookie(LOGIN_COOKIE, "", "/ui/login", expire=True)])

    # ------------------------------------------------------------------ the API, as the session

    async def _forward(self, scope, receive, send, method: str, headers: dict[str, str],
                       session: Session | None, rest: str) -> None:
        if session is None:
            await _json(send, 401, {"detail": "not signed in"})
            return
        if method not in SAFE_METHODS:
            if not session.csrf_ok(headers.get(CSRF_HEADER)):
                await _json(send, 403, {"detail": "missing or wrong CSRF token"})
                return
            origin = headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1] != headers.get("host", ""):
                await _json(send, 403, {"detail": "request from another origin"})
                return
        if not _FORWARD.match(rest) or any(seg in (".", "..") for seg in rest.split("/")):
            await _json(send, 404, {"detail": "not found"})
            return
        keep = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in (b"cookie", b"authorization")]
        keep.append((b"authorization", f"Bearer {session.token}".encode()))
        inner = dict(scope, path="/api/v1/" + rest, raw_path=("/api/v1/" + rest).encode(), headers=keep)
        inner["state"] = {k: v for k, v in (scope.get("state") or {}).items() if k != "principal"}
        await self.app(inner, receive, send)


def _cookies(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";")[:50]:
        name, _, value = part.strip().partition("=")
        if name and name not in out:
            out[name] = value
    return out


async def _read_form(receive, headers: dict[str, str]) -> dict[str, str] | None:
    """An urlencoded form of at most MAX_FORM_BYTES (None beyond, or of another type)."""
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
        return None
    if headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return {} if not length or length == "0" else None
    body = b""
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return None
        body += msg.get("body", b"")
        if len(body) > MAX_FORM_BYTES:
            return None
        if not msg.get("more_body", False):
            break
    try:
        parsed = parse_qs(body.decode("utf-8"), max_num_fields=10, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in parsed.items()}


def _security_headers(page: bool) -> list[tuple[bytes, bytes]]:
    out = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
    if page:
        out += [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
                (b"cache-control", b"no-store")]
    return out


async def _send(send, status: int, body: bytes, ctype: str, *, page: bool = False,
                cookies: list[str] = (), extra: list[tuple[bytes, bytes]] = ()) -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
               *_security_headers(page), *extra, *((b"set-cookie", c.encode()) for c in cookies)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send, status: int, data: Any) -> None:
    await _send(send, status, json.dumps(data).encode(), "application/json",
                extra=[(b"cache-control", b"no-store")])


async def _redirect(send, location: str, cookies: list[str] = ()) -> None:
    headers = [(b"location", location.encode()), (b"content-length", b"0"), *_security_headers(False),
               *((b"set-cookie", c.encode()) for c in cookies)]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
