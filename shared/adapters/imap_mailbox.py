"""The state one IMAP session keeps about its mailbox: detected features, folder-name mapping,
and which folder is selected.

Shared by the session's folder operations (``mailrepl.shared.adapters.imap``) and its bulk message paths
(``mailrepl.shared.adapters.imap_messages``).
"""
from __future__ import annotations

from dataclasses import dataclass

from mailrepl.shared.adapters.base import ServerFeatures
from mailrepl.shared.adapters.imap_client import ImapClient, Result
from mailrepl.shared.adapters.imap_format import quoted, uid_set_batches
from mailrepl.shared.adapters.imap_names import CYRUS_REFUSED, FolderNames
from mailrepl.shared.adapters.imap_protocol import ListEntry, Response, as_text, parse_list
from mailrepl.shared.errors import FolderNotFound, MailboxNotFound, ProtocolError, ServerUnavailable

__all__ = ["REQUIRED_CAPABILITIES", "TRANSIENT_CODES", "FolderNames", "Mailbox", "detect", "personal_namespace", "raise_for"]

# CONDSTORE/QRESYNC give cursors and deltas; UIDPLUS gives the UIDs the contract returns from
# append and move, and UID EXPUNGE, which removes exactly the given messages.
REQUIRED_CAPABILITIES = ("CONDSTORE", "QRESYNC", "UIDPLUS")

# Codes after which a NO is worth retrying later rather than a refusal of the request itself.
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "INUSE", "OVERQUOTA"})


@dataclass
class Mailbox:
    """One authenticated connection to one mailbox and what the session knows about it."""

    client: ImapClient
    names: FolderNames
    features: ServerFeatures
    guid_item: str | None  # FETCH item for MessageMeta.guid: EMAILID, X-GUID or None
    fid_item: str | None  # STATUS item for FolderInfo.fid: MAILBOXID, X-GUID or None
    selected: tuple[bytes, bool] | None = None  # (mailbox argument, read-only)

    def has(self, capability: str) -> bool:
        return capability in self.client.capabilities

    def select(self, folder: str, *, readonly: bool, fresh: bool = False, params: bytes = b"") -> Result | None:
        """Select ``folder`` (EXAMINE if ``readonly``) unless it already is suitably selected.

        Returns the SELECT/EXAMINE result, or None if nothing had to be sent; ``fresh`` always
        sends one (its untagged responses are the folder's current state). ``params`` are
        appended to the command (QRESYNC). Raises ``FolderNotFound`` on NO.
        """
        arg = self.names.arg(folder)
        current = self.selected
        if not fresh and current is not None and current[0] == arg and (readonly or not current[1]):
            return None
        res = self.client.run(b"EXAMINE " if readonly else b"SELECT ", arg, params)
        if not res.ok:
            self.selected = None  # a failed SELECT leaves no mailbox selected (RFC 3501 6.3.1)
            if res.status == "NO" and res.code not in TRANSIENT_CODES:
                raise FolderNotFound(f"folder {folder!r}: {res.describe()}")
            raise_for(res, f"selecting {folder!r}")
        self.selected = (arg, readonly)
        return res

    def deselect(self) -> None:
        """Leave the selected folder (UNSELECT, not waited for: it costs no round trip).

        Dovecot disconnects a session whose selected folder another session deletes or
        renames ("IMAP session state is inconsistent"), so a session never stays in a folder
        between operations. A dead connection is left for the next call to report.
        """
        if self.selected is None or not self.has("UNSELECT") or self.client.closed:
            return
        self.selected = None
        try:
            self.client.discard(self.client.send(b"UNSELECT"))
        except ServerUnavailable:
            pass

    def expunge(self, folder: str, uids: list[int]) -> None:
        """Remove exactly ``uids``: ``UID STORE +FLAGS.SILENT (\\Deleted)`` then ``UID EXPUNGE``
        (UIDPLUS), so other messages marked \\Deleted stay. A missing folder is ignored."""
        try:
            self.select(folder, readonly=False)
        except FolderNotFound:
            return
        try:
            tags = []
            for batch in uid_set_batches(uids):
                tags.append(self.client.send(b"UID STORE ", batch.encode("ascii"), b" +FLAGS.SILENT (\\Deleted)"))
                tags.append(self.client.send(b"UID EXPUNGE ", batch.encode("ascii")))
            for tag in tags:
                raise_for(self.client.result(tag), f"expunging in {folder!r}")
        finally:
            self.deselect()

    def list_entries(self, pattern: str, returns: bytes = b"") -> tuple[list[ListEntry], Result]:
        """``LIST "" pattern [RETURN (...)]`` -> its entries and the result (STATUS responses included)."""
        res = raise_for(self.client.run(b'LIST "" ', quoted(pattern), returns), f"LIST {pattern!r}")
        return [parse_list(r) for r in res.untagged if r.name == "LIST"], res

    def entry(self, folder: str) -> ListEntry | None:
        """The LIST entry of exactly ``folder`` (selectable or not), or None if it does not exist."""
        raw = self.names.to_server(folder)
        entries, _ = self.list_entries(raw)
        for e in entries:
            if e.name == raw and not e.has("\\NonExistent"):
                return e
        return None


