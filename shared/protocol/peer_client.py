"""The source gateway's client of the recovery gateway: one method per peer route, typed.

::

    peer = make_peer_client(url, token=..., source_id="hq", timeout=60, ca_file=None,
                            client_cert=None, client_key=None)
    peer.missing(shas, keys)     POST /api/v1/ingest/missing  -> HeldAnswer (what it lacks)
    peer.send_batch(data)        POST /api/v1/ingest/batches  -> Ack
    peer.progress()              GET  /api/v1/ingest/progress -> Ack
    peer.sites()                 GET  /api/v1/ingest/sites    -> SitesAnswer
    peer.reverse(progress)       POST /api/v1/ingest/reverse  -> Batch, or None (204)
    peer.resync(server, address) POST /api/v1/ingest/resync   -> base_seq
    peer.rebase(request)         POST /api/v1/ingest/rebase   -> RebaseAnswer
    peer.verify(server, address, folders)  POST /api/v1/ingest/verify -> VerifyAnswer
    peer.verify_remove(server, address, removals)  POST /api/v1/ingest/verify-remove -> how many queued

Requests and answers are the models of ``mailrepl.shared.protocol.messages``; batches and
acknowledgements the wire format of ``mailrepl.shared.protocol.wire``. Every request carries
this source's token (``Authorization: Bearer``) when it has one; with mutual TLS the client
certificate identifies the source instead (or as well). Transport and HTTP failures are mapped in one place
(``PeerClient._exchange``), unreadable answers next to it (``_answer``, ``_ack``)::

    no HTTP answer (refused, DNS, TLS, timeout)     TransportError              retryable, back_off 1 s
    5xx, 429 (busy or broken)                       PeerRefused(status_code)    retryable, back_off 1 s,
                                                    or its Retry-After (at most 300 s)
    any other unexpected status (409, 422...)       PeerRefused(status_code)    retryable, back_off 1 s
                                                    (a refused batch: back_off 5 s)
    401 (the ingest token)                          PeerRefused(401), a message that names the token
    403 (not this source's mailbox or source id)    PeerRefused(403), a message that names the binding
    an answer that does not parse                   WireError (UnsupportedVersion for a newer Ack)
    a request that does not fit its model           WireError, and nothing is sent
    a reverse answer that is not a batch            TransportError (a proxy's page, say)

so callers catch ``mailrepl.shared.errors`` types only and tell a refusal from a lost link by
type and ``status_code`` (a re-base refused with 409 is computed again), never by message text.

This module is the one place the gateway-to-gateway HTTP connection is made
(:func:`make_peer_client`: base URL, timeout, the CA that verifies the recovery gateway, this
gateway's client certificate) and used (:class:`PeerClient`). Tests inject any ``httpx.Client`` (FastAPI's ``TestClient``, an
``httpx.MockTransport``) in place of the real connection.
"""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from mailrepl.shared.errors import PeerRefused, TransportError, WireError
from mailrepl.shared.protocol.messages import (
    REFUSED_MAILBOXES_HEADER, parse_refused_mailboxes,
    HeldAnswer, HeldQuery, MailboxRef, RebaseAnswer, RebaseRequest, ResyncAnswer, ReverseProgress, ReverseRequest,
    SitesAnswer, VerifyAnswer, VerifyRemoveAnswer, VerifyRemoveRequest, VerifyRequest,
)
from mailrepl.shared.protocol.wire import MEDIA_TYPE, Ack, Batch, decode_batch

__all__ = [
    "HttpClient",
    "HttpTransport",
    "HELD_QUERY_MAX",
    "REFUSED_BATCH_BACK_OFF",
    "PeerClient",
    "as_peer_client",
    "make_peer_client",
    "client_tls_context",
]

HttpClient = httpx.Client  # what a PeerClient wraps (FastAPI's TestClient is one too)
HttpTransport = httpx.BaseTransport  # what make_peer_client may be given instead of the network

PREFIX = "/api/v1/ingest"
HELD_QUERY_MAX = 10_000  # bodies or parts asked about per /missing request
REFUSED_BATCH_BACK_OFF = 5.0  # a batch refused (4xx): wait longer before sending it again
RETRY_AFTER_MAX = 300  # seconds: the longest Retry-After (429/503) this client waits
_DETAIL_MAX = 200

