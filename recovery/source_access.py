"""Who may send what: the recovery gateway's binding of each source gateway to its identity.

A source gateway is recognised by its TLS client certificate (subject CN, the certificate signed
by ``gateway.tls_client_ca``: the TLS handshake already refused any other) or by its per-source
bearer token (TLS terminated in front of the gateway), each bound to one configured source id
(``[[sources]]``, ``mailrepl.recovery.settings.BoundSource``). Every ingest route then checks,
before anything is written:

- the caller is a source (401 otherwise), and the source id its request names (batch header,
  ``source`` query or body field) is the one it is bound to (403);
- every mailbox it names is of a primary server bound to it, and one of its mailboxes if the
  binding lists them (403);
- a batch's mailboxes exist on the standby server they replay into (422): the standby's
  ``users`` list when it is configured, else the standby is asked once per mailbox (a positive
  answer is kept; a negative one for :data:`NEGATIVE_TTL` seconds). A mailbox this gateway
  already replicates counts as existing. A standby that cannot answer refuses the batch with
  503 and ``Retry-After`` (the source sends it again).

A refused batch is refused as a whole: no replica row, no inbox row, no body is stored. The
answer names the refused mailboxes (``X-Mailrepl-Refused-Mailboxes``), so the source sets them
aside and the others keep replicating.
"""
from __future__ import annotations

import hmac
import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from mailrepl.recovery.settings import BoundSource
from mailrepl.shared.errors import AdapterError, MailboxNotFound
from mailrepl.shared.protocol.messages import REFUSED_MAILBOXES_HEADER, format_refused_mailboxes
from mailrepl.shared.protocol.wire import Batch
from mailrepl.shared.runtime.principals import SOURCE_ROLE, Principal, client_cert
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Replica

__all__ = ["SourceAccess", "NEGATIVE_TTL", "certificate_cn"]

log = logging.getLogger("mailrepl.recovery.access")

NEGATIVE_TTL = 60.0  # seconds an answer "the standby has no such mailbox" is kept
_bearer = HTTPBearer(auto_error=False)


