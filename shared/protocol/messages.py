"""The JSON requests and answers between gateways, defined once for both ends.

The source gateway always calls; the recovery gateway answers (ingest token, ``/api/v1/ingest``)::

    POST /missing     HeldQuery                        -> HeldAnswer     bodies and parts it lacks
    POST /batches     a wire batch (binary, wire.py)   -> Ack            acknowledgement (wire.py)
    GET  /progress    ?source=<gateway id>             -> Ack            how far it applied
    GET  /sites       ?source=<gateway id>             -> SitesAnswer    mailboxes not replicating, resyncs
    POST /reverse     ReverseRequest                   -> a wire batch, or 204: nothing to pull
    POST /resync      MailboxRef                       -> ResyncAnswer   full resync of one mailbox
    POST /rebase      RebaseRequest                    -> RebaseAnswer   back to replicating
    POST /verify      VerifyRequest                    -> VerifyAnswer   the standby copy, listed
    POST /verify-remove VerifyRemoveRequest            -> VerifyRemoveAnswer  copies a resync removes

The recovery gateway's routes (``mailrepl.recovery.api``, ``mailrepl.recovery.site_api``,
``mailrepl.recovery.verify_listing``) validate
requests with these models and answer with them; the source gateway's client
(``mailrepl.shared.protocol.peer_client``) sends and reads them. Field names, defaults and limits
are the wire format: renaming one is a protocol change. Requests refuse unknown fields (a typo is a
422, never silently ignored); answers ignore fields they do not know, so a newer recovery gateway
may add some without breaking an older source gateway.

The binary batch and its acknowledgement are in ``mailrepl.shared.protocol.wire``.
"""
from __future__ import annotations

import json

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

__all__ = [
    "REFUSED_MAILBOXES_HEADER",
    "format_refused_mailboxes",
    "parse_refused_mailboxes",
    "HELD_QUERY_LIMIT",
    "Name",
    "Seq",
    "HeldQuery",
    "HeldAnswer",
    "MailboxSite",
    "ResyncWanted",
    "SitesAnswer",
    "ReverseProgress",
    "ReverseRequest",
    "MailboxRef",
    "ResyncAnswer",
    "RebaseRequest",
    "RebaseAnswer",
    "VERIFY_FOLDERS_MAX",
    "VerifyRequest",
    "VerifyEntry",
    "VerifyFolder",
    "VerifyAnswer",
    "VerifyRemoval",
    "VerifyRemoveRequest",
    "VerifyRemoveAnswer",
]

# On a batch refused because of some of its mailboxes (403: not bound to the source; 422: the
# standby lacks them), the recovery gateway names them in this header (JSON, ASCII) so that the
# source sets those mailboxes aside and keeps shipping the others.
REFUSED_MAILBOXES_HEADER = "X-Mailrepl-Refused-Mailboxes"
REFUSED_MAILBOXES_MAX = 200  # named per answer; the rest are found on the next attempt
_REFUSED_HEADER_BYTES = 32 * 1024


def format_refused_mailboxes(pairs) -> str:
    """The header value for (server, address) pairs: a JSON list, ASCII-only, bounded."""
    out, size = [], 2
    for server, address in list(pairs)[:REFUSED_MAILBOXES_MAX]:
        item = json.dumps([server, address], ensure_ascii=True)
        if size + len(item) + 1 > _REFUSED_HEADER_BYTES:
            break
        out.append(item)
        size += len(item) + 1
    return "[" + ",".join(out) + "]"


def parse_refused_mailboxes(value: str | None) -> tuple[tuple[str, str], ...]:
    """The (server, address) pairs of a header value; nothing for a missing or malformed one."""
    if not value or len(value) > _REFUSED_HEADER_BYTES:
        return ()
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return ()
    if not isinstance(data, list):
        return ()
    return tuple((p[0], p[1]) for p in data[:REFUSED_MAILBOXES_MAX]
                 if isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) and 0 < len(x) <= 320 for x in p))


