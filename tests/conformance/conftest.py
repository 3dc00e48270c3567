"""The servers the adapter contract suite runs against.

``contract_env`` yields a :class:`ContractEnv` per server: the in-memory reference server, a
real Dovecot through the IMAP adapter, real Cyrus IMAP 3.6 in Debian's default configuration and
in the recommended one (``tests.support.cyrus``; one shared instance per configuration, a new
user per test), the EWS adapter through exchangelib's real HTTP stack against the EWS
protocol-shape responder (``tests.support.ews_responder``), and a live IMAP server named by
environment variables (``MAILREPL_LIVE_IMAP_*``, see :class:`LiveImapEnv`; skipped when unset).
A new server joins by adding an environment class and a parameter below; the tests themselves
stay as they are, except for a documented server limitation marked on the test with
``limitation(env, server, reason)``.
"""
from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from mailrepl.shared.adapters.base import Adapter, MailboxSession
from mailrepl.shared.adapters.imap import ImapAdapter, ImapEndpoint

from tests.unit.memory_server import MemoryAdapter, MemoryServer

USER, OTHER_USER = "alice", "bob"


class ContractEnv(ABC):
    """One server with a test mailbox ``address``, as the contract suite needs it.

    - ``adapter``: the adapter under test, with the right service credentials
    - ``open_session()``: a new session on ``address`` (call it twice to watch one session's
      changes from another); all are closed at teardown
    - ``adapter_with_password(pw)``: the same server reached with another service password
    - ``server_down()``: a context in which the server cannot be reached
    - ``refused_body()``: a message body the server refuses to store
    """

    name: str
    adapter: Adapter
    request: pytest.FixtureRequest
    address = USER
    unknown_address = "nosuchuser"

    def __init__(self) -> None:
        self._sessions: list[MailboxSession] = []

    def open_session(self) -> MailboxSession:
        session = self.adapter.open(self.address)
        self._sessions.append(session)
        return session

    @abstractmethod
    def adapter_with_password(self, password: str) -> Adapter: ...

    @abstractmethod
    def server_down(self) -> AbstractContextManager[None]: ...

    @abstractmethod
    def refused_body(self) -> bytes: ...

    def close(self) -> None:
        for session in self._sessions:
            session.close()


class MemoryEnv(ContractEnv):
    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.server = MemoryServer([USER, OTHER_USER])
        self.adapter = MemoryAdapter("memory", self.server)

    def adapter_with_password(self, password: str) -> Adapter:
        return MemoryAdapter("memory", self.server, service_password=password)

    @contextmanager
    def server_down(self) -> Iterator[None]:
        self.server.down = True
        try:
            yield
        finally:
            self.server.down = False

    def refused_body(self) -> bytes:
        body = b"Subject: refused by policy\r\n\r\nno\r\n"
        self.server.reject.add(body)
        return body


class DovecotEnv(ContractEnv):
    name = "imap-dovecot"

    def __init__(self, dovecot_factory) -> None:
        super().__init__()
        self.server = dovecot_factory("contract", [USER, OTHER_USER])
        self.adapter = self._adapter(self.server.master_password)

    def _adapter(self, password: str) -> ImapAdapter:
        endpoint = ImapEndpoint(
            host="127.0.0.1", port=self.server.imap_port, tls="none", service_user=self.server.master_user,
            service_password=password, auth="sasl-plain", timeout=20.0,
        )
        return ImapAdapter("dovecot", endpoint, users=[USER, OTHER_USER])

    def adapter_with_password(self, password: str) -> Adapter:
        return self._adapter(password)

    @contextmanager
    def server_down(self) -> Iterator[None]:
        self.server.stop()
        try:
            yield
        finally:
            self.server.start()

    def refused_body(self) -> bytes:
        return b""  # Dovecot: "NO Can't save a zero byte message"


class CyrusEnv(ContractEnv):
    """Cyrus IMAP through its admin account (SASL PLAIN proxy login), a fresh user per test."""

    def __init__(self, cyrus) -> None:
        super().__init__()
        self.server = cyrus
        self.name = f"imap-cyrus-{cyrus.profile}"
        self.address = cyrus.unique_user("contract")
        self.unknown_address = f"nosuch{uuid.uuid4().hex[:12]}"
        self.adapter = self._adapter(cyrus.master_password)

    def _adapter(self, password: str) -> ImapAdapter:
        endpoint = ImapEndpoint(
            host=self.server.host, port=self.server.imap_port, tls="none", service_user=self.server.master_user,
            service_password=password, auth="sasl-plain", timeout=20.0,
        )
        return ImapAdapter("cyrus", endpoint, users=[self.address])

    def adapter_with_password(self, password: str) -> Adapter:
        return self._adapter(password)

    @contextmanager
    def server_down(self) -> Iterator[None]:
        self.server.stop()
        try:
            yield
        finally:
            self.server.start()

    def refused_body(self) -> bytes:
        return b"Subject: refused\r\nnot a header line\r\n\r\nCyrus: NO Message contains invalid header\r\n"