def raise_for(res: Result, what: str) -> Result:
    """Pass an OK result through; NO with a transient code -> ServerUnavailable; else ProtocolError."""
    if res.ok:
        return res
    if res.status == "NO" and res.code in TRANSIENT_CODES:
        raise ServerUnavailable(f"{what}: server answered {res.describe()}")
    raise ProtocolError(f"{what}: server answered {res.describe()}")


def personal_namespace(responses: list[Response]) -> tuple[str | None, str] | None:
    """(separator, prefix) of the first personal namespace of a ``* NAMESPACE`` response (RFC 2342)."""
    for r in responses:
        if r.args and isinstance(r.args[0], list) and r.args[0] and isinstance(r.args[0][0], list):
            first = r.args[0][0]
            if len(first) >= 2:
                return (as_text(first[1]) if first[1] is not None else None), as_text(first[0])
    return None


def _is_cyrus(capabilities) -> bool:
    """Cyrus IMAP, known by capabilities no other server announces."""
    return "X-REPLICATION" in capabilities or "XCONVERSATIONS" in capabilities


def detect(client: ImapClient) -> Mailbox:
    """Check required capabilities, enable QRESYNC and find the delimiter and id items, in one
    pipelined round trip.

    Dovecot 2.3 does not advertise X-GUID, but answers ``STATUS (X-GUID)`` with the mailbox
    GUID and ``FETCH (X-GUID)`` with the message GUID; a BAD to the probe means no GUIDs.
    OBJECTID servers (RFC 8474) give EMAILID/MAILBOXID instead.
    """
    missing = [c for c in REQUIRED_CAPABILITIES if c not in client.capabilities]
    if missing:
        raise ProtocolError(f"{client.host} lacks {', '.join(missing)}, which mailrepl needs "
                            "(CONDSTORE/QRESYNC for change tracking, UIDPLUS for exact UIDs)")
    objectid = "OBJECTID" in client.capabilities
    untagged: list[Response] = []  # one collector: pipelined commands may interleave their responses
    enable = client.send(b"ENABLE QRESYNC", collect=untagged.append)
    delimiter = client.send(b'LIST "" ""', collect=untagged.append)
    namespace = client.send(b"NAMESPACE", collect=untagged.append) if "NAMESPACE" in client.capabilities else None
    probe = None if objectid else client.send(b"STATUS INBOX (X-GUID)", collect=untagged.append)
    # a server that lets the service account act for any name (Cyrus proxy logins) shows an
    # unknown mailbox by its missing INBOX
    inbox = client.send(b"STATUS INBOX (UIDVALIDITY)", collect=untagged.append)
    raise_for(client.result(enable), "ENABLE QRESYNC")
    raise_for(client.result(delimiter), "LIST")
    personal = None
    if namespace is not None and client.result(namespace).ok:
        personal = personal_namespace([r for r in untagged if r.name == "NAMESPACE"])
    xguid = probe is not None and client.result(probe).ok
    exists = client.result(inbox)
    if exists.status == "NO" and exists.code not in TRANSIENT_CODES:
        raise MailboxNotFound(f"{client.host}: the mailbox has no INBOX: {exists.describe()}")
    raise_for(exists, "STATUS INBOX")
    if not any(r.name == "ENABLED" and "QRESYNC" in map(str.upper, map(as_text, r.args)) for r in untagged):
        raise ProtocolError(f"{client.host} did not enable QRESYNC")
    entries = [parse_list(r) for r in untagged if r.name == "LIST"]
    caps = client.capabilities
    features = ServerFeatures(
        message_guid=objectid or xguid,
        folder_id=objectid or xguid,
        move="MOVE" in caps,
        multiappend="MULTIAPPEND" in caps,
        notify="NOTIFY" in caps,
        idle="IDLE" in caps,
        names=caps,
    )
    return Mailbox(
        client=client,
        names=FolderNames(*(personal or (entries[0].delimiter if entries else None, "")),
                          refused=CYRUS_REFUSED if _is_cyrus(caps) else None),
        features=features,
        guid_item="EMAILID" if objectid else "X-GUID" if xguid else None,
        fid_item="MAILBOXID" if objectid else "X-GUID" if xguid else None,
    )