def certificate_cn(cert: Mapping[str, Any] | None) -> str | None:
    """The subject common name of a certificate as ``ssl.getpeercert()`` returns it."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class SourceAccess:
    """The sources that may send, and the checks every ingest route makes.

    ``route`` maps a primary server name to the standby server it replays into (None: none);
    ``standbys`` are the standby servers' adapters by name (``list_mailboxes``, ``open``);
    ``store`` the recovery state (replicated mailboxes count as existing).
    """

    def __init__(self, sources: Sequence[BoundSource], route: Callable[[str], str | None],
                 standbys: Mapping[str, Any], store: Store | None = None) -> None:
        self.sources = {s.id: s for s in sources}
        self._by_cn = {s.certificate_cn: s for s in sources if s.certificate_cn is not None}
        self._tokens = [(s.token.encode(), s) for s in sources if s.token is not None]
        self.route = route
        self.standbys = dict(standbys)
        self.store = store
        self._known: set[tuple[str, str]] = set()  # (standby, address) the standby has
        self._absent: dict[tuple[str, str], float] = {}  # (standby, address) -> when it said no
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ authentication

    def resolve(self, token: str | None, cert: Mapping[str, Any] | None) -> Principal | None:
        """A :data:`~mailrepl.shared.runtime.principals.Resolver`: the source bound to the client
        certificate and/or the token; None if neither is known, or if they name different sources."""
        by_cert = self._by_cn.get(certificate_cn(cert)) if cert else None
        by_token = None
        if token is not None:
            given = token.encode()
            for expected, source in self._tokens:  # every token compared, in constant time
                if hmac.compare_digest(given, expected):
                    by_token = source
        if by_cert is not None and by_token is not None and by_cert is not by_token:
            return None
        found = by_cert or by_token
        return Principal(name=found.id, role=SOURCE_ROLE, source_id=found.id) if found else None

    def dependency(self) -> Callable[..., Principal]:
        """A FastAPI dependency: the calling source's principal, or 401."""

        def principal(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
            found = self.resolve(creds.credentials if creds else None, client_cert(request.scope))
            if found is None:
                raise HTTPException(401, "missing or wrong bearer token or client certificate: not bound to a "
                                         "[[sources]] entry", headers={"WWW-Authenticate": "Bearer"})
            return found

        return principal

    # ------------------------------------------------------------------ authorisation

    def source_of(self, principal: Principal, named: str) -> BoundSource:
        """The caller's binding, if ``named`` (the source id its request names) is its own; else 403."""
        bound = self.sources.get(principal.source_id or "")
        if bound is None or principal.role != SOURCE_ROLE:
            raise HTTPException(403, "only a source gateway may call this route")
        if named != bound.id:
            raise HTTPException(403, f"source {bound.id!r} may not act as source {named!r}")
        return bound

    def check_mailboxes(self, principal: Principal, named: str, mailboxes: Iterable[tuple[str, str]]) -> BoundSource:
        """:meth:`source_of`, and every (primary server, address) is one the source may send; else 403."""
        bound = self.source_of(principal, named)
        for server, address in mailboxes:
            why = _not_bound(bound, server, address)
            if why is not None:
                raise HTTPException(403, why)
        return bound

    def admit(self, principal: Principal, batch: Batch) -> None:
        """Everything a batch must pass before the receiver sees it (see the module docstring).

        A batch naming another source is refused (403). Otherwise every mailbox is checked, and a
        batch with any refused mailbox is refused whole (403 if one is not bound to the source,
        else 422), naming them all in the ``X-Mailrepl-Refused-Mailboxes`` header: the source sets
        those mailboxes aside and keeps shipping the others."""
        bound = self.source_of(principal, batch.source)
        refused: list[tuple[str, str, int, str]] = []
        for server, address in dict.fromkeys((seg.server, seg.address) for seg in batch.segments):
            if (why := _not_bound(bound, server, address)) is not None:
                refused.append((server, address, 403, why))
            elif (target := self.route(server)) is None:
                refused.append((server, address, 422, f"no standby server is configured for primary server {server!r}"))
            elif not self._standby_has(batch.source, server, target, address):
                refused.append((server, address, 422, f"the standby server {target!r} has no mailbox {address!r}"))
        if not refused:
            return
        status = 403 if any(r[2] == 403 for r in refused) else 422
        first = next(r for r in refused if r[2] == status)
        more = f" (and {len(refused) - 1} more mailbox(es) refused)" if len(refused) > 1 else ""
        log.warning("refused a batch of source %r: %s%s", bound.id, first[3], more)
        raise HTTPException(status, first[3] + more, headers={
            REFUSED_MAILBOXES_HEADER: format_refused_mailboxes((s, a) for s, a, _, _ in refused)})

    def _standby_has(self, source: str, server: str, target: str, address: str) -> bool:
        """Whether the standby ``target`` has the mailbox (cached; 503 if it cannot say)."""
        key = (target, address)
        with self._lock:
            if key in self._known:
                return True
            said_no = self._absent.get(key)
            if said_no is not None and time.monotonic() - said_no < NEGATIVE_TTL:
                return False
        adapter = self.standbys.get(target)
        if adapter is None:
            return False
        users = adapter.list_mailboxes()
        if users is not None:
            has = address.casefold() in {u.casefold() for u in users}
        elif self._replicated(source, server, address):
            has = True
        else:
            has = self._probe(adapter, address)
        with self._lock:
            if has:
                self._known.add(key)
                self._absent.pop(key, None)
            else:
                self._absent[key] = time.monotonic()
        return has

    def _replicated(self, source: str, server: str, address: str) -> bool:
        if self.store is None:
            return False
        with self.store.read() as s:
            return s.scalar(select(Replica.id).where(Replica.source_id == source, Replica.server == server,
                                                     Replica.address == address)) is not None

    @staticmethod
    def _probe(adapter: Any, address: str) -> bool:
        try:
            session = adapter.open(address)
        except MailboxNotFound:
            return False
        except AdapterError as exc:
            raise HTTPException(503, f"cannot ask the standby server whether it has {address!r}; try again later",
                                headers={"Retry-After": "30"}) from exc
        session.close()
        return True


def _not_bound(bound: BoundSource, server: str, address: str) -> str | None:
    """Why ``bound`` may not send this mailbox; None if it may."""
    if server not in bound.servers:
        return f"source {bound.id!r} may not send for primary server {server!r}"
    if not bound.may_send(server, address):
        return f"source {bound.id!r} may not send mailbox {address!r} of {server!r}"
    return None