class LiveImapEnv(ContractEnv):
    """A live IMAP server: ``MAILREPL_LIVE_IMAP_HOST``, ``_PORT`` (143), ``_TLS`` (none, starttls,
    tls; default tls), ``_SERVICE_USER``, ``_SERVICE_PASSWORD``, ``_ADDRESS`` (a test mailbox the
    suite may fill and change), ``_UNKNOWN`` (an address that does not exist). Tests that need
    to stop the server or make it refuse a message are skipped."""

    name = "imap-live"

    def __init__(self) -> None:
        super().__init__()
        env = os.environ
        self.address = env["MAILREPL_LIVE_IMAP_ADDRESS"]
        self.unknown_address = env.get("MAILREPL_LIVE_IMAP_UNKNOWN", f"nosuch{uuid.uuid4().hex[:12]}")
        self.adapter = self._adapter(env["MAILREPL_LIVE_IMAP_SERVICE_PASSWORD"])

    def _adapter(self, password: str) -> ImapAdapter:
        env = os.environ
        endpoint = ImapEndpoint(
            host=env["MAILREPL_LIVE_IMAP_HOST"], port=int(env.get("MAILREPL_LIVE_IMAP_PORT", "993")),
            tls=env.get("MAILREPL_LIVE_IMAP_TLS", "tls"), service_user=env["MAILREPL_LIVE_IMAP_SERVICE_USER"],
            service_password=password, auth="sasl-plain", timeout=30.0,
        )
        return ImapAdapter("live", endpoint, users=[self.address])

    def adapter_with_password(self, password: str) -> Adapter:
        return self._adapter(password)

    def server_down(self) -> AbstractContextManager[None]:
        pytest.skip("a live server is not stopped by the tests")

    def refused_body(self) -> bytes:
        pytest.skip("no message is known to be refused by the live server")


def limitation(env: ContractEnv, server_prefix: str, reason: str) -> None:
    """Mark the running test as an expected failure on servers whose name starts with
    ``server_prefix`` (strict: it must fail there), naming the server behaviour in ``reason``."""
    if env.name.startswith(server_prefix):
        env.request.applymarker(pytest.mark.xfail(reason=f"{env.name}: {reason}", strict=True))


class EwsEnv(ContractEnv):
    """The EWS adapter (impersonation, Basic) against the protocol-shape responder."""

    name = "ews-responder"
    address = "alice@example.org"
    unknown_address = "nosuchuser@example.org"

    def __init__(self) -> None:
        super().__init__()
        from tests.support.ews_responder import SERVICE_PASSWORD, EwsResponder

        self.server = EwsResponder([self.address, "bob@example.org"]).start()
        self.adapter = self._adapter(SERVICE_PASSWORD)

    def _adapter(self, password: str) -> Adapter:
        from mailrepl.shared.adapters.ews import EwsAdapter, EwsEndpoint

        from tests.support.ews_responder import SERVICE_USER

        endpoint = EwsEndpoint(self.server.endpoint, SERVICE_USER, password, timeout=10.0, max_wait=1.5)
        return EwsAdapter("ews", endpoint)

    def adapter_with_password(self, password: str) -> Adapter:
        return self._adapter(password)

    @contextmanager
    def server_down(self) -> Iterator[None]:
        self.server.stop()
        try:
            yield
        finally:
            self.server.start()

    def refused_body(self) -> bytes:
        body = b"Subject: refused by policy\r\n\r\nno\r\n"
        self.server.store.reject.add(body)
        return body

    def close(self) -> None:
        super().close()
        self.server.stop()


LIVE_VARIABLES = ("MAILREPL_LIVE_IMAP_HOST", "MAILREPL_LIVE_IMAP_SERVICE_USER", "MAILREPL_LIVE_IMAP_SERVICE_PASSWORD",
                  "MAILREPL_LIVE_IMAP_ADDRESS")


@pytest.fixture(params=[
    "memory",
    pytest.param("imap-dovecot", marks=pytest.mark.dovecot),
    pytest.param("imap-cyrus-debian-default", marks=pytest.mark.cyrus),
    pytest.param("imap-cyrus-recommended", marks=pytest.mark.cyrus),
    "ews-responder",
    "imap-live",
])
def contract_env(request) -> Iterator[ContractEnv]:
    if request.param == "memory":
        env: ContractEnv = MemoryEnv()
    elif request.param == "ews-responder":
        env = EwsEnv()
    elif request.param.startswith("imap-cyrus-"):
        env = CyrusEnv(request.getfixturevalue("cyrus_instances")(request.param.removeprefix("imap-cyrus-")))
    elif request.param == "imap-live":
        missing = [v for v in LIVE_VARIABLES if not os.environ.get(v)]
        if missing:
            pytest.skip(f"no live IMAP server configured ({', '.join(missing)} unset)")
        env = LiveImapEnv()
    else:
        env = DovecotEnv(request.getfixturevalue("dovecot_factory"))
    env.request = request
    try:
        yield env
    finally:
        env.close()
