"""The IMAP client connection against a scripted server on loopback.

Covers what a Dovecot with its usual capabilities never exercises: synchronising literals,
refusal at a literal, SASL without SASL-IR, BYE, timeouts, implicit TLS and STARTTLS, and how
the adapter maps login refusals and missing capabilities.
"""
from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import threading
import time
from datetime import datetime, timezone
from typing import Callable

import pytest

from mailrepl.shared.adapters.base import AppendItem
from mailrepl.shared.adapters.imap import ImapAdapter, ImapEndpoint
from mailrepl.shared.adapters.imap_client import ImapClient, make_ssl_context
from mailrepl.shared.adapters.imap_format import Literal
from mailrepl.shared.errors import AuthenticationFailed, MailboxNotFound, MessageRejected, ProtocolError, ServerUnavailable

CAPS = b"IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN"
LOGGED_IN_CAPS = b"IMAP4rev1 LITERAL+ CONDSTORE QRESYNC UIDPLUS ENABLE"


class Peer:
    """The server side of one connection, driven by a test script."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("client closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def command(self) -> tuple[bytes, bytes]:
        tag, _, rest = self.line().partition(b" ")
        return tag, rest

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self.sock.recv(65536)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def nothing_more(self, wait: float = 0.3) -> bool:
        """True if the client sends nothing within ``wait`` seconds."""
        self.sock.settimeout(wait)
        try:
            return not self.buf and not self.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(None)

    def starttls(self, ctx: ssl.SSLContext) -> None:
        self.sock = ctx.wrap_socket(self.sock, server_side=True)


class FakeServer:
    """Accepts one connection on loopback and runs ``script(peer)`` on it in a thread."""

    def __init__(self, script: Callable[[Peer], None], tls: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, args=(script, tls), daemon=True)
        self.thread.start()

    def _serve(self, script, tls) -> None:
        conn, _ = self.listener.accept()
        peer = Peer(conn)
        try:
            if tls is not None:
                peer.sock = tls.wrap_socket(conn, server_side=True)
            script(peer)
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            peer.sock.close()
            conn.close()
            self.listener.close()

    def finish(self) -> None:
        self.thread.join(10)
        if self.error is not None:
            raise self.error


def greet(peer: Peer, caps: bytes = CAPS) -> None:
    peer.send(b"* OK [CAPABILITY " + caps + b"] fake ready\r\n")


def serve_logout(peer: Peer) -> None:
    tag, rest = peer.command()
    assert rest == b"LOGOUT"
    peer.send(b"* BYE bye\r\n" + tag + b" OK done\r\n")


def test_synchronising_literal_waits_for_the_continuation_request():
    def script(peer):
        greet(peer, b"IMAP4rev1")
        tag, rest = peer.command()
        assert rest == b"APPEND INBOX {5}"
        assert peer.nothing_more()  # the client waits for "+"
        peer.send(b"+ go ahead\r\n")
        assert peer.exactly(7) == b"hello\r\n"
        peer.send(tag + b" OK [APPENDUID 7 3] done\r\n")
        serve_logout(peer)

    server = FakeServer(script)
    client = ImapClient.connect("127.0.0.1", server.port, timeout=5)
    res = client.run(b"APPEND INBOX ", Literal(b"hello"))
    assert (res.ok, res.code, res.code_args) == (True, "APPENDUID", ["7", "3"])
    client.close()
    server.finish()


def test_a_command_refused_at_its_literal_is_not_sent_further():
    def script(peer):
        greet(peer, b"IMAP4rev1")
        tag, rest = peer.command()
        assert rest == b"APPEND INBOX {9}"
        peer.send(tag + b" NO [TOOBIG] no thanks\r\n")
        tag, rest = peer.command()  # the literal never came: the next line is the next command
        assert rest == b"NOOP"
        peer.send(tag + b" OK fine\r\n")
        serve_logout(peer)

    server = FakeServer(script)
    client = ImapClient.connect("127.0.0.1", server.port, timeout=5)
    refused = client.run(b"APPEND INBOX ", Literal(b"too large"))
    assert (refused.status, refused.code) == ("NO", "TOOBIG")
    assert client.run(b"NOOP").ok
    client.close()
    server.finish()


def test_non_synchronising_literal8_pipelining_and_unsolicited_responses():
    def script(peer):
        greet(peer, CAPS + b" BINARY")
        tag1, rest = peer.command()
        assert rest == b"APPEND INBOX ~{3+}"
        assert peer.exactly(5) == b"a\x00b\r\n"
        tag2, rest = peer.command()
        assert rest == b"NOOP"
        peer.send(b"* 4 EXISTS\r\n" + tag1 + b" OK [APPENDUID 1 4] a\r\n" + tag2 + b" OK b\r\n* 5 EXISTS\r\n")
        serve_logout(peer)

    server = FakeServer(script)
    client = ImapClient.connect("127.0.0.1", server.port, timeout=5)
    first = client.send(b"APPEND INBOX ", Literal(b"a\x00b", binary=True))
    second = client.send(b"NOOP")
    assert client.busy
    assert client.result(second).ok
    assert [r.name for r in client.result(first).untagged] == ["EXISTS"]
    assert client.wait_unsolicited(2, lambda r: r.name == "EXISTS") and not client.busy
    client.close()
    server.finish()


def test_sasl_plain_without_initial_response():
    def script(peer):
        greet(peer, b"IMAP4rev1 AUTH=PLAIN")
        tag, rest = peer.command()
        assert rest == b"AUTHENTICATE PLAIN"
        peer.send(b"+ \r\n")
        assert base64.b64decode(peer.line()) == "alice\0repl\0sécret".encode()
        peer.send(tag + b" OK [CAPABILITY " + LOGGED_IN_CAPS + b"] in\r\n")
        serve_logout(peer)

    server = FakeServer(script)
    client = ImapClient.connect("127.0.0.1", server.port, timeout=5)
    assert client.authenticate_plain("alice", "repl", "sécret").ok
    assert "QRESYNC" in client.capabilities
    client.close()
    server.finish()


def test_idle_returns_on_the_first_event():
    def script(peer):
        greet(peer)
        tag, rest = peer.command()
        assert rest == b"IDLE"
        peer.send(b"+ idling\r\n")
        time.sleep(0.2)
        peer.send(b"* OK still here\r\n* 3 EXISTS\r\n")
        assert peer.line() == b"DONE"
        peer.send(tag + b" OK idle done\r\n")
        serve_logout(peer)

    server = FakeServer(script)
    client = ImapClient.connect("127.0.0.1", server.port, timeout=5)
    started = time.monotonic()
    assert client.idle(10, lambda r: r.name == "EXISTS")
    assert time.monotonic() - started < 5
    client.close()
    server.finish()


def test_bye_timeout_and_refusal_are_server_unavailable():
    def bye(peer):
        greet(peer)
        peer.command()
        peer.send(b"* BYE shutting down\r\n")

    server = FakeServer(bye)
    client = ImapClient.connect("127.0.0.1", server.port, timeout=5)
    with pytest.raises(ServerUnavailable, match="shutting down"):
        client.run(b"NOOP")
    with pytest.raises(ServerUnavailable):
        client.send(b"NOOP")
    client.close()  # never raises
    server.finish()

    def silent(peer):
        greet(peer)
        peer.command()
        time.sleep(1.0)

    server = FakeServer(silent)
    client = ImapClient.connect("127.0.0.1", server.port, timeout=0.3)
    with pytest.raises(ServerUnavailable) as timed_out:
        client.run(b"NOOP")
    assert timed_out.value.retryable
    server.finish()

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # nothing listens there once it is closed
    with pytest.raises(ServerUnavailable, match="cannot connect"):
        ImapClient.connect("127.0.0.1", port, timeout=2)


def test_a_completion_for_an_unknown_tag_is_a_protocol_error():
    def script(peer):
        greet(peer)
        peer.command()
        peer.send(b"X99 OK what\r\n")

    server = FakeServer(script)
    client = ImapClient.connect("127.0.0.1", server.port, timeout=5)
    with pytest.raises(ProtocolError, match="unknown command"):
        client.run(b"NOOP")
    assert client.closed
    server.finish()


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (made with the openssl command line tool)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not found")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    return server, str(d / "cert.pem")


def test_implicit_tls_verifies_the_certificate(certificate):
    server_ctx, ca_file = certificate

    def script(peer):
        greet(peer)
        serve_logout(peer)

    server = FakeServer(script, tls=server_ctx)
    client = ImapClient.connect("127.0.0.1", server.port, tls="tls", timeout=5,
                                ssl_context=make_ssl_context(ca_file=ca_file))
    assert "AUTH=PLAIN" in client.capabilities
    client.close()
    server.finish()

    server = FakeServer(lambda peer: None, tls=server_ctx)
    with pytest.raises(ServerUnavailable, match="certificate") as untrusted:
        ImapClient.connect("127.0.0.1", server.port, tls="tls", timeout=5, ssl_context=make_ssl_context())
    assert not untrusted.value.retryable
    server.thread.join(5)

    server = FakeServer(script, tls=server_ctx)
    client = ImapClient.connect("127.0.0.1", server.port, tls="tls", timeout=5,
                                ssl_context=make_ssl_context(verify=False))
    client.close()
    server.finish()


def test_starttls_upgrades_and_asks_for_capabilities_again(certificate):
    server_ctx, ca_file = certificate

    def script(peer):
        greet(peer, b"IMAP4rev1 STARTTLS LOGINDISABLED")
        tag, rest = peer.command()
        assert rest == b"STARTTLS"
        peer.send(tag + b" OK begin TLS\r\n")
        peer.starttls(server_ctx)
        tag, rest = peer.command()
        assert rest == b"CAPABILITY"
        peer.send(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK\r\n")
        serve_logout(peer)

    server = FakeServer(script)
    client = ImapClient.connect("127.0.0.1", server.port, tls="starttls", timeout=5,
                                ssl_context=make_ssl_context(ca_file=ca_file))
    assert "LOGINDISABLED" not in client.capabilities and "AUTH=PLAIN" in client.capabilities
    client.close()
    server.finish()


# --- the adapter's login ----------------------------------------------------------------------------


def adapter_for(server: FakeServer, auth: str = "sasl-plain") -> ImapAdapter:
    return ImapAdapter("fake", ImapEndpoint("127.0.0.1", server.port, "none", "repl", "secret", auth, timeout=5))


@pytest.mark.parametrize("code, error", [(b"AUTHORIZATIONFAILED", MailboxNotFound),
                                         (b"AUTHENTICATIONFAILED", AuthenticationFailed)])
def test_login_refusals_are_told_apart_by_response_code(code, error):
    def script(peer):
        greet(peer)
        tag, rest = peer.command()
        assert rest == b"AUTHENTICATE PLAIN " + base64.b64encode(b"nobody\0repl\0secret")
        peer.send(tag + b" NO [" + code + b"] refused\r\n")
        serve_logout(peer)

    server = FakeServer(script)
    with pytest.raises(error):
        adapter_for(server).open("nobody")
    server.finish()


def test_login_master_and_missing_qresync():
    def script(peer):
        greet(peer)
        tag, rest = peer.command()
        assert rest == b'LOGIN "alice*repl" "secret"'
        peer.send(tag + b" OK [CAPABILITY IMAP4rev1 CONDSTORE UIDPLUS] in\r\n")
        serve_logout(peer)

    server = FakeServer(script)
    with pytest.raises(ProtocolError, match="QRESYNC"):
        adapter_for(server, auth="login-master").open("alice")
    server.finish()


def reply(peer: Peer, expect: bytes, *lines: bytes) -> None:
    """Read the next command, check it is ``expect``, answer ``lines`` (TAG replaced by its tag)."""
    tag, rest = peer.command()
    assert rest == expect
    peer.send(b"".join(lines).replace(b"TAG", tag))


def log_in(peer: Peer, caps: bytes) -> None:
    """The adapter's open(): SASL login as alice, then its pipelined detection commands."""
    greet(peer)
    reply(peer, b"AUTHENTICATE PLAIN " + base64.b64encode(b"alice\0repl\0secret"),
          b"TAG OK [CAPABILITY " + caps + b"] in\r\n")
    reply(peer, b"ENABLE QRESYNC", b"* ENABLED QRESYNC\r\nTAG OK\r\n")
    reply(peer, b'LIST "" ""', b'* LIST (\\Noselect) "." ""\r\nTAG OK\r\n')
    reply(peer, b"STATUS INBOX (X-GUID)", b"TAG BAD unknown item\r\n")
    reply(peer, b"STATUS INBOX (UIDVALIDITY)", b"* STATUS INBOX (UIDVALIDITY 5)\r\nTAG OK\r\n")


