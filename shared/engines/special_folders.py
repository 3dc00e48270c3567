"""Special folders pair with the standby's own: a folder the other side marks ``\\Sent`` is the
standby's ``\\Sent`` folder, whatever either is called (``Sent Items`` on one side, ``Sent`` or
``INBOX.Sent`` on the other).

:class:`AliasingAdapter` wraps the standby's adapter. When replay creates a folder with a
special use that another folder of the standby already has, no folder is created: the pairing
(source name -> standby name) is recorded (``folder_alias``) and from then on every operation on
that name — and on its subfolders — goes to the standby's folder, and every listing shows the
standby's folder under the source's name. The DR capture (cutover) and failback read the standby
through the same wrapper, so the source's names come back at failback. Renaming the source folder
renames the pairing only; deleting it ends the pairing and keeps the standby's own folder.

Parents the standby creates by itself: Cyrus makes the missing parents of a new folder real,
selectable folders (Dovecot makes placeholders no listing shows). Those the replay brought into
being are remembered (kind ``implicit``): while empty they are not listed (the source has no such
folder, so the DR capture and failback never see one), and they are removed when the folder that
needed them is deleted or renamed away and they are empty and childless. A parent the source
creates itself, or one that receives mail, is an ordinary folder from then on.

Policy lives here; the adapters below stay as they are.
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

from sqlalchemy import delete, select

from mailrepl.shared.store import Store
from mailrepl.shared.store.models import FolderAlias

__all__ = ["AliasedSession", "AliasingAdapter", "FolderAliases"]


class FolderAliases:
    """The recorded pairings of one standby server, per mailbox.

    Read at every session opened on the standby (each replay pass opens one), written only
    through :meth:`save`: what was read is kept in memory until a save of that mailbox, so a
    pass reads no pairing from the state store. A read that overlapped a save is not kept."""

    def __init__(self, store: Store, server: str) -> None:
        self.store, self.server = store, server
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], dict[str, str]] = {}  # (address, kind) -> pairings
        self._saves = 0  # bumped by every save: a read begun before it is not kept

    def load(self, address: str, kind: str = "special") -> dict[str, str]:
        key = (address, kind)
        with self._lock:
            known, saves = self._known.get(key), self._saves
        if known is not None:
            return dict(known)
        with self.store.read() as s:
            rows = dict(s.execute(select(FolderAlias.source_name, FolderAlias.standby_name).where(
                FolderAlias.server == self.server, FolderAlias.address == address, FolderAlias.kind == kind)).all())
        with self._lock:
            if self._saves == saves:
                self._known[key] = dict(rows)
        return rows

    def save(self, address: str, source: str, standby: str | None, kind: str = "special") -> None:
        """Record ``source`` -> ``standby`` (None: forget ``source``)."""
        with self._lock:
            try:
                with self.store.tx() as s:
                    s.execute(delete(FolderAlias).where(FolderAlias.server == self.server, FolderAlias.address == address,
                                                        FolderAlias.source_name == source, FolderAlias.kind == kind))
                    if standby is not None:
                        s.add(FolderAlias(server=self.server, address=address, source_name=source,
                                          standby_name=standby, kind=kind))
            finally:  # committed or not, what was kept of this mailbox is read again
                self._saves += 1
                self._known.pop((address, kind), None)


class AliasingAdapter:
    def __init__(self, inner, aliases: FolderAliases) -> None:
        self.inner, self.aliases = inner, aliases
        self.name = inner.name

    def open(self, address: str) -> AliasedSession:
        return AliasedSession(self.inner.open(address), self.aliases, address)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class AliasedSession:
    def __init__(self, inner, aliases: FolderAliases, address: str) -> None:
        self.inner, self._aliases, self.address = inner, aliases, address
        self.map = aliases.load(address)  # source name -> standby name
        self.implicit = set(aliases.load(address, "implicit"))  # parents the standby made by itself

    def __getattr__(self, name: str):  # features, wait_for_change, close, stored_digests, server_facts …
        return getattr(self.inner, name)

    # names ------------------------------------------------------------------------------------

    def _to(self, name: str) -> str:
        for src, dst in self.map.items():
            if name == src:
                return dst
            if name.startswith(src + "/"):
                return dst + name[len(src):]
        return name

    def _from(self, name: str) -> str:
        for src, dst in self.map.items():
            if name == dst:
                return src
            if name.startswith(dst + "/"):
                return src + name[len(dst):]
        return name

    # reads ------------------------------------------------------------------------------------

    def list_folders(self):
        out = [dataclasses.replace(f, name=self._from(f.name)) for f in self.inner.list_folders()]
        out = [f for f in out if not (f.name in self.implicit and f.messages == 0)]
        return sorted(out, key=lambda f: (f.name != "INBOX", f.name))

    def folder_info(self, folder: str):
        info = self.inner.folder_info(self._to(folder))
        return dataclasses.replace(info, name=folder) if info is not None else None

    def changes_since(self, folder: str, since):
        return self.inner.changes_since(self._to(folder), since)

    def fetch(self, folder: str, uids: Sequence[int]):
        return self.inner.fetch(self._to(folder), uids)

    def stored_digests(self, folder: str, uids: Sequence[int]):
        digests = getattr(self.inner, "stored_digests", None)
        return digests(self._to(folder), uids) if digests is not None else {}

    # writes -----------------------------------------------------------------------------------

    def append(self, folder: str, items):
        return self.inner.append(self._to(folder), items)

    def store_flags(self, folder: str, uids: Sequence[int], flags: frozenset[str]) -> None:
        self.inner.store_flags(self._to(folder), uids, flags)

    def expunge(self, folder: str, uids: Sequence[int]) -> None:
        self.inner.expunge(self._to(folder), uids)

    def move(self, folder: str, uids: Sequence[int], dest: str):
        return self.inner.move(self._to(folder), uids, self._to(dest))

    def create_folder(self, folder: str, special_use: frozenset[str] = frozenset()) -> None:
        target = self._to(folder)
        if special_use and target == folder and self.inner.folder_info(folder) is None:
            taken = set(self.map.values())
            own = next((f for f in self.inner.list_folders()
                        if f.special_use & special_use and f.name not in taken and f.name != folder), None)
            if own is not None:
                self._aliases.save(self.address, folder, own.name)
                self.map[folder] = own.name
                return
        if folder in self.implicit:  # the source has this folder itself now
            self._forget_implicit(folder)
        parents = [folder.rsplit("/", n)[0] for n in range(folder.count("/"), 0, -1)]
        missing = parents and [p for p in parents if p not in self._standby_names()]
        self.inner.create_folder(target, special_use)
        if missing:
            made = self._standby_names()
            for p in missing:
                if p in made:  # a real folder the standby made by itself
                    self._aliases.save(self.address, p, self._to(p), "implicit")
                    self.implicit.add(p)

    def _standby_names(self) -> set[str]:
        return {self._from(f.name) for f in self.inner.list_folders()}

    def _forget_implicit(self, folder: str) -> None:
        self._aliases.save(self.address, folder, None, "implicit")
        self.implicit.discard(folder)

    def _drop_implicit_parents(self, folder: str) -> None:
        """Remove the parents of ``folder`` the standby made by itself, deepest first, where empty
        and childless now."""
        for parent in [folder.rsplit("/", n)[0] for n in range(1, folder.count("/") + 1)]:
            if parent not in self.implicit:
                continue
            listed = {f.name: f for f in self.inner.list_folders()}
            info = listed.get(self._to(parent))
            children = any(n.startswith(self._to(parent) + "/") for n in listed)
            if info is not None and (info.messages or children):
                return
            if info is not None:
                self.inner.delete_folder(self._to(parent))
            self._forget_implicit(parent)

    def rename_folder(self, old: str, new: str) -> None:
        if old in self.map:
            standby = self.map.pop(old)
            self._aliases.save(self.address, old, None)
            self._aliases.save(self.address, new, standby)
            self.map[new] = standby
            return
        self.inner.rename_folder(self._to(old), self._to(new))
        self._drop_implicit_parents(old)

    def delete_folder(self, folder: str) -> None:
        if folder in self.map:  # the standby's own special folder stays; the pairing ends
            self._aliases.save(self.address, folder, None)
            del self.map[folder]
            return
        self.inner.delete_folder(self._to(folder))
        self._drop_implicit_parents(folder)
