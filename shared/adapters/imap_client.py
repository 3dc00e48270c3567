"""A blocking IMAP4rev1 client connection: transport, tags, pipelining, literals, authentication.

Knows IMAP, not mailrepl: which commands to send is the adapter's business (``mailrepl.shared.adapters.imap``).
Every socket, TLS and parse failure is translated here into ``mailrepl.shared.errors``:

- ``ServerUnavailable``: connect/IO error, timeout, connection closed, ``* BYE`` (the connection
  is unusable afterwards; every later call raises it again). Certificate failures are not
  retryable.
- ``ProtocolError``: a response that cannot be parsed (the stream is out of step, so the
  connection is closed too), or a NO/BAD where the caller asked for :meth:`Result.check`.

Pipelining: :meth:`send` writes a command and returns its tag at once; :meth:`result` reads
until that tag completes. Untagged responses are attributed to the oldest command still
running; with no command running they are kept as *unsolicited* (NOTIFY events). A server may
run pipelined commands in parallel and interleave their untagged responses (Dovecot does with
FETCH), so callers must not rely on which of several pipelined commands a response is filed
under: commands pipelined together share one collector, or their results are read as a whole.
"""
from __future__ import annotations

import base64
import select
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import count
from typing import Callable

from mailrepl.shared.adapters.imap_format import Literal, astring
from mailrepl.shared.adapters.imap_protocol import ConnectionClosed, Response, ResponseReader, as_text
from mailrepl.shared.errors import ProtocolError, ServerUnavailable

__all__ = ["ImapClient", "Result", "make_ssl_context"]

_SEND_DIRECT = 64 * 1024  # data at least this big is written without joining into the command buffer
_LITERAL_MINUS_MAX = 4096  # RFC 7888: LITERAL- allows non-synchronising literals up to this size
_LOGOUT_TIMEOUT = 5.0

Collector = Callable[[Response], None]


@dataclass
class Result:
    """Completion of one command: its tagged status and the untagged responses it produced."""

    tag: str
    status: str  # OK, NO or BAD
    code: str | None = None
    code_args: list = field(default_factory=list)
    text: str = ""
    untagged: list[Response] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def describe(self) -> str:
        code = f"[{self.code}] " if self.code else ""
        return f"{self.status} {code}{self.text}".strip()

    def check(self, what: str) -> "Result":
        """Self if OK, else ``ProtocolError`` naming ``what`` and the server's answer."""
        if not self.ok:
            raise ProtocolError(f"{what}: server answered {self.describe()}")
        return self