def test_a_server_without_notify_or_guids_waits_with_idle_on_inbox():
    def script(peer):
        log_in(peer, LOGGED_IN_CAPS + b" IDLE UNSELECT")
        reply(peer, b'EXAMINE "INBOX"', b"* 0 EXISTS\r\n* OK [UIDVALIDITY 5] x\r\nTAG OK [READ-ONLY] x\r\n")
        tag, rest = peer.command()
        assert rest == b"IDLE"
        peer.send(b"+ idling\r\n* 1 EXISTS\r\n")
        assert peer.line() == b"DONE"
        peer.send(tag + b" OK done\r\n")
        reply(peer, b"UNSELECT", b"TAG OK\r\n")
        serve_logout(peer)

    server = FakeServer(script)
    session = adapter_for(server).open("alice")
    features = session.features
    assert (features.notify, features.idle, features.message_guid, features.folder_id) == (False, True, False, False)
    assert session.wait_for_change(10)
    session.close()
    server.finish()


def test_without_multiappend_a_refused_message_takes_the_stored_ones_back():
    bodies = [b"one\r\n", b"two\r\n", b"three\r\n"]

    def script(peer):
        log_in(peer, LOGGED_IN_CAPS + b" UNSELECT")
        answers = [b"OK [APPENDUID 9 4] stored", b"NO [LIMIT] too big", b"OK [APPENDUID 9 5] stored"]
        tags = []
        for body in bodies:
            tag, rest = peer.command()
            assert rest == b'APPEND "Lists.dev" (\\Seen) "02-Jan-2024 03:04:05 +0000" {%d+}' % len(body)
            assert peer.exactly(len(body) + 2) == body + b"\r\n"
            tags.append(tag)
        peer.send(b"".join(t + b" " + a + b"\r\n" for t, a in zip(tags, answers)))
        reply(peer, b'SELECT "Lists.dev"', b"* OK [UIDVALIDITY 9] x\r\nTAG OK [READ-WRITE] x\r\n")
        reply(peer, b"UID STORE 4:5 +FLAGS.SILENT (\\Deleted)", b"TAG OK\r\n")
        reply(peer, b"UID EXPUNGE 4:5", b"* VANISHED 4:5\r\nTAG OK\r\n")
        reply(peer, b"UNSELECT", b"TAG OK\r\n")
        serve_logout(peer)

    server = FakeServer(script)
    session = adapter_for(server).open("alice")
    date = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with pytest.raises(MessageRejected) as refused:
        session.append("Lists/dev", [AppendItem(b, frozenset({"\\Seen", "\\Recent"}), date) for b in bodies])
    assert refused.value.index == 1 and "LIMIT" in str(refused.value)
    session.close()
    server.finish()