HELD_QUERY_LIMIT = 100_000  # bodies, and parts, one /missing request may ask about

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]  # a whole message body
PartKey = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]  # an XXH3-128 part key
# a gateway id, server name or address: non-empty, bounded, no control characters (log lines, IMAP)
Name = Annotated[str, StringConstraints(min_length=1, max_length=320, pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$")]
Seq = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]  # a sequence number or count (0: none yet)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------------- forward replication


class HeldQuery(_Request):
    """``POST /missing``: of these message bodies (SHA-256) and parts (XXH3-128), which do you lack?"""

    messages: list[Sha256Hex] = Field(default=[], max_length=HELD_QUERY_LIMIT)
    parts: list[PartKey] = Field(default=[], max_length=HELD_QUERY_LIMIT)


class HeldAnswer(_Answer):
    """The answer to a :class:`HeldQuery`: the bodies and parts the recovery gateway lacks (both
    lists always present: an answer without them is no answer)."""

    messages: list[Sha256Hex] = Field(max_length=HELD_QUERY_LIMIT)
    parts: list[PartKey] = Field(max_length=HELD_QUERY_LIMIT)


# ---------------------------------------------------------------------- cutover and failback


class MailboxSite(_Answer):
    """One mailbox of the source that is not ``replicating`` (an entry of :class:`SitesAnswer`).

    ``state`` is a ``mailrepl.shared.site_state.SiteState`` value; ``cutover_seq`` the last
    forward change the standby had at cutover, ``final_seq`` the last standby change the primary
    must apply before re-basing (set once the failback is confirmed), ``dr_applied`` how far the
    recovery gateway has applied into the standby.
    """

    server: str
    address: str
    state: str
    cutover_seq: int | None = None
    final_seq: int | None = None
    dr_applied: int = 0


class ResyncWanted(_Answer):
    """A mailbox whose standby copy was changed behind the gateways' back: the source reads it
    again from nothing (once per ``token``)."""

    server: str
    address: str
    token: int


class SitesAnswer(_Answer):
    """``GET /sites``: the recovery gateway's id, the source's mailboxes not replicating, and
    those whose standby copy needs a resync."""

    gateway: str
    mailboxes: list[MailboxSite]
    resync: list[ResyncWanted] = []


class ReverseProgress(_Request):
    """How far the source holds (``received``) and applied (``applied``) one mailbox's reverse changes."""

    server: Name
    address: Name
    received: Seq
    applied: Seq


class ReverseRequest(_Request):
    """``POST /reverse``: the source's progress; the answer is the next reverse batch (204: none)."""

    source: Name
    progress: list[ReverseProgress] = Field(default=[], max_length=100_000)


class MailboxRef(_Request):
    """One mailbox of one source gateway; ``POST /resync`` takes it as it is."""

    source: Name
    server: Name
    address: Name


class ResyncAnswer(_Answer):
    """The answer to ``POST /resync``: the sequence number after which the full copy follows."""

    base_seq: int


class RebaseRequest(MailboxRef):
    """``POST /rebase``: the source re-based its capture on the primary.

    ``base_seq`` is where forward replication resumes, ``applied`` how many standby changes the
    primary applied, ``born`` pairs ``[source id, DR id]`` of messages born at DR, ``report`` the
    failback report (late deliveries, kept folders, ...), stored as it is.
    """

    base_seq: Seq
    applied: Seq
    born: list[tuple[Seq, Seq]] = Field(default=[], max_length=10_000_000)
    report: dict = {}


class RebaseAnswer(_Answer):
    """The answer to ``POST /rebase``: the mailbox's failback status (``state`` is ``replicating``
    once done). Fields beyond the ones named here are kept as they came (``model_extra``): this is
    the same status the admin API shows, and the source only reads ``state``."""

    model_config = ConfigDict(extra="allow")

    server: str
    address: str
    state: str
    status: str = "ok"
    note: str | None = None
    error: str | None = None
    final_seq: int | None = None
    dr_captured_seq: int | None = None
    primary_received_seq: int | None = None
    primary_applied_seq: int | None = None
    failback_queue: int | None = None
    report: dict[str, Any] | None = None


# ---------------------------------------------------------------------- verify

VERIFY_FOLDERS_MAX = 10_000  # folders one verify request may ask to be listed in full
FolderName = Annotated[str, StringConstraints(min_length=1, max_length=1000,
                                              pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$")]


class VerifyRequest(MailboxRef):
    """``POST /verify``: the standby copy of one mailbox as it is now: every folder's status and
    what the standby view knows of it; the folders named in ``folders`` also message by message."""

    folders: list[FolderName] = Field(default=[], max_length=VERIFY_FOLDERS_MAX)


class VerifyEntry(_Answer):
    """One standby message: SHA-256 of its bytes, flags, internal date (UTC, ISO 8601), the
    replication id the id map gives it (None: not written by replication), its Message-ID."""

    uid: int
    sha256: str
    flags: list[str]
    internaldate: str
    mid: int | None = None
    message_id: str = ""


class VerifyFolder(_Answer):
    """One standby folder: its status now; ``known_as`` the name the standby view knows it by
    (another name: renamed behind replication's back; None: unknown to the view); ``view_cursor``
    and ``view_digest`` what the view holds of it; ``messages_listed`` when it was asked for."""

    name: str
    messages: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    known_as: str | None = None
    view_cursor: str | None = None
    view_digest: str | None = None
    messages_listed: list[VerifyEntry] | None = None


class VerifyAnswer(_Answer):
    """The answer to :class:`VerifyRequest`: the standby's folders, how far the recovery gateway
    has received and applied this mailbox (its replay queue is the difference), and whether the
    standby view matches everything applied."""

    folders: list[VerifyFolder]
    received_seq: int = 0
    applied_seq: int = 0
    view_fresh: bool = False


class VerifyRemoval(_Request):
    """Standby copies in one folder (as :class:`VerifyAnswer` listed it: ``uidvalidity``) that
    the primary lacks: ``[uid, sha256]`` each."""

    folder: FolderName
    uidvalidity: Seq
    messages: list[tuple[Seq, Sha256Hex]] = Field(max_length=HELD_QUERY_LIMIT)


class VerifyRemoveRequest(MailboxRef):
    """``POST /verify-remove``: these standby copies go at the next reset of their folder (the
    source resyncs the folder next), unless a re-add claims one as the same message."""

    folders: list[VerifyRemoval] = Field(max_length=VERIFY_FOLDERS_MAX)


class VerifyRemoveAnswer(_Answer):
    queued: int
