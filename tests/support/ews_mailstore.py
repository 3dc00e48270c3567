"""The in-memory mailbox store behind the EWS protocol-shape responder.

It keeps what an Exchange mailbox exposes through EWS and nothing more: a folder tree under
``root`` / ``msgfolderroot`` with distinguished folders, items with their MIME content stored
verbatim, ``IsRead``, ``Categories``, MAPI properties set through ``ExtendedProperty``
(PR_FLAG_STATUS 0x1090, PR_MESSAGE_FLAGS 0x0E07, PR_LAST_VERB_EXECUTED 0x1081,
PR_MESSAGE_DELIVERY_TIME 0x0E06) and a per-folder ``PR_INTERNET_ARTICLE_NUMBER`` (0x0E23) that
grows monotonically, as Exchange assigns it.

Sync states are opaque tokens; the store keeps the client's knowledge (item id -> version and
read state) per token, which is what a real sync state encodes, so paging and coalescing of
changes behave as documented for SyncFolderItems.
"""
from __future__ import annotations

import base64
import itertools
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

__all__ = [
    "PR_ARTICLE_NUMBER",
    "PR_DELIVERY_TIME",
    "PR_FLAG_STATUS",
    "PR_LAST_VERB",
    "PR_MESSAGE_FLAGS",
    "MSGFLAG_READ",
    "MSGFLAG_UNSENT",
    "StoreError",
    "Item",
    "StoreFolder",
    "Mailbox",
    "MailStore",
]  # MailStore.subscriptions serve Subscribe/GetStreamingEvents (tests.support.ews_streaming)

PR_ARTICLE_NUMBER = 0x0E23
PR_DELIVERY_TIME = 0x0E06
PR_FLAG_STATUS = 0x1090
PR_LAST_VERB = 0x1081
PR_MESSAGE_FLAGS = 0x0E07
MSGFLAG_READ, MSGFLAG_UNSENT = 0x1, 0x8

DISTINGUISHED = {  # name -> (display name, folder class, parent)
    "msgfolderroot": ("Top of Information Store", "IPF.Note", "root"),
    "inbox": ("Inbox", "IPF.Note", "msgfolderroot"),
    "drafts": ("Drafts", "IPF.Note", "msgfolderroot"),
    "sentitems": ("Sent Items", "IPF.Note", "msgfolderroot"),
    "deleteditems": ("Deleted Items", "IPF.Note", "msgfolderroot"),
    "junkemail": ("Junk Email", "IPF.Note", "msgfolderroot"),
    "outbox": ("Outbox", "IPF.Note", "msgfolderroot"),
    "calendar": ("Calendar", "IPF.Appointment", "msgfolderroot"),
    "contacts": ("Contacts", "IPF.Contact", "msgfolderroot"),
}

_counter = itertools.count(1)


def _new_id(kind: bytes) -> str:
    """An opaque, Exchange-sized id (real ones are base64 entry ids of ~150 characters)."""
    return base64.b64encode(b"AAMk" + kind + next(_counter).to_bytes(8, "big") + os.urandom(90)).decode()


class StoreError(Exception):
    """A request the mailbox refuses; ``code`` is the EWS ResponseCode."""

    def __init__(self, code: str, text: str = "") -> None:
        super().__init__(text or code)
        self.code = code


@dataclass
class Item:
    id: str
    folder_id: str
    mime: bytes
    article: int
    is_read: bool = False
    categories: list[str] = field(default_factory=list)
    props: dict[int, str] = field(default_factory=dict)  # MAPI tag -> EWS text value
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    version: int = 1  # bumped on every change except IsRead
    read_version: int = 1
    tag: str = "Message"  # the item's element: Message, MeetingRequest, PostItem, ...

    @property
    def changekey(self) -> str:
        return base64.b64encode(f"CQAAAB{self.version}.{self.read_version}".encode()).decode()

    @property
    def received(self) -> datetime:
        text = self.props.get(PR_DELIVERY_TIME)
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else self.created

    @property
    def message_flags(self) -> int:
        base = int(self.props.get(PR_MESSAGE_FLAGS, "0")) & ~MSGFLAG_READ
        return base | (MSGFLAG_READ if self.is_read else 0)


@dataclass
class StoreFolder:
    id: str
    parent_id: str | None
    name: str
    folder_class: str = "IPF.Note"
    distinguished: str | None = None
    next_article: int = 1
    items: dict[str, Item] = field(default_factory=dict)
    version: int = 1

    @property
    def changekey(self) -> str:
        return base64.b64encode(f"AQAAAB{self.version}".encode()).decode()