_A = TypeVar("_A", bound=BaseModel)


class PeerClient:
    """The recovery gateway's ingest API, as the source gateway ``source_id`` calls it.

    ``http`` is an ``httpx.Client`` whose base URL is the recovery gateway (see
    :func:`make_peer_client`); ``token`` the ingest token. The client holds no other state than
    ``reverse_bytes``, the bytes of reverse batches received so far, as they travelled.
    """

    def __init__(self, http: httpx.Client, *, token: str | None, source_id: str) -> None:
        self.http = http
        self.source_id = source_id
        self._token = token
        self.reverse_bytes = 0

    def over(self, http: httpx.Client) -> PeerClient:
        """The same peer (token, source id) reached through another HTTP client."""
        return PeerClient(http, token=self._token, source_id=self.source_id)

    def close(self) -> None:
        """Close the HTTP client (connections in its pool)."""
        self.http.close()

    # ------------------------------------------------------------------ forward replication

    def missing(self, shas: Sequence[str], keys: Sequence[str]) -> HeldAnswer:
        """Of these message bodies (SHA-256) and parts (XXH3-128), the ones the peer lacks.

        Asked ``HELD_QUERY_MAX`` at a time; nothing is asked when both are empty.
        """
        lacking_shas: list[str] = []
        lacking_keys: list[str] = []
        for i in range(0, max(len(shas), len(keys)), HELD_QUERY_MAX):
            query = _request(HeldQuery, dict(messages=list(shas[i : i + HELD_QUERY_MAX]),
                                             parts=list(keys[i : i + HELD_QUERY_MAX])), "a body query")
            r = self._exchange("POST", "/missing", "a body query", json=query.model_dump(mode="json"))
            answer = _answer(r, HeldAnswer, "a body query")
            lacking_shas += answer.messages
            lacking_keys += answer.parts
        # each answer was checked; together they may exceed one answer's limit
        return HeldAnswer.model_construct(messages=lacking_shas, parts=lacking_keys)

    def send_batch(self, data: bytes, *, paced: Iterable[bytes] | None = None) -> Ack:
        """Send one encoded batch (``wire.encode_batch``); the peer's acknowledgement.

        ``paced``: the same bytes as chunks that a rate cap lets through one by one
        (``link_rate.LinkRateCap.chunks``); the length is still announced up front."""
        headers = {"Content-Type": MEDIA_TYPE}
        if paced is not None:
            headers["Content-Length"] = str(len(data))
        r = self._exchange("POST", "/batches", "a batch", content=data if paced is None else paced, headers=headers,
                           refused_back_off=REFUSED_BATCH_BACK_OFF)
        return _ack(r, "a batch")

    def progress(self, *, seen: str | None = None, wait: float = 0.0) -> Ack:
        """How far the peer has applied (acknowledgements otherwise only come with batches).

        ``seen``: the ``token`` of an earlier answer; the peer then answers once a replay pass
        applied something after it, or after ``wait`` seconds, with only the mailboxes applied
        since (a peer that does not know the token, or gives none, answers at once with all)."""
        params: dict[str, Any] = {"source": self.source_id}
        kw: dict[str, Any] = {}
        if seen is not None and wait > 0:
            params.update(seen=seen, wait=f"{wait:g}")
            t = self.http.timeout
            kw["timeout"] = httpx.Timeout(connect=t.connect, read=(t.read or 0.0) + wait, write=t.write, pool=t.pool)
        r = self._exchange("GET", "/progress", "a progress query", params=params, **kw)
        return _ack(r, "a progress query")

    # ------------------------------------------------------------------ cutover and failback

    def sites(self) -> SitesAnswer:
        """The peer's gateway id and this source's mailboxes that are not replicating."""
        r = self._exchange("GET", "/sites", "a site-state query", params={"source": self.source_id})
        return _answer(r, SitesAnswer, "a site-state query")

    def reverse(self, progress: Sequence[ReverseProgress | Mapping[str, Any]]) -> Batch | None:
        """Report failback progress; the next batch of standby changes, decoded, or None (204).

        The batch's size on the wire is added to ``reverse_bytes`` before it is decoded.
        """
        body = _request(ReverseRequest, dict(source=self.source_id, progress=list(progress)), "a failback pull")
        r = self._exchange("POST", "/reverse", "a failback pull", json=body.model_dump(mode="json"), ok=(200, 204))
        if r.status_code == 204:
            return None
        ctype = r.headers.get("content-type", "").split(";")[0]
        if ctype != MEDIA_TYPE:
            raise TransportError(f"recovery gateway answered {r.status_code} to a failback pull with "
                                 f"{ctype or 'no Content-Type'}, not {MEDIA_TYPE}: {_detail(r)}")
        self.reverse_bytes += len(r.content)
        return decode_batch(r.content, born_ids=True)

    def resync(self, server: str, address: str) -> int:
        """Ask for a full resync of one mailbox; the sequence number after which its copy follows."""
        body = _request(MailboxRef, dict(source=self.source_id, server=server, address=address), "a resync request")
        r = self._exchange("POST", "/resync", "a resync request", json=body.model_dump(mode="json"))
        return _answer(r, ResyncAnswer, "a resync request").base_seq

    def rebase(self, request: RebaseRequest | Mapping[str, Any]) -> RebaseAnswer:
        """Report a re-based mailbox; its failback status. A refusal (the peer's state does not
        allow it yet) is ``PeerRefused`` with ``status_code`` 409."""
        body = _request(RebaseRequest, request, "a re-base request")
        r = self._exchange("POST", "/rebase", "a re-base request", json=body.model_dump(mode="json"))
        return _answer(r, RebaseAnswer, "a re-base request")

    # ------------------------------------------------------------------ verify

    def verify(self, server: str, address: str, folders: Sequence[str] = ()) -> VerifyAnswer:
        """The standby copy of one mailbox: its folders, and ``folders`` message by message."""
        body = _request(VerifyRequest, dict(source=self.source_id, server=server, address=address,
                                            folders=list(folders)), "a verify listing")
        r = self._exchange("POST", "/verify", "a verify listing", json=body.model_dump(mode="json"))
        return _answer(r, VerifyAnswer, "a verify listing")

    def verify_remove(self, server: str, address: str, removals: Sequence[Mapping[str, Any]]) -> int:
        """Standby copies the primary lacks, removed at the next reset of their folder; how many
        were queued (``removals``: ``{"folder", "uidvalidity", "messages": [[uid, sha256], ...]}``)."""
        body = _request(VerifyRemoveRequest, dict(source=self.source_id, server=server, address=address,
                                                  folders=list(removals)), "a verify repair")
        r = self._exchange("POST", "/verify-remove", "a verify repair", json=body.model_dump(mode="json"))
        return _answer(r, VerifyRemoveAnswer, "a verify repair").queued

    # ------------------------------------------------------------------ HTTP

    def _exchange(self, method: str, route: str, what: str, *, ok: tuple[int, ...] = (200,),
                  refused_back_off: float | None = None, headers: Mapping[str, str] | None = None,
                  **kw: Any) -> httpx.Response:
        """One request to ``PREFIX + route`` with the token; any failure as a mailrepl error."""
        try:
            auth = {"Authorization": f"Bearer {self._token}"} if self._token is not None else {}
            r = self.http.request(method, PREFIX + route, headers={**(headers or {}), **auth}, **kw)
        except httpx.HTTPError as exc:
            raise TransportError(f"recovery gateway unreachable: {exc.__class__.__name__}: {exc}") from exc
        # The answer is read in full. The response and its stream refer to each other, and the
        # response holds its request and with it the body sent (a batch: megabytes): let the
        # stream go, or that body would wait for the cyclic garbage collector.
        r.stream = httpx.ByteStream(b"")
        if r.status_code in ok:
            return r
        code, detail = r.status_code, _detail(r)
        if code >= 500 or code == 429:  # busy or broken: try again soon, or when it says
            raise PeerRefused(f"recovery gateway answered {code} to {what}: {detail}", status_code=code, detail=detail,
                              back_off=_retry_after(r))
        if code == 401:
            message = (f"recovery gateway refused the ingest token ({code}) on {what}: {detail}; "
                       "check the [peer] token or client certificate of this gateway and the [[sources]] entry "
                       "of the recovery gateway")
        elif code == 403:
            message = (f"recovery gateway refused {what} (403): {detail}; check this gateway's id and the "
                       "[[sources]] entry (servers, mailboxes) bound to it at the recovery gateway")
        else:
            message = f"recovery gateway answered {code} to {what}: {detail}"
        raise PeerRefused(message, status_code=code, detail=detail, back_off=refused_back_off,
                          mailboxes=parse_refused_mailboxes(r.headers.get(REFUSED_MAILBOXES_HEADER)))


