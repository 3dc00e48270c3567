"""An EWS protocol-shape responder: a small HTTP/SOAP server on 127.0.0.1 for tests.

It answers the EWS operations the adapter uses with the XML shapes Microsoft documents (see
``tests.support.ews_operations`` and ``tests.support.ews_soap`` for the references per shape),
over an in-memory store of several mailboxes (``tests.support.ews_mailstore``). Tests drive
exchangelib's real HTTP stack against it. It is a protocol-shape check, not a claim of
compatibility with any Exchange release.

- Authentication: HTTP Basic for the service account (401 with ``WWW-Authenticate`` otherwise),
  or an OAuth2 bearer token.
- Mailbox: the ``ExchangeImpersonation`` header's ``PrimarySmtpAddress`` (the service account
  needs the ApplicationImpersonation role: ``impersonation_allowed``), else delegate access by
  the mailbox named in ``DistinguishedFolderId``. Unknown addresses get the
  ``ErrorNonExistentMailbox`` fault. (``exchangeimpersonation``, "Impersonation and EWS in
  Exchange")
- Faults to inject: ``busy(n, back_off_ms)`` (ErrorServerBusy SOAP fault with
  BackOffMilliseconds, "EWS throttling in Exchange"), ``http_500(n)`` (the IIS error page),
  ``drop(n)`` (connection closed without an answer), ``lose_answer(op)`` (the request runs,
  the answer is lost), ``before(op, fn)`` (run ``fn`` just before
  an operation, e.g. delete an item between a sync and the fetch), ``store.forget_sync_states()``
  (every sync state becomes ErrorInvalidSyncStateData).
- Streaming notifications: Subscribe / GetStreamingEvents / Unsubscribe
  (``tests.support.ews_streaming``).
"""
from __future__ import annotations

import base64
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from lxml import etree

from tests.support.ews_mailstore import MailStore, StoreError
from tests.support.ews_operations import OPERATIONS, Context
from tests.support.ews_soap import S, T, envelope, q, soap_fault
from tests.support.ews_streaming import stream_events

__all__ = ["EwsResponder", "Faults", "SERVICE_USER", "SERVICE_PASSWORD"]

SERVICE_USER, SERVICE_PASSWORD = "svc-mailrepl", "svc-secret"

IIS_500 = b"<html><head><title>Runtime Error</title></head><body><h1>Server Error in '/EWS' Application.</h1></body></html>"


@dataclass
class Faults:
    busy_left: int = 0
    busy_back_off_ms: int = 0
    http_500_left: int = 0
    drop_left: int = 0
    lose_answer_of: set[str] = field(default_factory=set)
    hooks: dict[str, list[Callable[[], None]]] = field(default_factory=dict)

    def busy(self, n: int, back_off_ms: int) -> None:
        self.busy_left, self.busy_back_off_ms = n, back_off_ms

    def http_500(self, n: int) -> None:
        self.http_500_left = n

    def drop(self, n: int) -> None:
        self.drop_left = n

    def lose_answer(self, op: str) -> None:
        """Run the next ``op`` request, then close the connection instead of answering."""
        self.lose_answer_of.add(op)

    def before(self, op: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` once, just before the next ``op`` request is answered."""
        self.hooks.setdefault(op, []).append(fn)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def _send(self, status: int, body: bytes, ctype: str = "text/xml; charset=utf-8", headers=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        responder = self.server.responder
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not responder.authorized(self.headers.get("Authorization", "")):
            responder.log.append(("401", time.monotonic()))
            self._send(401, b"", "text/html", {"WWW-Authenticate": 'Basic realm="127.0.0.1"'})
            return
        try:
            root = etree.fromstring(data)
            op_el = root.find(q(S, "Body"))[0]
        except (etree.XMLSyntaxError, TypeError, IndexError):
            self._send(400, b"bad request", "text/plain")
            return
        op = etree.QName(op_el).localname
        responder.log.append((op, time.monotonic()))
        if op == "GetStreamingEvents":  # a long-lived answer: never under the store lock
            stream_events(self, responder.store, op_el, responder.stream_seconds)
            return
        faults = responder.faults
        with responder.store.lock:
            if faults.drop_left:
                faults.drop_left -= 1
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if faults.http_500_left:
                faults.http_500_left -= 1
                self._send(500, IIS_500, "text/html")
                return
            if faults.busy_left:
                faults.busy_left -= 1
                self._send(500, soap_fault("ErrorServerBusy", "The server cannot service this request right now. Try again later.",
                                           faults.busy_back_off_ms))
                return
            for fn in faults.hooks.pop(op, []):
                fn()
            if op in faults.lose_answer_of:
                faults.lose_answer_of.discard(op)
                handler = OPERATIONS[op]
                handler(op_el, Context(responder.store, responder.store.mailbox(self._impersonated(root))))
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._answer(root, op, op_el)

    @staticmethod
    def _impersonated(root) -> str | None:
        path = f"{q(S, 'Header')}/{q(T, 'ExchangeImpersonation')}/{q(T, 'ConnectingSID')}/{q(T, 'PrimarySmtpAddress')}"
        return root.findtext(path)

    def _answer(self, root, op: str, op_el) -> None:
        responder = self.server.responder
        handler = OPERATIONS.get(op)
        if handler is None:
            self._send(500, soap_fault("ErrorInvalidRequest", f"The request is invalid: {op} is not supported here."))
            return
        smtp = self._impersonated(root)
        try:
            box = None
            if smtp:
                if not responder.impersonation_allowed:
                    raise StoreError("ErrorImpersonateUserDenied", "The account does not have permission to impersonate the requested user.")
                box = responder.store.mailbox(smtp)
            body = envelope(handler(op_el, Context(responder.store, box)))
        except StoreError as exc:
            self._send(500, soap_fault(exc.code, str(exc)))
            return
        self._send(200, body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    responder: "EwsResponder"

    def __init__(self, *args, **kwargs) -> None:
        self.connections: set[socket.socket] = set()
        self.stopping = False
        super().__init__(*args, **kwargs)


class EwsResponder:
    """``with EwsResponder(["alice@example.org"]) as ews: ews.endpoint`` -> the EWS URL."""

    def __init__(self, users, *, user: str = SERVICE_USER, password: str = SERVICE_PASSWORD,
                 bearer_token: str | None = None, impersonation_allowed: bool = True) -> None:
        self.store = MailStore(users)
        self.store.reject = set()  # MIME bodies CreateItem refuses (ErrorMimeContentConversionFailed)
        self.faults = Faults()
        self.log: list[tuple[str, float]] = []
        self.user, self.password, self.bearer_token = user, password, bearer_token
        self.impersonation_allowed = impersonation_allowed
        self.stream_seconds = 30.0  # GetStreamingEvents connections close after this (or ConnectionTimeout)
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/EWS/Exchange.asmx"

    def authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return self.bearer_token is not None and value == self.bearer_token
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return user.split("\\")[-1] == self.user and password == self.password

    def operations(self) -> list[str]:
        return [op for op, _ in self.log]

    def start(self) -> "EwsResponder":
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.responder = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="ews-responder", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (kept-alive ones too)."""
        if self._server is not None:
            self._server.stopping = True
            with self.store.changed:
                self.store.changed.notify_all()
            self._server.shutdown()
            self._server.server_close()
            for conn in list(self._server.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server = None

    def __enter__(self) -> "EwsResponder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
