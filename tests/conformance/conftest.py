"""The servers the adapter contract suite runs against.

``contract_env`` yields a :class:`ContractEnv` per adapter: the in-memory reference server, a
real Dovecot through the IMAP adapter, and the EWS adapter through exchangelib's real HTTP stack
against the EWS protocol-shape responder (``tests.support.ews_responder``). A new adapter joins
by adding an environment class and a parameter below; the tests themselves stay as they are.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager
from typing import Iterator

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


@pytest.fixture(params=["memory", pytest.param("imap-dovecot", marks=pytest.mark.dovecot), "ews-responder"])
def contract_env(request) -> Iterator[ContractEnv]:
    if request.param == "memory":
        env: ContractEnv = MemoryEnv()
    elif request.param == "ews-responder":
        env = EwsEnv()
    else:
        env = DovecotEnv(request.getfixturevalue("dovecot_factory"))
    try:
        yield env
    finally:
        env.close()