class Mailbox:
    def __init__(self, smtp: str) -> None:
        self.smtp = smtp
        self.on_change = lambda event, obj_id, parent_id, is_folder: None  # set by MailStore
        self.folders: dict[str, StoreFolder] = {}
        self.by_name: dict[str, str] = {}
        root = StoreFolder(_new_id(b"FR"), None, "root", "", "root")
        self.folders[root.id] = root
        self.by_name["root"] = root.id
        for name, (display, cls, parent) in DISTINGUISHED.items():
            f = StoreFolder(_new_id(b"FD"), self.by_name[parent], display, cls, name)
            self.folders[f.id] = f
            self.by_name[name] = f.id

    def folder(self, fid: str) -> StoreFolder:
        f = self.folders.get(fid)
        if f is None:
            raise StoreError("ErrorFolderNotFound", "The specified folder could not be found in the store.")
        return f

    def distinguished(self, name: str) -> StoreFolder:
        fid = self.by_name.get(name)
        if fid is None:
            raise StoreError("ErrorFolderNotFound", f"The distinguished folder {name} does not exist.")
        return self.folders[fid]

    def children(self, fid: str) -> list[StoreFolder]:
        return [f for f in self.folders.values() if f.parent_id == fid]

    def descendants(self, fid: str) -> list[StoreFolder]:
        out, todo = [], [fid]
        while todo:
            for child in self.children(todo.pop()):
                out.append(child)
                todo.append(child.id)
        return out

    def find_item(self, item_id: str) -> Item:
        for f in self.folders.values():
            it = f.items.get(item_id)
            if it is not None:
                return it
        raise StoreError("ErrorItemNotFound", "The specified object was not found in the store.")

    # --- changes ---------------------------------------------------------------------------

    def create_folder(self, parent_id: str, name: str, folder_class: str = "IPF.Note") -> StoreFolder:
        self.folder(parent_id)
        if any(c.name.lower() == name.lower() for c in self.children(parent_id)):
            raise StoreError("ErrorFolderExists", "A folder with the specified name already exists.")
        f = StoreFolder(_new_id(b"FC"), parent_id, name, folder_class or "IPF.Note")
        self.folders[f.id] = f
        self.on_change("CreatedEvent", f.id, parent_id, True)
        return f

    def update_folder(self, fid: str, name: str | None = None, parent_id: str | None = None) -> StoreFolder:
        f = self.folder(fid)
        if f.distinguished:
            raise StoreError("ErrorCannotRenameOrMoveDistinguishedFolder", "Cannot move or rename distinguished folders.")
        new_parent = parent_id or f.parent_id
        new_name = name if name is not None else f.name
        if new_parent in {d.id for d in self.descendants(fid)} | {fid}:
            raise StoreError("ErrorMoveCopyFailed", "Cannot move a folder below itself.")
        if any(c.name.lower() == new_name.lower() and c.id != fid for c in self.children(new_parent)):
            raise StoreError("ErrorFolderExists", "A folder with the specified name already exists.")
        f.name, f.parent_id = new_name, new_parent
        f.version += 1
        self.on_change("ModifiedEvent", f.id, new_parent, True)
        return f

    def delete_folder(self, fid: str) -> None:
        f = self.folder(fid)
        if f.distinguished:
            raise StoreError("ErrorDeleteDistinguishedFolder", "Distinguished folders cannot be deleted.")
        for d in self.descendants(fid) + [f]:
            del self.folders[d.id]
        self.on_change("DeletedEvent", fid, f.parent_id, True)

    def add_item(self, fid: str, mime: bytes, is_read: bool = False, categories=(), props=None) -> Item:
        f = self.folder(fid)
        it = Item(_new_id(b"IT"), fid, mime, f.next_article, is_read, list(categories), dict(props or {}))
        f.next_article += 1
        f.items[it.id] = it
        self.on_change("CreatedEvent", it.id, fid, False)
        return it

    def move_item(self, item_id: str, dest_id: str) -> Item:
        it = self.find_item(item_id)
        dest = self.folder(dest_id)
        del self.folders[it.folder_id].items[it.id]
        moved = self.add_item(dest.id, it.mime, it.is_read, it.categories, it.props)
        moved.created, moved.tag = it.created, it.tag
        return moved

    def delete_item(self, item_id: str) -> None:
        it = self.find_item(item_id)
        del self.folders[it.folder_id].items[it.id]
        self.on_change("DeletedEvent", it.id, it.folder_id, False)

    def touch(self, it: Item) -> None:
        """An item's properties changed (UpdateItem)."""
        self.on_change("ModifiedEvent", it.id, it.folder_id, False)

    # --- what a mail user (Outlook, OWA, delivery) does, for tests ---------------------------

    def path(self, name: str, create: bool = False) -> StoreFolder:
        """The folder at canonical path ``name`` ("INBOX/x", "Archive/2024")."""
        parts = name.split("/")
        f = self.distinguished("inbox") if parts[0] == "INBOX" else None
        if f is not None:
            parts = parts[1:]
        else:
            f = self.distinguished("msgfolderroot")
        for seg in parts:
            child = next((c for c in self.children(f.id) if c.name == seg), None)
            if child is None:
                if not create:
                    raise StoreError("ErrorFolderNotFound", f"no folder {name}")
                child = self.create_folder(f.id, seg)
            f = child
        return f

    def deliver(self, name: str, mime: bytes, *, is_read: bool = False, flagged: bool = False,
                categories=(), received: datetime | None = None, tag: str = "Message") -> Item:
        props = {PR_MESSAGE_FLAGS: str(MSGFLAG_READ if is_read else 0)}
        if flagged:
            props[PR_FLAG_STATUS] = "2"
        if received is not None:
            props[PR_DELIVERY_TIME] = received.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        it = self.add_item(self.path(name, create=True).id, mime, is_read, categories, props)
        it.tag = tag
        return it

    def set_read(self, item_id: str, is_read: bool) -> None:
        it = self.find_item(item_id)
        if it.is_read != is_read:
            it.is_read = is_read
            it.read_version += 1
            self.touch(it)

    def set_flagged(self, item_id: str, flagged: bool) -> None:
        it = self.find_item(item_id)
        if flagged:
            it.props[PR_FLAG_STATUS] = "2"
        else:
            it.props.pop(PR_FLAG_STATUS, None)
        it.version += 1
        self.touch(it)


