"""Item operations of one EWS mailbox session: sync deltas, fetch, create, flag, delete, move.

UIDs are article numbers (PR_INTERNET_ARTICLE_NUMBER); ``_resolve`` turns them into ItemIds
(cache first, then FindItem restricted to article-number ranges). See ``mailrepl.shared.adapters.ews``
for how deltas and cursors map onto SyncFolderItems.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator, Sequence

from exchangelib import EWSDateTime, EWSTimeZone, ExtendedProperty, Message, Q
from exchangelib import errors as ex
from exchangelib.fields import FieldOrder, FieldPath
from exchangelib.items import ALWAYS_OVERWRITE, HARD_DELETE, ID_ONLY, ITEM_CLASSES, SAVE_ONLY
from exchangelib.restriction import Restriction
from exchangelib.services import FindItem, SyncFolderItems

from mailrepl.shared.adapters.base import AppendItem, FetchedMessage, FolderDelta, MessageMeta
from mailrepl.shared.adapters.ews_calls import translate
from mailrepl.shared.adapters.ews_mapping import flags_to_state, state_to_flags
from mailrepl.shared.errors import MessageRejected, ProtocolError
from mailrepl.shared.model import Cursor

if TYPE_CHECKING:
    from exchangelib.folders import Folder

    from mailrepl.shared.adapters.ews import EwsSession

__all__ = ["ItemOps", "to_utc", "to_ews", "META_FIELDS", "FETCH_CHUNK"]

log = logging.getLogger("mailrepl.ews")

META_FIELDS = ["is_read", "categories", "datetime_received", "size", "mr_article", "mr_flag_status",
               "mr_last_verb", "mr_message_flags"]
FETCH_CHUNK = 16  # bodies per GetItem request (bounds what a fetch buffers)
_RUN_GAP = 256  # split FindItem article-number ranges at gaps wider than this


def to_utc(dt) -> datetime:
    return datetime.fromtimestamp(dt.timestamp(), timezone.utc)


def to_ews(dt: datetime) -> EWSDateTime:
    return EWSDateTime.fromtimestamp(dt.timestamp(), tz=EWSTimeZone("UTC"))


def _register_properties() -> None:
    """The MAPI properties the adapter reads and writes, as fields of every item class (mail
    folders also hold meeting requests/responses, posts and items of unknown classes)."""
    with _REGISTER_LOCK:
        for attr, tag, ptype in (
            ("mr_article", 0x0E23, "Integer"),
            ("mr_flag_status", 0x1090, "Integer"),
            ("mr_last_verb", 0x1081, "Integer"),
            ("mr_message_flags", 0x0E07, "Integer"),
            ("mr_delivery_time", 0x0E06, "SystemTime"),
        ):
            prop = type(f"MapiProp{tag:04X}", (ExtendedProperty,), {"property_tag": tag, "property_type": ptype})
            for cls in ITEM_CLASSES:
                if attr not in {f.name for f in cls.FIELDS}:
                    cls.register(attr, prop)


_REGISTER_LOCK = threading.Lock()
_register_properties()


def _flags(item) -> frozenset[str]:
    return state_to_flags(getattr(item, "is_read", None), item.mr_flag_status, item.mr_last_verb,
                          item.mr_message_flags, item.categories)


def _runs(uids: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for u in uids:
        if runs and u - runs[-1][1] <= _RUN_GAP:
            runs[-1] = (runs[-1][0], u)
        else:
            runs.append((u, u))
    return runs


class ItemOps:
    def __init__(self, session: "EwsSession") -> None:
        self.s = session
        self._ids: dict[str, dict[int, tuple[str, str]]] = {}  # folder id -> uid -> (ItemId, ChangeKey)

    @property
    def account(self):
        return self.s.account

    def forget(self) -> None:
        self._ids.clear()

    def _remember(self, f: "Folder", uid: int | None, item) -> None:
        if uid is not None and item.id:
            self._ids.setdefault(f.id, {})[uid] = (item.id, item.changekey)

    # --- reading -----------------------------------------------------------------------------

    def _find(self, f: "Folder", what: str, q: Q | None = None, descending: bool = False, max_items: int | None = None):
        """FindItem (paged) returning items with their article number. Called at the service level:
        exchangelib counts extended properties as complex, refuses them in its FindItem helpers
        and would add a GetItem of every item, though FindItem returns them as additional
        properties of the view."""
        fields = {FieldPath(field=Message.get_field_by_fieldname("mr_article"))}
        order = [FieldOrder.from_string("-mr_article" if descending else "mr_article", folder=f)]

        restriction = Restriction(q, folders=[f], applies_to=Restriction.ITEMS) if q is not None else None

        def find():
            svc = FindItem(account=self.account, page_size=min(max_items or 1000, 1000))
            found = svc.call(folders=[f], additional_fields=fields, restriction=restriction, order_fields=order,
                             shape=ID_ONLY, query_string=None, depth="Shallow", calendar_view=None,
                             max_items=max_items, offset=0)
            return [i for i in found if not isinstance(i, Exception) and i.mr_article is not None]

        return self.s.call(what, find)

    def highest_uid(self, f: "Folder") -> int:
        top = self._find(f, "highest article number", descending=True, max_items=1)
        return top[0].mr_article if top else 0

    def _present(self, f: "Folder") -> set[int]:
        return {i.mr_article for i in self._find(f, "list article numbers")}

    def _resolve(self, f: "Folder", uids: Sequence[int]) -> dict[int, tuple[str, str]]:
        cached = self._ids.setdefault(f.id, {})
        missing = sorted({u for u in uids if u not in cached})
        for lo, hi in _runs(missing):
            for item in self._find(f, "find items", Q(mr_article__gte=lo) & Q(mr_article__lte=hi)):
                self._remember(f, item.mr_article, item)
        return {u: cached[u] for u in sorted(set(uids)) if u in cached}

    def _get(self, f: "Folder", ids: list[tuple[str, str]], fields: list[str], what: str) -> list:
        def get():
            return list(self.account.fetch(ids=ids, folder=f, only_fields=fields))

        out = []
        for item in self.s.call(what, get):
            if isinstance(item, ex.ErrorItemNotFound):
                out.append(None)  # gone since it was listed: skipped
            elif isinstance(item, Exception):
                raise translate(item, what)
            else:
                out.append(item)
        return out

    def sync(self, f: "Folder", uidvalidity: int, since: Cursor | None) -> FolderDelta:
        """One delta: SyncFolderItems pages until the last item in range, or (from a cursor)
        until ``max_changes`` changes. A full sync (``since=None``, also a resync after
        CursorInvalid) always reads to the end: capture treats it as the whole folder."""
        ep = self.s.adapter.endpoint
        fields = {fp for fp in f.normalize_fields(META_FIELDS) if not fp.field.is_attribute}
        token = since.token if since is not None else None
        created: dict[str, object] = {}
        changed: dict[str, object] = {}
        read_changes: dict[str, bool] = {}
        deleted: set[str] = set()
        count = 0
        while True:
            svc = SyncFolderItems(account=self.account)

            def page(svc=svc, token=token):
                return list(svc.call(folder=f, shape=ID_ONLY, additional_fields=fields, sync_state=token, ignore=None,
                                     max_changes_returned=ep.page_size, sync_scope="NormalItems"))

            changes = self.s.call("sync items", page)
            for kind, obj in changes:
                if isinstance(obj, Exception):
                    raise translate(obj, "sync items")
                if kind == SyncFolderItems.CREATE:
                    created[obj.id] = obj
                elif kind == SyncFolderItems.UPDATE:
                    (created if obj.id in created else changed)[obj.id] = obj
                elif kind == SyncFolderItems.READ_FLAG_CHANGE:
                    item_id, is_read = obj
                    target = created.get(item_id.id) or changed.get(item_id.id)
                    if target is not None:
                        target.is_read = is_read
                    else:
                        read_changes[item_id.id] = is_read
                elif kind == SyncFolderItems.DELETE:
                    for d in (created, changed, read_changes):
                        d.pop(obj.id, None)
                    deleted.add(obj.id)
            if any(k in (SyncFolderItems.CREATE, SyncFolderItems.UPDATE) and getattr(o, "mr_article", None) is None
                   for k, o in changes):
                # Without it there is no UID; skipping such items would lose them silently.
                raise ProtocolError(f"{self.s.address}: {f.name!r}: an item came without PR_INTERNET_ARTICLE_NUMBER "
                                    "(0x0E23); this server cannot be captured by article number")
            count += len(changes)
            same = svc.sync_state == token
            token = svc.sync_state
            if svc.includes_last_item_in_range or same:
                break
            if since is not None and count >= ep.max_changes:
                break  # a partial delta: its cursor is this page's sync state
        if read_changes:
            ids = [(i, None) for i in read_changes]
            for item in self._get(f, ids, META_FIELDS, "read flags"):
                if item is not None:
                    changed[item.id] = item
        if since is not None and not (created or changed or deleted):
            return FolderDelta(since)
        old_next = since.uidnext if since is not None else 1
        modseq = (since.highestmodseq if since is not None else 0) + 1
        new = sorted((self._meta(f, i, modseq) for i in created.values() if i.mr_article is not None),
                     key=lambda m: m.uid)
        new_uids = {m.uid for m in new}
        vanished: tuple[int, ...] = ()
        if since is not None and deleted:
            present = self._present(f) | new_uids
            vanished = tuple(u for u in range(1, old_next) if u not in present)
        changed_meta = tuple(sorted((self._meta(f, i, modseq) for i in changed.values()
                                     if i.mr_article is not None and i.mr_article not in new_uids), key=lambda m: m.uid))
        uidnext = max([old_next] + [m.uid + 1 for m in new])
        cursor = Cursor(uidvalidity, modseq, uidnext, token or "")
        return FolderDelta(cursor, vanished=vanished, changed=changed_meta, new=tuple(new))

    def _meta(self, f: "Folder", item, modseq: int) -> MessageMeta:
        self._remember(f, item.mr_article, item)
        return MessageMeta(
            uid=item.mr_article, flags=_flags(item), modseq=modseq, size=item.size or 0, guid=None,
            internaldate=to_utc(item.datetime_received) if item.datetime_received else None,
        )

    def fetch(self, f: "Folder", uids: Sequence[int]) -> Iterator[FetchedMessage]:
        ids = self._resolve(f, uids)
        order = sorted(ids)
        for i in range(0, len(order), FETCH_CHUNK):
            chunk = order[i: i + FETCH_CHUNK]
            items = self._get(f, [ids[u] for u in chunk], META_FIELDS + ["mime_content"], "fetch")
            for uid, item in zip(chunk, items):
                if item is None or item.mr_article != uid:
                    continue
                yield FetchedMessage(
                    uid=uid, flags=_flags(item), body=item.mime_content or b"",
                    internaldate=to_utc(item.datetime_received) if item.datetime_received else datetime.now(timezone.utc),
                )

    # --- changing ----------------------------------------------------------------------------

    def _articles(self, f: "Folder", new_ids: list, what: str) -> list[int | None]:
        items = self._get(f, [(i.id, i.changekey) for i in new_ids], ["mr_article"], what)
        out = []
        for item in items:
            uid = item.mr_article if item is not None else None
            if item is not None:
                self._remember(f, uid, item)
            out.append(uid)
        return out

    def create(self, f: "Folder", items: Sequence[AppendItem]) -> list[int]:
        msgs = []
        for it in items:
            st = flags_to_state(it.flags)
            msgs.append(Message(
                account=self.account, folder=f, mime_content=it.body, is_read=st.is_read,
                categories=list(st.categories) or None, mr_message_flags=st.message_flags,
                mr_flag_status=st.flag_status, mr_last_verb=st.last_verb,
                mr_delivery_time=to_ews(it.internaldate) if it.internaldate else None,
            ))

        def create():
            return list(self.account.bulk_create(folder=f, items=msgs, message_disposition=SAVE_ONLY))

        results = self.s.call("append", create, repeatable=False)
        bad = [i for i, r in enumerate(results) if isinstance(r, Exception)]
        if bad:
            made = [(r.id, r.changekey) for r in results if not isinstance(r, Exception)]
            if made:
                self.s.call("undo append", lambda: list(self.account.bulk_delete(ids=made, delete_type=HARD_DELETE)))
            first = results[bad[0]]
            raise MessageRejected(f"{self.s.address}: CreateItem refused item {bad[0]}: {first}", index=bad[0])
        uids = self._articles(f, results, "append: article numbers")
        if any(u is None for u in uids):
            raise translate(ex.ErrorItemNotFound("a created item has no article number"), "append")
        return uids

    def set_flags(self, f: "Folder", uids: Sequence[int], flags: frozenset[str]) -> None:
        st = flags_to_state(flags)
        ids = self._resolve(f, uids)
        if not ids:
            return
        fieldnames = ["is_read", "categories", "mr_flag_status", "mr_last_verb"]
        updates = [
            (Message(account=self.account, folder=f, id=iid, changekey=ck, is_read=st.is_read,
                     categories=list(st.categories) or None, mr_flag_status=st.flag_status,
                     mr_last_verb=st.last_verb), fieldnames)
            for iid, ck in ids.values()
        ]

        def update():
            return list(self.account.bulk_update(items=updates, conflict_resolution=ALWAYS_OVERWRITE))

        for uid, res in zip(list(ids), self.s.call("store flags", update)):
            if isinstance(res, ex.ErrorItemNotFound):
                self._ids.get(f.id, {}).pop(uid, None)
            elif isinstance(res, Exception):
                raise translate(res, "store flags")
            elif isinstance(res, tuple):
                self._ids.setdefault(f.id, {})[uid] = res

    def delete(self, f: "Folder", uids: Sequence[int]) -> None:
        ids = self._resolve(f, uids)
        if not ids:
            return

        def delete():
            return list(self.account.bulk_delete(ids=list(ids.values()), delete_type=HARD_DELETE))

        for uid, res in zip(list(ids), self.s.call("expunge", delete)):
            if isinstance(res, Exception) and not isinstance(res, ex.ErrorItemNotFound):
                raise translate(res, "expunge")
            self._ids.get(f.id, {}).pop(uid, None)

    def move(self, f: "Folder", uids: Sequence[int], dest: "Folder") -> dict[int, int]:
        ids = self._resolve(f, uids)
        if not ids:
            return {}

        def move():
            return list(self.account.bulk_move(ids=list(ids.values()), to_folder=dest))

        results = self.s.call("move", move, repeatable=False)
        moved: list[tuple[int, object]] = []
        for uid, res in zip(list(ids), results):
            self._ids.get(f.id, {}).pop(uid, None)
            if isinstance(res, ex.ErrorItemNotFound):
                continue
            if isinstance(res, Exception):
                raise translate(res, "move")
            moved.append((uid, _IdPair(*res) if isinstance(res, tuple) else res))
        new_uids = self._articles(dest, [r for _, r in moved], "move: article numbers") if moved else []
        return {uid: new for (uid, _), new in zip(moved, new_uids) if new is not None}


class _IdPair:
    __slots__ = ("id", "changekey")

    def __init__(self, id: str, changekey: str) -> None:  # noqa: A002 (EWS's name)
        self.id, self.changekey = id, changekey