def make_ssl_context(verify: bool = True, ca_file: str | None = None) -> ssl.SSLContext:
    """Client TLS context: system trust store (or ``ca_file``), hostname checked unless ``verify`` is off."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ImapClient:
    """One connection. Not thread-safe: one thread drives it at a time."""

    def __init__(self, sock: socket.socket, host: str, timeout: float) -> None:
        self._sock: socket.socket | None = sock
        self.host = host
        self.timeout = timeout
        self._reader = ResponseReader(self._recv_into)
        self.capabilities: frozenset[str] = frozenset()
        self._tags = count(1)
        self._pending: deque[str] = deque()
        self._collect: dict[str, list[Response] | Collector | None] = {}  # None: discard on arrival
        self._done: dict[str, Result] = {}
        self.unsolicited: deque[Response] = deque(maxlen=1024)
        self._logging_out = False

    # ------------------------------------------------------------------ connecting

    @classmethod
    def connect(cls, host: str, port: int, *, tls: str = "none", timeout: float = 30.0,
                ssl_context: ssl.SSLContext | None = None) -> "ImapClient":
        """Connect and read the greeting; ``tls`` is ``"none"``, ``"tls"`` (implicit) or ``"starttls"``."""
        if tls not in ("none", "tls", "starttls"):
            raise ValueError(f"tls must be none, tls or starttls, not {tls!r}")
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ServerUnavailable(f"cannot connect to {host}:{port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls == "tls":
            sock = cls._wrap(sock, host, ssl_context)
        client = cls(sock, host, timeout)
        try:
            greeting = client._read_one()
            if greeting.tag != "*" or greeting.name not in ("OK", "PREAUTH"):
                raise ServerUnavailable(f"{host}:{port} refused the connection: {greeting.name} {greeting.text}")
            if greeting.code == "CAPABILITY":
                client._set_capabilities(greeting.code_args)
            else:
                client.refresh_capabilities()
            if tls == "starttls":
                client._starttls(ssl_context)
        except BaseException:
            client._fail()
            raise
        return client

    @staticmethod
    def _wrap(sock: socket.socket, host: str, ctx: ssl.SSLContext | None) -> ssl.SSLSocket:
        try:
            return (ctx or make_ssl_context()).wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise ServerUnavailable(f"TLS certificate of {host} rejected: {exc.verify_message}",
                                    retryable=False) from exc
        except OSError as exc:
            sock.close()
            raise ServerUnavailable(f"TLS handshake with {host} failed: {exc}") from exc

    def _starttls(self, ctx: ssl.SSLContext | None) -> None:
        if "STARTTLS" not in self.capabilities:
            raise ProtocolError(f"{self.host} does not offer STARTTLS")
        self.run(b"STARTTLS").check("STARTTLS")
        if self._reader.buffered():
            # bytes that arrived before the handshake could be injected by an attacker
            raise ProtocolError("data received after STARTTLS before the TLS handshake")
        self._sock = self._wrap(self._sock, self.host, ctx)
        self._reader = ResponseReader(self._recv_into)
        self.refresh_capabilities()

    def refresh_capabilities(self) -> None:
        res = self.run(b"CAPABILITY").check("CAPABILITY")
        for r in res.untagged:
            if r.name == "CAPABILITY":
                self._set_capabilities(r.args)

    def _set_capabilities(self, tokens: list) -> None:
        self.capabilities = frozenset(as_text(t).upper() for t in tokens if t is not None)

    # ------------------------------------------------------------------ authentication

    def authenticate_plain(self, authzid: str, authcid: str, password: str) -> Result:
        """SASL PLAIN (RFC 4616), the initial response inline when the server offers SASL-IR.

        Returns the tagged result (the caller tells refusal reasons apart by response code);
        on success the capabilities are refreshed, since they change after login.
        """
        token = base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode("utf-8"))
        if "SASL-IR" in self.capabilities:
            tag = self.send(b"AUTHENTICATE PLAIN ", token)
        else:
            tag = self.send(b"AUTHENTICATE PLAIN")
            if self._await_continuation(tag):
                self._write([token, b"\r\n"])
        return self._after_login(self.result(tag))

    def login(self, user: str, password: str) -> Result:
        """LOGIN user password (strings quoted, or sent as literals if they need it)."""
        return self._after_login(self.run(b"LOGIN ", astring(user), b" ", astring(password)))

    def _after_login(self, res: Result) -> Result:
        if res.ok:
            if res.code == "CAPABILITY":
                self._set_capabilities(res.code_args)
            else:
                self.refresh_capabilities()
        return res

    # ------------------------------------------------------------------ commands

    def send(self, *parts: bytes | Literal, collect: Collector | None = None) -> str:
        """Write one command (``parts`` are concatenated; the tag and CRLF are added) and return its tag.

        Literals go non-synchronising when LITERAL+ (or LITERAL- for small ones) allows it;
        otherwise this waits for the server's continuation request. If the server refuses the
        command at a synchronising literal, the rest is not sent and :meth:`result` reports it.
        ``collect`` receives this command's untagged responses instead of the result keeping them.
        """
        self._ensure_open()
        tag = f"R{next(self._tags)}"
        self._pending.append(tag)
        self._collect[tag] = collect if collect is not None else []
        out: list[bytes] = [tag.encode("ascii"), b" "]
        for part in parts:
            if not isinstance(part, Literal):
                out.append(part)
                continue
            size = len(part.data)
            sync = not ("LITERAL+" in self.capabilities or
                        ("LITERAL-" in self.capabilities and size <= _LITERAL_MINUS_MAX))
            out.append(b"%s{%d%s}\r\n" % (b"~" if part.binary else b"", size, b"" if sync else b"+"))
            if sync:
                self._write(out)
                out = []
                if not self._await_continuation(tag):
                    return tag
            if size >= _SEND_DIRECT:
                self._write(out)
                out = []
                self._write([part.data])
            else:
                out.append(part.data)
        out.append(b"\r\n")
        self._write(out)
        return tag

    def result(self, tag: str) -> Result:
        """Read responses until ``tag`` completes; return its result (whatever its status)."""
        while tag not in self._done:
            if tag not in self._collect:
                raise ValueError(f"no command {tag} is waiting for a result")
            if self._read_one().tag == "+":
                self._fail()
                raise ProtocolError("unexpected continuation request from the server")
        return self._done.pop(tag)

    def run(self, *parts: bytes | Literal, collect: Collector | None = None) -> Result:
        return self.result(self.send(*parts, collect=collect))

    def discard(self, tag: str) -> None:
        """Forget a command's result: its responses are dropped as they arrive, nothing is kept."""
        if self._done.pop(tag, None) is None and tag in self._collect:
            self._collect[tag] = None

    @property
    def busy(self) -> bool:
        """True while any command sent has not completed yet."""
        return bool(self._pending)

    # ------------------------------------------------------------------ push

    def wait_unsolicited(self, timeout: float, is_event: Callable[[Response], bool]) -> bool:
        """Wait up to ``timeout`` s for an unsolicited response that ``is_event``; True if one came.

        Responses of commands still running are read (and routed) on the way.
        """
        deadline = time.monotonic() + timeout
        while True:
            if any(is_event(r) for r in self.unsolicited):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._readable(remaining):
                return False
            self._read_one()

    def idle(self, timeout: float, is_event: Callable[[Response], bool]) -> bool:
        """IDLE (RFC 2177) until an untagged response that ``is_event`` or ``timeout``; then DONE."""
        events: list[Response] = []
        tag = self.send(b"IDLE", collect=events.append)
        if not self._await_continuation(tag):
            self.result(tag).check("IDLE")
        deadline = time.monotonic() + timeout
        while not any(is_event(r) for r in events):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._readable(remaining):
                break
            if self._read_one().tag == "+":
                continue  # some servers repeat the continuation as a keep-alive
        self._write([b"DONE\r\n"])
        self.result(tag).check("IDLE")
        return any(is_event(r) for r in events)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """LOGOUT politely (briefly), then close the socket. Never raises."""
        if self._sock is None:
            return
        try:
            self._logging_out = True
            self._sock.settimeout(min(self.timeout, _LOGOUT_TIMEOUT))
            self.run(b"LOGOUT")
        except (ServerUnavailable, ProtocolError, OSError):
            pass
        finally:
            self._fail()

    @property
    def closed(self) -> bool:
        return self._sock is None

    # ------------------------------------------------------------------ internals

    def _ensure_open(self) -> None:
        if self._sock is None:
            raise ServerUnavailable(f"connection to {self.host} is closed")

    def _fail(self) -> None:
        """Drop the connection; the client is unusable afterwards."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _recv_into(self, view: memoryview) -> int:
        return self._sock.recv_into(view)

    def _write(self, chunks: list[bytes]) -> None:
        self._ensure_open()
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self._fail()
            raise ServerUnavailable(f"writing to {self.host} failed: {exc}") from exc

    def _readable(self, timeout: float) -> bool:
        """Whether a response can be read without blocking longer than ``timeout``."""
        self._ensure_open()
        if self._reader.buffered() or (isinstance(self._sock, ssl.SSLSocket) and self._sock.pending()):
            return True
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def _await_continuation(self, tag: str) -> bool:
        """Read until the server asks for more (True) or completes ``tag`` instead (False)."""
        while tag not in self._done:
            if self._read_one().tag == "+":
                return True
        return False

    def _read_one(self) -> Response:
        self._ensure_open()
        try:
            resp = self._reader.read()
        except (OSError, ConnectionClosed) as exc:
            self._fail()
            if self._logging_out:
                raise ServerUnavailable("connection closed during LOGOUT") from exc
            raise ServerUnavailable(f"reading from {self.host} failed: {exc or 'timed out'}") from exc
        except ProtocolError:
            self._fail()
            raise
        if resp.tag == "*":
            if resp.name == "BYE" and not self._logging_out:
                self._fail()
                raise ServerUnavailable(f"{self.host} closed the connection: {resp.text}")
            self._route(resp)
        elif resp.tag != "+":
            self._complete(resp)
        return resp

    def _route(self, resp: Response) -> None:
        if not self._pending:
            self.unsolicited.append(resp)
            return
        sink = self._collect[self._pending[0]]
        if sink is None:
            return
        if isinstance(sink, list):
            sink.append(resp)
        else:
            sink(resp)

    def _complete(self, resp: Response) -> None:
        if resp.tag not in self._collect:
            self._fail()
            raise ProtocolError(f"server completed unknown command {resp.tag!r}: {resp.name} {resp.text}")
        self._pending.remove(resp.tag)
        sink = self._collect.pop(resp.tag)
        if sink is None:
            return
        if resp.name not in ("OK", "NO", "BAD"):
            self._fail()
            raise ProtocolError(f"tagged response {resp.name!r} to {resp.tag}")
        self._done[resp.tag] = Result(resp.tag, resp.name, resp.code, resp.code_args, resp.text,
                                      sink if isinstance(sink, list) else [])
