"""The IMAP adapter: one server reached with a service account (Dovecot master user, Cyrus admin).

``ImapAdapter.open(address)`` logs in *as* the mailbox through the service account (SASL PLAIN
with authzid = mailbox and authcid = service user, or Dovecot's ``LOGIN "mailbox*service"``)
and returns an :class:`ImapSession` implementing ``mailrepl.shared.adapters.base.MailboxSession``.

Telling "no such user" from "wrong service password": the service account cannot log in on
its own on Dovecot (a master user only exists as a master), so a second probe login cannot
settle it. The refusal's response code does (RFC 5530): Dovecot answers
``[AUTHORIZATIONFAILED]`` when the master credentials were right but the login user does not
exist (its master passdb has ``result_success = continue``, so the user passdb must confirm
the user), and ``[AUTHENTICATIONFAILED]`` when the credentials were wrong. The first becomes
``MailboxNotFound``, any other refusal ``AuthenticationFailed``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Sequence

from mailrepl.shared.adapters.base import (
    AppendItem,
    AppendResult,
    FetchedMessage,
    FolderDelta,
    FolderInfo,
    ServerFeatures,
)
from mailrepl.shared.adapters import imap_messages
from mailrepl.shared.adapters.imap_client import ImapClient, make_ssl_context
from mailrepl.shared.adapters.imap_format import astring, flag_list, quoted, uid_set_batches
from mailrepl.shared.adapters.imap_mailbox import TRANSIENT_CODES, Mailbox, detect, raise_for
from mailrepl.shared.adapters.imap_protocol import ListEntry, Response, parse_copyuid, parse_list, parse_status
from mailrepl.shared.errors import (
    AuthenticationFailed,
    ConfigError,
    FolderNotFound,
    MailboxNotFound,
    ProtocolError,
    ServerUnavailable,
)
from mailrepl.shared.model import Cursor

__all__ = ["ImapEndpoint", "ImapAdapter", "ImapSession"]

SPECIAL_USES = {a.lower(): a for a in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")}
_STATUS_ITEMS = "MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ"
# MessageNew and MessageExpunge must be asked for together (RFC 5465 5.2).
_NOTIFY_SET = b"NOTIFY SET (personal (MessageNew MessageExpunge FlagChange MailboxName))"


@dataclass(frozen=True)
class ImapEndpoint:
    """Where and how to reach one IMAP server."""

    host: str
    port: int
    tls: str  # "none" | "starttls" | "tls"
    service_user: str
    service_password: str
    auth: str  # "sasl-plain" | "login-master"
    timeout: float = 30.0
    verify_tls: bool = True
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.tls not in ("none", "starttls", "tls"):
            raise ConfigError(f"tls: must be none, starttls or tls, not {self.tls!r}")
        if self.auth not in ("sasl-plain", "login-master"):
            raise ConfigError(f"auth: must be sasl-plain or login-master, not {self.auth!r}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout: must be positive, not {self.timeout!r}")


class ImapAdapter:
    """One IMAP server. Holds no connections: every ``open`` makes a new one."""

    def __init__(self, name: str, endpoint: ImapEndpoint, users: list[str] | None = None) -> None:
        self.name = name
        self.endpoint = endpoint
        self.users = list(users) if users else None
        self._ssl = None
        if endpoint.tls != "none":
            try:
                self._ssl = make_ssl_context(endpoint.verify_tls, endpoint.ca_file)
            except OSError as exc:  # ssl.SSLError is one too
                raise ConfigError(f"ca_file: cannot load CA certificates from {endpoint.ca_file!r}: {exc}") from exc

    def open(self, address: str) -> "ImapSession":
        client = self._connect()
        try:
            self._authenticate(client, address)
            return ImapSession(detect(client), address)
        except BaseException:
            client.close()
            raise

    def list_mailboxes(self) -> list[str] | None:
        """The configured users: IMAP has no portable way to list a server's accounts."""
        return list(self.users) if self.users is not None else None

    def check(self) -> None:
        """Connect and NOOP, logged in as the first configured user if there is one.

        Without a user list the probe stays anonymous: a master user cannot log in on its own,
        and a deliberately failing probe login would feed the server's per-IP auth penalty.
        """
        client = self._connect()
        try:
            if self.users:
                self._authenticate(client, self.users[0])
            raise_for(client.run(b"NOOP"), "NOOP")
        finally:
            client.close()

    def _connect(self) -> ImapClient:
        ep = self.endpoint
        return ImapClient.connect(ep.host, ep.port, tls=ep.tls, timeout=ep.timeout, ssl_context=self._ssl)

    def _authenticate(self, client: ImapClient, address: str) -> None:
        ep = self.endpoint
        if ep.auth == "sasl-plain":
            res = client.authenticate_plain(address, ep.service_user, ep.service_password)
        else:
            res = client.login(f"{address}*{ep.service_user}", ep.service_password)
        if res.ok:
            return
        where = f"server {self.name!r}"
        if res.code == "AUTHORIZATIONFAILED":
            raise MailboxNotFound(f"{where} has no mailbox {address!r} the service account may open: {res.describe()}")
        if res.code in TRANSIENT_CODES:
            raise ServerUnavailable(f"{where}: login as {address!r} failed for now: {res.describe()}")
        if res.status == "BAD":
            raise ProtocolError(f"{where}: login refused as malformed: {res.describe()}")
        raise AuthenticationFailed(f"{where} refused the service account {ep.service_user!r}: {res.describe()}")