def _retry_after(r: httpx.Response) -> float | None:
    """The answer's ``Retry-After`` in seconds (delay-seconds form), bounded; None without one."""
    value = r.headers.get("retry-after", "").strip()
    if not value.isdigit():
        return None
    return float(min(int(value), RETRY_AFTER_MAX))


def _request(model: type[_A], data: _A | Mapping[str, Any], what: str) -> _A:
    """``data`` as the request model (a request the peer would refuse is not sent)."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise WireError(f"cannot send {what}: {_why(exc)}") from exc


def _answer(r: httpx.Response, model: type[_A], what: str) -> _A:
    try:
        return model.model_validate_json(r.content)
    except ValidationError as exc:
        raise WireError(f"unreadable answer to {what}: {_why(exc)}") from exc


def _ack(r: httpx.Response, what: str) -> Ack:
    try:
        data = r.json()
    except ValueError as exc:
        raise WireError(f"unreadable acknowledgement of {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise WireError(f"unreadable acknowledgement of {what}: a JSON {type(data).__name__}, not an object")
    return Ack.from_json(data)  # WireError / UnsupportedVersion itself


def _why(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "the document"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first.get('msg', '')}{more}"


def _detail(r: httpx.Response) -> str:
    """The API's ``detail`` (FastAPI: a string, or a list of validation errors), else the body."""
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg', '')}"
                           if isinstance(d, dict) else str(d) for d in detail)
    if not detail:
        detail = r.text or r.reason_phrase
    return " ".join(str(detail).split())[:_DETAIL_MAX]