class MailStore:
    """All mailboxes of one responder, their sync states, and a lock around both."""

    def __init__(self, users) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.mailboxes = {u.lower(): Mailbox(u) for u in users}
        self.sync_states: dict[str, tuple[str, dict[str, tuple[int, int]]]] = {}
        # subscription id -> (mailbox, folder ids or None for all, pending events)
        self.subscriptions: dict[str, tuple[Mailbox, set[str] | None, list[tuple]]] = {}
        for box in self.mailboxes.values():
            box.on_change = self._notifier(box)

    def _notifier(self, box: Mailbox):
        def notify(event: str, obj_id: str, parent_id: str | None, is_folder: bool) -> None:
            with self.changed:
                stamp = datetime.now(timezone.utc)
                for sub_box, folders, pending in self.subscriptions.values():
                    if sub_box is box and (folders is None or parent_id in folders or obj_id in folders):
                        pending.append((event, obj_id, parent_id, is_folder, stamp))
                self.changed.notify_all()

        return notify

    def subscribe(self, box: Mailbox, folders: set[str] | None) -> str:
        with self.lock:
            sid = base64.b64encode(b"SUB" + os.urandom(21)).decode()
            self.subscriptions[sid] = (box, folders, [])
            return sid

    def mailbox(self, smtp: str) -> Mailbox:
        box = self.mailboxes.get(smtp.lower())
        if box is None:
            raise StoreError("ErrorNonExistentMailbox", f"The SMTP address {smtp} has no mailbox associated with it.")
        return box

    def forget_sync_states(self) -> None:
        """Make every issued sync state unknown (what a mailbox move or expiry does)."""
        with self.lock:
            self.sync_states.clear()

    def sync_hierarchy(self, box: Mailbox, fid: str, token: str | None):
        """One SyncFolderHierarchy answer below ``fid``: ([(kind, folder-or-id)], new token)."""
        box.folder(fid)
        known: dict[str, tuple[int, int]] = {}
        if token:
            state = self.sync_states.get(token)
            if state is None or state[0] != "hierarchy:" + fid:
                raise StoreError("ErrorInvalidSyncStateData", "Synchronization state data is corrupt or otherwise invalid.")
            known = dict(state[1])
        changes: list[tuple[str, object]] = []
        below = box.descendants(fid)
        for f in below:
            seen = known.get(f.id)
            if seen is None:
                changes.append(("Create", f))
            elif seen[0] != f.version:
                changes.append(("Update", f))
        ids = {f.id for f in below}
        changes += [("Delete", i) for i in known if i not in ids]
        new_token = base64.b64encode(b"MmTH" + os.urandom(60)).decode()
        self.sync_states[new_token] = ("hierarchy:" + fid, {f.id: (f.version, 0) for f in below})
        return changes, new_token

    def sync_items(self, box: Mailbox, fid: str, token: str | None, max_changes: int):
        """One SyncFolderItems page: ([(kind, item-or-id, is_read)], new token, includes_last)."""
        folder = box.folder(fid)
        known: dict[str, tuple[int, int]] = {}
        if token:
            state = self.sync_states.get(token)
            if state is None or state[0] != fid:
                raise StoreError("ErrorInvalidSyncStateData", "Synchronization state data is corrupt or otherwise invalid.")
            known = dict(state[1])
        pending: list[tuple[int, str, object]] = []
        for it in sorted(folder.items.values(), key=lambda i: i.article):
            seen = known.get(it.id)
            if seen is None:
                pending.append((0, "Create", it))
            elif seen[0] != it.version:
                pending.append((1, "Update", it))
            elif seen[1] != it.read_version:
                pending.append((1, "ReadFlagChange", it))
        for item_id in known:
            if item_id not in folder.items:
                pending.append((2, "Delete", item_id))
        page = pending[:max_changes]
        for _, kind, obj in page:
            if kind == "Delete":
                known.pop(obj, None)
            else:
                known[obj.id] = (obj.version, obj.read_version)
        new_token = base64.b64encode(b"MmTS" + os.urandom(108)).decode()
        self.sync_states[new_token] = (fid, known)
        return [(kind, obj) for _, kind, obj in page], new_token, len(page) == len(pending)