class ImapSession:
    """One mailbox through one connection (see ``MailboxSession`` for what each method promises).

    Every method selects the folder it needs and leaves it afterwards (``Mailbox.deselect``).
    """

    def __init__(self, mailbox: Mailbox, address: str) -> None:
        self._mb = mailbox
        self.address = address
        self.features: ServerFeatures = mailbox.features

    # ------------------------------------------------------------------ folders

    def list_folders(self) -> list[FolderInfo]:
        return sorted(self._folders("*"), key=lambda f: (f.name != "INBOX", f.name))

    def folder_info(self, folder: str) -> FolderInfo | None:
        raw = self._mb.names.to_server(folder)
        return next((f for f in self._folders(raw) if self._mb.names.to_server(f.name) == raw), None)

    def _folders(self, pattern: str) -> list[FolderInfo]:
        """Selectable folders matching the LIST ``pattern``, with their status.

        One LIST-STATUS command where offered (RFC 5819), else LIST plus pipelined STATUS. A
        MAILBOXID is asked in a command of its own: Cyrus 3.6 answers garbage when it is
        combined with index-backed items.
        """
        mb = self._mb
        items = _STATUS_ITEMS + (" X-GUID" if mb.fid_item == "X-GUID" else "")
        special = "SPECIAL-USE " if mb.has("SPECIAL-USE") else ""
        untagged: list[Response] = []  # one collector: pipelined commands may interleave
        if mb.has("LIST-STATUS"):
            tags = [mb.client.send(b'LIST "" ', quoted(pattern), f" RETURN ({special}STATUS ({items}))".encode("ascii"),
                                   collect=untagged.append)]
            if mb.fid_item == "MAILBOXID":
                tags.append(mb.client.send(b'LIST "" ', quoted(pattern), b" RETURN (STATUS (MAILBOXID))",
                                           collect=untagged.append))
            for tag in tags:
                raise_for(mb.client.result(tag), f"LIST {pattern!r}")
            entries = _entries(untagged)
        else:
            returns = f" RETURN ({special.strip()})".encode("ascii") if special and mb.has("LIST-EXTENDED") else b""
            entries, _ = mb.list_entries(pattern, returns)
            tags = []
            for e in entries:
                if _selectable(e):
                    tags.append(mb.client.send(b"STATUS ", astring(e.name), f" ({items})".encode("ascii"),
                                               collect=untagged.append))
                    if mb.fid_item == "MAILBOXID":
                        tags.append(mb.client.send(b"STATUS ", astring(e.name), b" (MAILBOXID)", collect=untagged.append))
            for tag in tags:
                mb.client.result(tag)  # NO: deleted between LIST and STATUS; it then has no status below
        statuses: dict[str, dict] = {}
        for r in untagged:
            if r.name == "STATUS":
                name, values = parse_status(r)
                statuses.setdefault(name, {}).update(values)
        out = []
        for e in entries:
            st = statuses.get(e.name)
            name = mb.names.from_server(e.name)  # None: another user's or a shared folder
            if name is None or not _selectable(e) or st is None or "UIDVALIDITY" not in st:
                continue
            fid = st.get(mb.fid_item, "") if mb.fid_item else ""
            out.append(FolderInfo(
                name=name,
                fid=str(fid),
                uidvalidity=int(st["UIDVALIDITY"]),
                uidnext=int(st.get("UIDNEXT", 0)),
                highestmodseq=int(st.get("HIGHESTMODSEQ", 0)),
                messages=int(st.get("MESSAGES", 0)),
                special_use=frozenset(SPECIAL_USES[a.lower()] for a in e.attributes if a.lower() in SPECIAL_USES),
            ))
        return out

    def create_folder(self, folder: str, special_use: frozenset[str] = frozenset()) -> None:
        """CREATE; the server makes missing parents the way it does for CREATE (RFC 3501 6.3.3;
        Dovecot: non-selectable placeholders, as they are on a source that has none)."""
        mb = self._mb
        uses = sorted(SPECIAL_USES[u.lower()] for u in special_use if u.lower() in SPECIAL_USES)
        res = None
        if uses and mb.has("CREATE-SPECIAL-USE"):
            res = mb.client.run(b"CREATE ", mb.names.arg(folder), f" (USE ({' '.join(uses)}))".encode("ascii"))
            if res.code == "USEATTR":  # that use is not allowed here: create the folder without it
                res = None
        if res is None:
            res = mb.client.run(b"CREATE ", mb.names.arg(folder))
        if res.ok or res.code == "ALREADYEXISTS":
            return
        entry = mb.entry(folder)
        if entry is not None and _selectable(entry):
            return
        raise_for(res, f"creating folder {folder!r}")

    def rename_folder(self, old: str, new: str) -> None:
        mb = self._mb
        if old == new:
            return
        res = mb.client.run(b"RENAME ", mb.names.arg(old), b" ", mb.names.arg(new))
        if res.ok or mb.entry(old) is None:
            return  # renamed, or nothing (left) to rename
        raise_for(res, f"renaming folder {old!r} to {new!r}")

    def delete_folder(self, folder: str) -> None:
        """DELETE ``folder`` alone: its subfolders stay (RFC 3501; Dovecot keeps the name as a
        \\Noselect parent). A server that refuses to delete a folder with children (Cyrus:
        HASCHILDREN; it also makes a real parent of any folder created or renamed under a
        missing one, so no child can outlive its parent there) has the folder emptied instead:
        its messages go, the subfolders and theirs stay."""
        mb = self._mb
        raw = mb.names.to_server(folder)
        if raw == "INBOX":
            raise ProtocolError("INBOX cannot be deleted")
        entry = mb.entry(folder)
        if entry is None or entry.has("\\Noselect"):
            return  # gone, or only a parent name now: nothing of its own left to delete
        res = mb.client.run(b"DELETE ", quoted(raw))
        if res.ok or mb.entry(folder) is None:
            return
        if not (mb.names.delimiter and mb.list_entries(raw + mb.names.delimiter + "%")[0]):
            raise_for(res, f"deleting folder {folder!r}")
        left = self.changes_since(folder, None).new
        self.expunge(folder, [m.uid for m in left])

    # ------------------------------------------------------------------ messages

    def changes_since(self, folder: str, since: Cursor | None) -> FolderDelta:
        return imap_messages.changes_since(self._mb, folder, since)

    def fetch(self, folder: str, uids: Sequence[int]) -> Iterator[FetchedMessage]:
        return imap_messages.fetch(self._mb, folder, uids)

    def append(self, folder: str, items: Sequence[AppendItem]) -> AppendResult:
        return imap_messages.append(self._mb, folder, items, self.create_folder)

    def server_facts(self):
        """Capabilities, namespace, rights, ID (``imap_facts``), for the pre-flight check."""
        from mailrepl.shared.adapters.imap_facts import imap_facts

        return imap_facts(self._mb)

    def stored_digests(self, folder: str, uids: Sequence[int]) -> dict:
        """{uid: StoredDigest(size, sha1 or None)}: what the server stored (``imap_digests``)."""
        from mailrepl.shared.adapters.imap_digests import stored_digests

        return stored_digests(self._mb, folder, uids)

    def store_flags(self, folder: str, uids: Sequence[int], flags: frozenset[str]) -> None:
        """``UID STORE set FLAGS.SILENT (...)`` in a read-write SELECT; a missing folder is ignored."""
        mb = self._mb
        wanted = sorted(set(uids))
        if not wanted:
            return
        try:
            flags_arg = flag_list(flags)
        except ValueError as exc:
            raise ProtocolError(f"cannot store flags in {folder!r}: {exc}") from exc
        try:
            mb.select(folder, readonly=False)
        except FolderNotFound:
            return
        try:
            tags = [mb.client.send(b"UID STORE ", batch.encode("ascii"), b" FLAGS.SILENT ", flags_arg)
                    for batch in uid_set_batches(wanted)]
            for tag in tags:
                raise_for(mb.client.result(tag), f"storing flags in {folder!r}")
        finally:
            mb.deselect()

    def expunge(self, folder: str, uids: Sequence[int]) -> None:
        wanted = sorted(set(uids))
        if wanted:
            self._mb.expunge(folder, wanted)

    def move(self, folder: str, uids: Sequence[int], dest: str) -> dict[int, int]:
        """UID MOVE (RFC 6851) where offered, else UID COPY + exact expunge; the mapping comes from
        COPYUID. A missing destination ([TRYCREATE]) is created once; a missing source folder
        moves nothing."""
        mb = self._mb
        wanted = sorted(set(uids))
        if not wanted:
            return {}
        try:
            mb.select(folder, readonly=False)
        except FolderNotFound:
            return {}
        try:
            mapping, dest_missing = self._move_once(wanted, dest)
            if dest_missing:
                self.create_folder(dest)
                more, dest_missing = self._move_once([u for u in wanted if u not in mapping], dest)
                mapping.update(more)
                if dest_missing:
                    raise ProtocolError(f"folder {dest!r} still missing after it was created")
            if not mb.features.move and mapping:
                mb.expunge(folder, sorted(mapping))
            return mapping
        finally:
            mb.deselect()

    def _move_once(self, uids: list[int], dest: str) -> tuple[dict[int, int], bool]:
        """Move (or copy) from the selected folder -> ({source uid: dest uid}, whether ``dest`` was missing)."""
        mb = self._mb
        verb = b"UID MOVE " if mb.features.move else b"UID COPY "
        tags = [mb.client.send(verb, batch.encode("ascii"), b" ", mb.names.arg(dest)) for batch in uid_set_batches(uids)]
        results = [mb.client.result(tag) for tag in tags]
        mapping: dict[int, int] = {}
        missing = False
        for res in results:
            if res.code == "TRYCREATE":
                missing = True
                continue
            raise_for(res, f"moving messages to {dest!r}")
            # MOVE reports COPYUID in an untagged OK before the expunges, COPY in the tagged OK;
            # pipelined batches may interleave, so every result is searched
            for code, args in [(r.code, r.code_args) for r in res.untagged if r.name == "OK"] + [(res.code, res.code_args)]:
                if code == "COPYUID":
                    mapping.update(parse_copyuid(args)[1])
        asked = set(uids)
        return {src: dst for src, dst in mapping.items() if src in asked}, missing

    # ------------------------------------------------------------------ push, closing

    def wait_for_change(self, timeout: float) -> bool:
        """NOTIFY (RFC 5465) for the whole mailbox where offered, else IDLE on INBOX, else sleep.

        NOTIFY is switched off again afterwards (``NOTIFY NONE``), so later commands see no
        interleaved events.
        """
        mb = self._mb
        if timeout <= 0:
            return False
        if mb.features.notify:
            mb.deselect()
            mb.client.unsolicited.clear()
            res = raise_for(mb.client.run(_NOTIFY_SET), "NOTIFY SET")
            try:
                return any(map(_is_event, res.untagged)) or mb.client.wait_unsolicited(timeout, _is_event)
            finally:
                if not mb.client.closed:
                    raise_for(mb.client.run(b"NOTIFY NONE"), "NOTIFY NONE")
                mb.client.unsolicited.clear()
        if mb.features.idle:
            mb.select("INBOX", readonly=True)
            try:
                return mb.client.idle(timeout, _is_event)
            finally:
                mb.deselect()
        time.sleep(timeout)
        return False

    def close(self) -> None:
        self._mb.client.close()


def _selectable(entry: ListEntry) -> bool:
    return not (entry.has("\\Noselect") or entry.has("\\NonExistent"))


def _entries(untagged: list[Response]) -> list[ListEntry]:
    """LIST entries, one per name (attributes merged when several commands listed it)."""
    merged: dict[str, ListEntry] = {}
    for r in untagged:
        if r.name == "LIST":
            e = parse_list(r)
            old = merged.get(e.name)
            merged[e.name] = e if old is None else ListEntry(e.name, old.delimiter, old.attributes | e.attributes)
    return list(merged.values())


def _is_event(resp: Response) -> bool:
    """An untagged response that signals a change (not a keep-alive or capability news)."""
    return resp.tag == "*" and resp.name not in ("OK", "NO", "BAD", "CAPABILITY", "ENABLED")

