"""The mail folder tree of one mailbox over EWS: canonical names <-> EWS folders.

Folders are listed with one SyncFolderHierarchy below ``msgfolderroot`` from no sync state (the
whole IPM subtree with parent ids in one answer); capture's folder-id comparison then finds
creates, renames, moves and deletes. The distinguished
Inbox is ``INBOX``; other folders are named by their display names joined with ``/``. Only mail
folders (FolderClass ``IPF.Note...`` or none) are listed, and never the Outbox (items there are
sent). Sent Items, Drafts, Deleted Items and Junk Email carry their special-use flag.
The tree is cached per session and re-read before every folder change and whenever a cached
folder turns out to be gone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from exchangelib import errors as ex
from exchangelib.fields import FieldPath
from exchangelib.folders import Folder, FolderCollection
from exchangelib.items import ID_ONLY
from exchangelib.properties import DistinguishedFolderId, Mailbox
from exchangelib.services import SyncFolderHierarchy

from mailrepl.shared.adapters.ews_calls import translate
from mailrepl.shared.adapters.ews_mapping import SPECIAL_USE, folder_fid, name_to_segment, segment_to_name
from mailrepl.shared.errors import FolderNotFound, ProtocolError

if TYPE_CHECKING:
    from mailrepl.shared.adapters.ews import EwsSession

__all__ = ["FolderTree", "split_name"]

_DISTINGUISHED = tuple(SPECIAL_USE) + ("outbox",)
_FIELDS = {FieldPath(field=Folder.get_field_by_fieldname(name))
           for name in ("name", "folder_class", "parent_folder_id", "total_count")}


def split_name(name: str) -> tuple[str, str]:
    parent, _, leaf = name.rpartition("/")
    return parent, leaf


class FolderTree:
    def __init__(self, session: "EwsSession") -> None:
        self.session = session
        self.root = self.top = self.inbox = None
        self._special: dict[str, str] = {}  # folder id -> distinguished name
        self._by_name: dict[str, Folder] | None = None

    # --- reading ---------------------------------------------------------------------------

    def bind(self) -> None:
        """Look up the distinguished folders that matter for naming (one GetFolder)."""
        from exchangelib.folders import Root

        account = self.session.account

        def fetch():
            root = Root.get_distinguished(account=account)
            root._subfolders = {}  # keep exchangelib from mapping the whole mailbox on first use
            mbx = Mailbox(email_address=self.session.address)
            wanted = ("msgfolderroot", "inbox") + _DISTINGUISHED
            folders = [Folder(_distinguished_id=DistinguishedFolderId(id=d, mailbox=mbx), root=root) for d in wanted]
            found = list(FolderCollection(account=account, folders=folders).get_folders())
            return root, dict(zip(wanted, found))

        root, found = self.session.call("open mailbox", fetch)
        for key in ("msgfolderroot", "inbox"):
            if isinstance(found[key], Exception):
                raise translate(found[key], f"{self.session.address}: open mailbox") from found[key]
        self.root, self.top, self.inbox = root, found["msgfolderroot"], found["inbox"]
        root._subfolders.update({f.id: f for f in (root, self.top, self.inbox)})
        self._special = {f.id: d for d, f in found.items() if d in _DISTINGUISHED and not isinstance(f, Exception)}

    def refresh(self) -> dict[str, Folder]:
        account = self.session.account

        # a plain Folder for the top: exchangelib would give every answer the distinguished id
        # of the folder it was asked about (and then address them all as msgfolderroot)
        top = Folder(root=self.root, id=self.top.id, changekey=self.top.changekey)

        def fetch():
            svc = SyncFolderHierarchy(account=account)
            return [f for kind, f in svc.call(folder=top, shape=ID_ONLY, additional_fields=_FIELDS,
                                               sync_state=None) if kind == svc.CREATE]

        folders = [f for f in self.session.call("list folders", fetch) if not isinstance(f, Exception)]
        by_id = {f.id: f for f in folders}
        # exchangelib resolves Folder.parent through the root's cache: keep it to what we listed
        self.root._subfolders = {**by_id, **{f.id: f for f in (self.root, self.top, self.inbox)}}
        names: dict[str, Folder] = {"INBOX": self.inbox}
        memo: dict[str, str | None] = {self.top.id: "", self.inbox.id: "INBOX"}

        def path(f) -> str | None:
            if f.id in memo:
                return memo[f.id]
            memo[f.id] = None  # guards against cycles
            parent = by_id.get(f.parent_folder_id.id) if f.parent_folder_id else None
            if f.parent_folder_id and f.parent_folder_id.id in (self.top.id, self.inbox.id):
                base = memo[f.parent_folder_id.id]
            elif parent is not None:
                base = path(parent)
            else:
                base = None
            mail = f.folder_class is None or f.folder_class.startswith("IPF.Note")
            if base is None or not mail or self._special.get(f.id) == "outbox":
                return None
            memo[f.id] = f"{base}/{segment_to_name(f.name)}" if base else segment_to_name(f.name)
            return memo[f.id]

        for f in folders:
            name = path(f)
            if name:
                names[name] = f
        self._by_name = names
        return dict(names)

    def forget(self) -> None:
        self._by_name = None

    def find(self, name: str, fresh: bool = False) -> Folder | None:
        if self._by_name is None or fresh:
            self.refresh()
        return self._by_name.get(name)

    def require(self, name: str, fresh: bool = False) -> Folder:
        f = self.find(name, fresh)
        if f is None:
            raise FolderNotFound(f"{self.session.address}: no folder {name!r}")
        return f

    def fid(self, f: Folder) -> str:
        return folder_fid(f.id)

    def special_use(self, f: Folder) -> frozenset[str]:
        d = self._special.get(f.id)
        return frozenset({SPECIAL_USE[d]}) if d in SPECIAL_USE else frozenset()

    # --- changing -----------------------------------------------------------------------------

    def ensure(self, name: str) -> Folder:
        """The folder ``name``, created with any missing parents."""
        found = self.find(name)
        if found is not None:
            return found
        self.refresh()
        parent = self.top
        path = ""
        for seg in name.split("/"):
            path = f"{path}/{seg}" if path else seg
            existing = self._by_name.get(path)
            if existing is not None:
                parent = existing
                continue
            parent = self._create(parent, seg, path)
        return parent

    def _create(self, parent, seg: str, path: str) -> Folder:
        def create():
            f = Folder(parent=parent, name=name_to_segment(seg), folder_class="IPF.Note")
            try:
                return f.save()
            except ex.ErrorFolderExists:
                self.refresh()
                existing = self._by_name.get(path)
                if existing is None:
                    raise
                return existing

        created = self.session.call(f"create folder {path}", create)
        self._by_name[path] = created
        return created

    def rename(self, old: str, new: str) -> None:
        self.refresh()
        f = self._by_name.get(old)
        if f is None:
            return
        if old == "INBOX" or self._special.get(f.id):
            raise ProtocolError(f"{self.session.address}: cannot rename the distinguished folder {old!r}")
        if self._by_name.get(new) is not None:
            raise ProtocolError(f"{self.session.address}: cannot rename {old!r}: {new!r} exists")
        parent_name, leaf = split_name(new)
        parent = self.ensure(parent_name) if parent_name else self.top
        if f.parent_folder_id is None or f.parent_folder_id.id != parent.id:
            self.session.call(f"move folder {old}", lambda: f.move(to_folder=parent))
        if f.name != name_to_segment(leaf):
            f.name = name_to_segment(leaf)
            self.session.call(f"rename folder {old}", lambda: f.save(update_fields=["name"]))
        self.forget()

    def delete(self, name: str) -> None:
        self.refresh()
        f = self._by_name.get(name)
        if f is None:
            return

        def delete():
            try:
                f.delete()
            except ex.ErrorFolderNotFound:
                pass

        self.session.call(f"delete folder {name}", delete)
        self.forget()