def as_peer_client(client: PeerClient | httpx.Client, *, token: str | None, source_id: str) -> PeerClient:
    """``client`` if it is a PeerClient (of ``source_id``), else a PeerClient over that HTTP client."""
    if isinstance(client, PeerClient):
        if client.source_id != source_id:
            raise ValueError(f"peer client of source {client.source_id!r} used for source {source_id!r}")
        return client
    if token is None:
        raise ValueError("an HTTP client needs the ingest token to become a peer client")
    return PeerClient(client, token=token, source_id=source_id)


def client_tls_context(ca_file: Path | str | None = None, client_cert: Path | str | None = None,
                       client_key: Path | str | None = None) -> ssl.SSLContext:
    """A client TLS context: ``ca_file`` (PEM) verifies the server instead of the system's CAs;
    ``client_cert``/``client_key`` (PEM) are presented for mutual TLS."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if client_cert is not None:
        context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    return context


def make_peer_client(url: str, *, token: str | None, source_id: str, timeout: float,
                     ca_file: Path | str | None = None, client_cert: Path | str | None = None,
                     client_key: Path | str | None = None,
                     transport: httpx.BaseTransport | None = None) -> PeerClient:
    """The client of the recovery gateway at ``url``: ``ca_file`` (PEM) verifies its certificate
    instead of the system's CAs; ``client_cert``/``client_key`` identify this source (mutual TLS);
    ``token`` (None: none) is sent as ``Authorization: Bearer``; ``transport`` replaces the
    network (tests)."""
    verify: ssl.SSLContext | bool = (client_tls_context(ca_file, client_cert, client_key)
                                     if ca_file or client_cert else True)
    http = httpx.Client(base_url=url, timeout=timeout, transport=transport, verify=verify)
    return PeerClient(http, token=token, source_id=source_id)
