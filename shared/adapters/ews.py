"""Microsoft Exchange adapter over EWS (exchangelib), imported only for servers of kind "ews".

Access: one service account for every mailbox, by impersonation (ExchangeImpersonation header,
the ApplicationImpersonation role) or delegate access; HTTP Basic or NTLM, or OAuth2 client
credentials; an explicit EWS endpoint or autodiscover. exchangelib runs fail-fast; retries and
error translation are ``mailrepl.shared.adapters.ews_calls``.

How the IMAP-shaped contract maps onto EWS:

- **UIDs** are ``PR_INTERNET_ARTICLE_NUMBER`` (0x0E23), which Exchange assigns per folder in
  increasing order (its IMAP service uses them as UIDs); a moved item gets a new one in the
  destination, like an IMAP MOVE. UIDs are resolved to ItemIds with FindItem restricted to
  the article-number range (and cached per session).
- **Cursor** = ``(UIDVALIDITY, generation, UIDNEXT, token)``: UIDVALIDITY hashes the FolderId;
  the token is the folder's SyncFolderItems sync state; the generation counts deltas with
  changes (it is the contract's HIGHESTMODSEQ and each reported message's MODSEQ); UIDNEXT is
  one above the highest article number reported. ``FolderInfo.highestmodseq`` is 0, so a
  folder's status never equals a stored cursor and capture always asks SyncFolderItems.
- **changes_since** calls the SyncFolderItems *service* page by page (``MaxChangesReturned``
  = ``page_size``) and takes each page's sync state: ``Folder.sync_items()`` would only hand
  out the state after the whole generator is consumed. From a cursor it stops after
  ``max_changes`` changes even if ``IncludesLastItemInRange`` is false: the delta's cursor is
  that page's sync state, so capture checkpoints it and its next cycle goes on from there. A full sync (``since=None``: seeding, or a resync) reads every
  page, because capture takes it for the whole folder (bodies are then fetched and committed
  in chunks by capture's pending work). An unknown or expired state (ErrorInvalidSyncStateData, ErrorSyncFolderNotFound)
  raises ``CursorInvalid``: capture resyncs the folder from scratch.
- **vanished**: a SyncFolderItems Delete names only an ItemId, so when a page has deletes the
  folder's present article numbers are listed (FindItem, ids only) and every number below the
  old UIDNEXT that is no longer present is reported; the caller ignores the ones it never saw.
- Items gone between the sync and GetItem (ErrorItemNotFound) are skipped.
- **Flags**: see ``mailrepl.shared.adapters.ews_mapping``. Items are created from MIME with
  PR_MESSAGE_FLAGS set (read, and unsent only for ``\\Draft``), so they are not left as drafts,
  and with PR_MESSAGE_DELIVERY_TIME for the received time.
- **Push**: ``wait_for_change`` waits for EWS streaming notifications (all folders); they are
  wake-ups only, SyncFolderItems stays the truth.
- **append** is one CreateItem request; Exchange stores item by item, so on a refusal the
  items created by that request are deleted again (all or none) before ``MessageRejected``.
- **delete_folder** is DeleteFolder, which deletes the folder *with its subfolders*: the contract
  asks for that folder alone (an IMAP primary may delete a parent whose subfolders stay), so an
  Exchange standby loses the subfolders of such a folder; they are not moved aside and back.
  Exchange itself never deletes a parent alone, so as a primary it cannot make the case.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    OAUTH2,
    Account,
    Configuration,
    Credentials,
    FailFast,
    Identity,
    OAuth2Credentials,
)
from exchangelib import errors as ex
from exchangelib.folders import Folder
from exchangelib.services import ConvertId

from mailrepl.shared.adapters.base import AppendItem, AppendResult, FetchedMessage, FolderDelta, FolderInfo, ServerFeatures
from mailrepl.shared.adapters.ews_calls import DEFAULT_MAX_WAIT, call_with_retry
from mailrepl.shared.adapters.ews_folders import FolderTree
from mailrepl.shared.adapters.ews_items import ItemOps
from mailrepl.shared.adapters.ews_mapping import folder_uidvalidity
from mailrepl.shared.adapters.ews_push import StreamWatcher
from mailrepl.shared.errors import CursorInvalid, FolderNotFound, MailboxNotFound
from mailrepl.shared.model import Cursor

__all__ = ["EwsEndpoint", "EwsAdapter", "EwsSession", "DEFAULT_PAGE_SIZE", "DEFAULT_MAX_CHANGES"]

log = logging.getLogger("mailrepl.ews")

DEFAULT_PAGE_SIZE = 512  # MaxChangesReturned per SyncFolderItems page (Exchange allows 1..512)
DEFAULT_MAX_CHANGES = 10_000  # changes per changes_since call before it returns a partial delta


@dataclass(frozen=True)
class EwsEndpoint:
    service_endpoint: str | None  # https://mail.example.org/EWS/Exchange.asmx; None = autodiscover
    service_user: str
    service_password: str = ""
    auth: str = "basic"  # basic | ntlm | oauth2
    access: str = "impersonation"  # impersonation | delegate
    client_id: str = ""  # oauth2
    tenant_id: str = ""  # oauth2
    timeout: float = 120.0
    max_wait: float = DEFAULT_MAX_WAIT  # retry budget per request (seconds)
    max_connections: int = 4
    page_size: int = DEFAULT_PAGE_SIZE
    max_changes: int = DEFAULT_MAX_CHANGES


class EwsAdapter:
    """One Exchange organisation (one EWS endpoint), reached with one service account."""

    def __init__(self, name: str, endpoint: EwsEndpoint, users: Sequence[str] | None = None) -> None:
        self.name, self.endpoint = name, endpoint
        self.users = list(users) if users else None
        self._config: Configuration | None = None
        self._lock = threading.Lock()

    def _configuration(self, address: str) -> Configuration:
        ep = self.endpoint
        if ep.auth == "oauth2":
            # client credentials; the token comes from the tenant's identity platform
            creds = OAuth2Credentials(client_id=ep.client_id, client_secret=ep.service_password,
                                      tenant_id=ep.tenant_id, identity=Identity(primary_smtp_address=address))
            return Configuration(service_endpoint=ep.service_endpoint, credentials=creds, auth_type=OAUTH2,
                                 retry_policy=FailFast(), max_connections=ep.max_connections)
        with self._lock:
            if self._config is None:
                creds = Credentials(ep.service_user, ep.service_password)
                self._config = Configuration(
                    service_endpoint=ep.service_endpoint, credentials=creds,
                    auth_type=NTLM if ep.auth == "ntlm" else BASIC, retry_policy=FailFast(),
                    max_connections=ep.max_connections,
                )
            return self._config

    def _account(self, address: str) -> Account:
        ep = self.endpoint
        config = self._configuration(address)

        def make() -> Account:
            account = Account(
                primary_smtp_address=address, config=config, autodiscover=ep.service_endpoint is None,
                access_type=IMPERSONATION if ep.access == "impersonation" else DELEGATE,
            )
            account.protocol.TIMEOUT = ep.timeout
            return account

        return call_with_retry(f"{self.name}: connect for {address}", make, max_wait=ep.max_wait)

    def open(self, address: str) -> "EwsSession":
        if self.users is not None and address.lower() not in {u.lower() for u in self.users}:
            raise MailboxNotFound(f"{self.name}: {address} is not among the configured users", retryable=False)
        session = EwsSession(self, self._account(address), address)
        session.bind()
        return session

    def list_mailboxes(self) -> list[str] | None:
        return list(self.users) if self.users else None

    def check(self) -> None:
        """One ConvertId round trip: reachable, TLS fine and the service account accepted."""
        from exchangelib.properties import ENTRY_ID, EWS_ID, AlternateId
        from exchangelib.protocol import Protocol

        address = self.users[0] if self.users else "postmaster@invalid.example"
        config = self._configuration(address)

        def probe() -> None:
            if config.service_endpoint is None:  # autodiscover: an account finds the endpoint
                protocol = self._account(address).protocol
            else:
                protocol = Protocol(config=config)
                protocol.version  # noqa: B018 (asks the server once: ConvertId with a dummy id)
            for res in ConvertId(protocol=protocol).call([AlternateId(id="AAAA", format=EWS_ID, mailbox=address)], ENTRY_ID):
                if isinstance(res, (ex.UnauthorizedError, ex.ErrorServerBusy)):
                    raise res

        call_with_retry(f"{self.name}: check", probe, max_wait=self.endpoint.max_wait)


_RAISE = object()


class EwsSession:
    """One mailbox through EWS; see the module docstring for the contract mapping."""

    features = ServerFeatures(message_guid=False, folder_id=True, move=True, multiappend=False, notify=True,
                              names=frozenset({"EWS", "SyncFolderItems", "StreamingNotifications"}))

    def __init__(self, adapter: EwsAdapter, account: Account, address: str) -> None:
        self.adapter, self.account, self.address = adapter, account, address
        self.max_wait = adapter.endpoint.max_wait
        self.tree = FolderTree(self)
        self.items = ItemOps(self)
        self.push: StreamWatcher | None = None

    def call(self, what: str, fn, repeatable: bool = True):
        return call_with_retry(f"{self.adapter.name}/{self.address}: {what}", fn, max_wait=self.max_wait,
                               repeatable=repeatable)

    def bind(self) -> None:
        self.tree.bind()

    # --- listing -------------------------------------------------------------------------

    def list_folders(self) -> list[FolderInfo]:
        folders = self.tree.refresh()
        infos = [self._info(name, f) for name, f in folders.items()]
        return sorted(infos, key=lambda i: (i.name != "INBOX", i.name))

    def folder_info(self, folder: str) -> FolderInfo | None:
        f = self.tree.find(folder, fresh=True)
        return None if f is None else self._info(folder, f)

    def _info(self, name: str, f: Folder) -> FolderInfo:
        return FolderInfo(
            name=name, fid=self.tree.fid(f), uidvalidity=folder_uidvalidity(f.id),
            uidnext=self.items.highest_uid(f) + 1, highestmodseq=0, messages=f.total_count or 0,
            special_use=self.tree.special_use(f),
        )

    # --- deltas --------------------------------------------------------------------------

    def _on_folder(self, name: str, fn, missing=_RAISE):
        """``fn(folder)``; when the cached folder is gone, once more with a fresh tree."""
        for fresh in (False, True):
            f = self.tree.find(name, fresh=fresh)
            if f is None:
                if fresh:
                    if missing is _RAISE:
                        raise FolderNotFound(f"{self.address}: no folder {name!r}")
                    return missing
                continue
            try:
                return fn(f)
            except (FolderNotFound, CursorInvalid):
                if fresh:
                    raise
        raise AssertionError("unreachable")

    def changes_since(self, folder: str, since: Cursor | None) -> FolderDelta:
        def delta(f: Folder) -> FolderDelta:
            uidvalidity = folder_uidvalidity(f.id)
            if since is not None and (since.uidvalidity != uidvalidity or not since.token):
                raise CursorInvalid(f"{folder}: cursor {since} is not this folder's sync state")
            return self.items.sync(f, uidvalidity, since)

        return self._on_folder(folder, delta)

    def fetch(self, folder: str, uids: Sequence[int]) -> Iterator[FetchedMessage]:
        f = self.tree.require(folder, fresh=self.tree.find(folder) is None)
        return self.items.fetch(f, uids)

    # --- changes -------------------------------------------------------------------------

    def append(self, folder: str, items: Sequence[AppendItem]) -> AppendResult:
        f = self.tree.ensure(folder)
        uids = self.items.create(f, items)
        return AppendResult(folder_uidvalidity(f.id), tuple(uids))

    def store_flags(self, folder: str, uids: Sequence[int], flags: frozenset[str]) -> None:
        if uids:
            self._on_folder(folder, lambda f: self.items.set_flags(f, uids, flags), missing=None)

    def expunge(self, folder: str, uids: Sequence[int]) -> None:
        if uids:
            self._on_folder(folder, lambda f: self.items.delete(f, uids), missing=None)

    def move(self, folder: str, uids: Sequence[int], dest: str) -> dict[int, int]:
        if not uids:
            return {}
        return self._on_folder(folder, lambda f: self.items.move(f, uids, self.tree.ensure(dest)), missing={})

    def create_folder(self, folder: str, special_use: frozenset[str] = frozenset()) -> None:
        self.tree.ensure(folder)  # EWS cannot mark a folder as special-use

    def rename_folder(self, old: str, new: str) -> None:
        self.tree.rename(old, new)

    def delete_folder(self, folder: str) -> None:
        """Deletes the subfolders too (DeleteFolder): see the module notes."""
        self.tree.delete(folder)

    def wait_for_change(self, timeout: float) -> bool:
        """Wait for a streaming notification (``mailrepl.shared.adapters.ews_push``); while streaming is
        unavailable, sleep and return False."""
        if self.push is None:
            self.push = StreamWatcher(self.account, f"{self.adapter.name}/{self.address}")
        if not self.push.ensure_running():
            time.sleep(max(0.0, timeout))
            return False
        if self.push.changed.wait(max(0.0, timeout)):
            self.push.changed.clear()
            return True
        return False

    def close(self) -> None:
        if self.push is not None:
            self.push.stop()
            self.push = None
        self.tree.forget()
        self.items.forget()
