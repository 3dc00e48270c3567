"""The EWS operations of the protocol-shape responder, one function each.

Every operation takes the request element (``<m:GetFolder>`` ...) and a :class:`Context` and
returns the ``<m:...Response>`` element. Per-item problems become per-item response messages
(``ErrorItemNotFound`` ...), as the EWS reference describes for each operation:
learn.microsoft.com/exchange/client-developer/web-service-reference/<operation>-operation, e.g.
``getfolder-operation``, ``findfolder-operation``, ``syncfolderitems-operation``,
``getitem-operation-email-message``, ``createitem-operation-email-message``,
``updateitem-operation``, ``moveitem-operation``, ``deleteitem-operation``,
``createfolder-operation``, ``updatefolder-operation``, ``movefolder-operation``,
``deletefolder-operation``, ``finditem-operation``, ``syncfolderhierarchy-operation``,
``convertid-operation``.
"""
from __future__ import annotations

from lxml import etree

from tests.support.ews_mailstore import MSGFLAG_READ, Item, Mailbox, MailStore, StoreError, StoreFolder
from tests.support.ews_streaming import subscribe, unsubscribe
from tests.support.ews_soap import M, T, ext_tag, folder_xml, item_xml, parse_item_fields, q, response_message, sub, wants_mime

__all__ = ["Context", "OPERATIONS", "folder_ids", "new_response"]


class Context:
    """Which mailbox a request acts on: the impersonated one, else the one its ids name."""

    def __init__(self, store: MailStore, box: Mailbox | None) -> None:
        self.store, self.box = store, box

    def _boxes(self):
        return [self.box] if self.box is not None else list(self.store.mailboxes.values())

    def folder(self, el) -> tuple[Mailbox, StoreFolder]:
        name = etree.QName(el).localname
        if name == "DistinguishedFolderId":
            mbx = el.find(q(T, "Mailbox"))
            box = self.box
            if mbx is not None and mbx.find(q(T, "EmailAddress")) is not None:
                box = self.store.mailbox(mbx.find(q(T, "EmailAddress")).text)
            if box is None:
                raise StoreError("ErrorMissingEmailAddress", "When making a request as an account that does not have a mailbox, you must specify the mailbox primary SMTP address for any distinguished folders.")
            return box, box.distinguished(el.get("Id"))
        for box in self._boxes():
            if el.get("Id") in box.folders:
                return box, box.folders[el.get("Id")]
        raise StoreError("ErrorFolderNotFound", "The specified folder could not be found in the store.")

    def item(self, item_id: str) -> tuple[Mailbox, Item]:
        for box in self._boxes():
            try:
                return box, box.find_item(item_id)
            except StoreError:
                continue
        raise StoreError("ErrorItemNotFound", "The specified object was not found in the store.")


def folder_ids(el):
    return [c for c in el if etree.QName(c).localname in ("FolderId", "DistinguishedFolderId")]


def _per(container, op: str, fn) -> None:
    try:
        fn(response_message(container, op))
    except StoreError as exc:
        container.remove(container[-1])
        response_message(container, op, exc.code, str(exc))


def new_response(op: str):
    resp = etree.Element(q(M, f"{op}Response"), nsmap={"m": M, "t": T})
    return resp, sub(resp, M, "ResponseMessages")


def get_folder(req, ctx: Context):
    resp, msgs = new_response("GetFolder")
    for el in folder_ids(req.find(q(M, "FolderIds"))):
        def one(msg, el=el):
            box, f = ctx.folder(el)
            folder_xml(sub(msg, M, "Folders"), box, f)
        _per(msgs, "GetFolder", one)
    return resp


def find_folder(req, ctx: Context):
    resp, msgs = new_response("FindFolder")
    deep = req.get("Traversal") == "Deep"
    view = req.find(q(M, "IndexedPageFolderView"))
    for el in folder_ids(req.find(q(M, "ParentFolderIds"))):
        def one(msg, el=el):
            box, f = ctx.folder(el)
            found = box.descendants(f.id) if deep else box.children(f.id)
            _paged(msg, found, view, "Folders", lambda parent, x: folder_xml(parent, box, x))
        _per(msgs, "FindFolder", one)
    return resp


def _paged(msg, found, view, tag, render) -> None:
    offset = int(view.get("Offset", "0")) if view is not None else 0
    limit = int(view.get("MaxEntriesReturned", "1000")) if view is not None else 1000
    page = found[offset: offset + limit]
    last = offset + len(page) >= len(found)
    root = sub(msg, M, "RootFolder", IndexedPagingOffset=offset + len(page), TotalItemsInView=len(found),
               IncludesLastItemInRange="true" if last else "false")
    container = sub(root, T, tag)
    for x in page:
        render(container, x)


# --- FindItem restrictions over extended properties (what the adapter filters on) ------------

def _prop(it: Item, uri) -> int | None:
    tag, _ = ext_tag(uri)
    if tag == 0x0E23:
        return it.article
    value = it.props.get(tag)
    return int(value) if value not in (None, "") and value.lstrip("-").isdigit() else None


_CMP = {
    "IsEqualTo": lambda a, b: a == b, "IsNotEqualTo": lambda a, b: a != b,
    "IsGreaterThan": lambda a, b: a > b, "IsGreaterThanOrEqualTo": lambda a, b: a >= b,
    "IsLessThan": lambda a, b: a < b, "IsLessThanOrEqualTo": lambda a, b: a <= b,
}


def _matches(it: Item, expr) -> bool:
    name = etree.QName(expr).localname
    if name == "And":
        return all(_matches(it, c) for c in expr)
    if name == "Or":
        return any(_matches(it, c) for c in expr)
    if name == "Not":
        return not _matches(it, expr[0])
    if name in _CMP:
        uri = expr.find(q(T, "ExtendedFieldURI"))
        const = expr.find(f"{q(T, 'FieldURIOrConstant')}/{q(T, 'Constant')}")
        if uri is None or const is None:
            raise StoreError("ErrorUnsupportedQueryFilter", "The restriction is not supported.")
        value = _prop(it, uri)
        return value is not None and _CMP[name](value, int(const.get("Value")))
    raise StoreError("ErrorUnsupportedQueryFilter", f"The restriction {name} is not supported.")


def find_item(req, ctx: Context):
    resp, msgs = new_response("FindItem")
    restriction = req.find(q(M, "Restriction"))
    order = req.find(f"{q(M, 'SortOrder')}/{q(T, 'FieldOrder')}")
    view = req.find(q(M, "IndexedPageItemView"))
    mime = wants_mime(req.find(q(M, "ItemShape")))
    for el in folder_ids(req.find(q(M, "ParentFolderIds"))):
        def one(msg, el=el):
            box, f = ctx.folder(el)
            found = [i for i in f.items.values() if restriction is None or _matches(i, restriction[0])]
            found.sort(key=lambda i: i.article)
            if order is not None:
                uri = order.find(q(T, "ExtendedFieldURI"))
                if uri is not None:
                    found.sort(key=lambda i: _prop(i, uri) or 0)
                if order.get("Order") == "Descending":
                    found.reverse()
            _paged(msg, found, view, "Items", lambda parent, x: item_xml(parent, box, x, mime))
        _per(msgs, "FindItem", one)
    return resp


def get_item(req, ctx: Context):
    resp, msgs = new_response("GetItem")
    mime = wants_mime(req.find(q(M, "ItemShape")))
    for el in req.find(q(M, "ItemIds")):
        def one(msg, el=el):
            box, it = ctx.item(el.get("Id"))
            item_xml(sub(msg, M, "Items"), box, it, mime)
        _per(msgs, "GetItem", one)
    return resp


def create_item(req, ctx: Context):
    resp, msgs = new_response("CreateItem")
    target = req.find(q(M, "SavedItemFolderId"))
    reject = getattr(ctx.store, "reject", set())
    for msg_el in req.find(q(M, "Items")):
        def one(msg, msg_el=msg_el):
            if target is None:
                raise StoreError("ErrorInvalidOperation", "SavedItemFolderId is required.")
            box, f = ctx.folder(target[0])
            fields = parse_item_fields(msg_el)
            body = fields.get("mime", b"")
            if not body or body in reject:
                raise StoreError("ErrorMimeContentConversionFailed", "MIME content conversion failed.")
            it = box.add_item(f.id, body, fields.get("is_read", False), fields.get("categories", ()), fields.get("props"))
            if int(it.props.get(0x0E07, "0")) & MSGFLAG_READ:
                it.is_read = True
            items = sub(msg, M, "Items")
            sub(sub(items, T, "Message"), T, "ItemId", Id=it.id, ChangeKey=it.changekey)
        _per(msgs, "CreateItem", one)
    return resp


def update_item(req, ctx: Context):
    resp, msgs = new_response("UpdateItem")
    for change in req.find(q(M, "ItemChanges")):
        def one(msg, change=change):
            box, it = ctx.item(change.find(q(T, "ItemId")).get("Id"))
            read_before, before = it.is_read, (dict(it.props), list(it.categories))
            for upd in change.find(q(T, "Updates")):
                kind = etree.QName(upd).localname
                uri = upd[0]
                if kind == "DeleteItemField":
                    if etree.QName(uri).localname == "ExtendedFieldURI":
                        it.props.pop(ext_tag(uri)[0], None)
                    elif uri.get("FieldURI") == "item:Categories":
                        it.categories = []
                    continue
                fields = parse_item_fields(upd[1])
                if "is_read" in fields:
                    it.is_read = fields["is_read"]
                if "categories" in fields:
                    it.categories = fields["categories"]
                for tag, value in fields.get("props", {}).items():
                    if tag != 0x0E07:  # PR_MESSAGE_FLAGS is read-only once the item was saved
                        it.props[tag] = value
            if (it.props, it.categories) != before:
                it.version += 1
            if it.is_read != read_before:
                it.read_version += 1
            if it.is_read != read_before or (it.props, it.categories) != before:
                box.touch(it)
            items = sub(msg, M, "Items")
            sub(sub(items, T, "Message"), T, "ItemId", Id=it.id, ChangeKey=it.changekey)
            conflicts = sub(msg, M, "ConflictResults")
            sub(conflicts, T, "Count", "0")
        _per(msgs, "UpdateItem", one)
    return resp


def move_item(req, ctx: Context):
    resp, msgs = new_response("MoveItem")
    dest = req.find(q(M, "ToFolderId"))[0]
    for el in req.find(q(M, "ItemIds")):
        def one(msg, el=el):
            dbox, df = ctx.folder(dest)
            box, it = ctx.item(el.get("Id"))
            moved = box.move_item(it.id, df.id)
            items = sub(msg, M, "Items")
            sub(sub(items, T, "Message"), T, "ItemId", Id=moved.id, ChangeKey=moved.changekey)
        _per(msgs, "MoveItem", one)
    return resp


def delete_item(req, ctx: Context):
    resp, msgs = new_response("DeleteItem")
    for el in req.find(q(M, "ItemIds")):
        def one(msg, el=el):
            box, it = ctx.item(el.get("Id"))
            box.delete_item(it.id)
        _per(msgs, "DeleteItem", one)
    return resp


def _folder_reply(msg, f: StoreFolder) -> None:
    sub(sub(sub(msg, M, "Folders"), T, "Folder"), T, "FolderId", Id=f.id, ChangeKey=f.changekey)


def create_folder(req, ctx: Context):
    resp, msgs = new_response("CreateFolder")
    parent = req.find(q(M, "ParentFolderId"))[0]
    for el in req.find(q(M, "Folders")):
        def one(msg, el=el):
            box, p = ctx.folder(parent)
            name = el.findtext(q(T, "DisplayName")) or ""
            f = box.create_folder(p.id, name, el.findtext(q(T, "FolderClass")) or "IPF.Note")
            _folder_reply(msg, f)
        _per(msgs, "CreateFolder", one)
    return resp


def update_folder(req, ctx: Context):
    resp, msgs = new_response("UpdateFolder")
    for change in req.find(q(M, "FolderChanges")):
        def one(msg, change=change):
            box, f = ctx.folder(folder_ids(change)[0])
            for upd in change.find(q(T, "Updates")):
                if upd[0].get("FieldURI") == "folder:DisplayName" and len(upd) > 1:
                    box.update_folder(f.id, name=upd[1].findtext(q(T, "DisplayName")))
            _folder_reply(msg, f)
        _per(msgs, "UpdateFolder", one)
    return resp


def move_folder(req, ctx: Context):
    resp, msgs = new_response("MoveFolder")
    dest = req.find(q(M, "ToFolderId"))[0]
    for el in folder_ids(req.find(q(M, "FolderIds"))):
        def one(msg, el=el):
            box, f = ctx.folder(el)
            _, d = ctx.folder(dest)
            _folder_reply(msg, box.update_folder(f.id, parent_id=d.id))
        _per(msgs, "MoveFolder", one)
    return resp


def delete_folder(req, ctx: Context):
    resp, msgs = new_response("DeleteFolder")
    for el in folder_ids(req.find(q(M, "FolderIds"))):
        def one(msg, el=el):
            box, f = ctx.folder(el)
            box.delete_folder(f.id)
        _per(msgs, "DeleteFolder", one)
    return resp


def sync_folder_items(req, ctx: Context):
    resp, msgs = new_response("SyncFolderItems")
    mime = wants_mime(req.find(q(M, "ItemShape")))
    token = req.findtext(q(M, "SyncState")) or None
    max_changes = int(req.findtext(q(M, "MaxChangesReturned")) or "512")
    msg = response_message(msgs, "SyncFolderItems")
    try:
        box, f = ctx.folder(req.find(q(M, "SyncFolderId"))[0])
        changes, new_token, last = ctx.store.sync_items(box, f.id, token, max_changes)
    except StoreError as exc:
        msgs.remove(msg)
        msg = response_message(msgs, "SyncFolderItems", exc.code, str(exc))
        # Error responses still carry these elements, the sync state empty (see the
        # SyncFolderItemsResponseMessage reference and real ErrorInvalidSyncStateData replies).
        sub(msg, M, "SyncState")
        sub(msg, M, "IncludesLastItemInRange", "true")
        return resp
    sub(msg, M, "SyncState", new_token)
    sub(msg, M, "IncludesLastItemInRange", "true" if last else "false")
    container = sub(msg, M, "Changes")
    for kind, obj in changes:
        el = sub(container, T, kind)
        if kind == "Delete":
            sub(el, T, "ItemId", Id=obj, ChangeKey="AAAA")
        elif kind == "ReadFlagChange":
            sub(el, T, "ItemId", Id=obj.id, ChangeKey=obj.changekey)
            sub(el, T, "IsRead", "true" if obj.is_read else "false")
        else:
            item_xml(el, box, obj, mime)
    return resp


def sync_folder_hierarchy(req, ctx: Context):
    resp, msgs = new_response("SyncFolderHierarchy")
    token = req.findtext(q(M, "SyncState")) or None
    msg = response_message(msgs, "SyncFolderHierarchy")
    try:
        target = req.find(q(M, "SyncFolderId"))
        if target is not None:
            box, f = ctx.folder(target[0])
        elif ctx.box is not None:
            box, f = ctx.box, ctx.box.distinguished("root")
        else:
            raise StoreError("ErrorMissingEmailAddress", "A mailbox is needed.")
        changes, new_token = ctx.store.sync_hierarchy(box, f.id, token)
    except StoreError as exc:
        msgs.remove(msg)
        msg = response_message(msgs, "SyncFolderHierarchy", exc.code, str(exc))
        sub(msg, M, "SyncState")
        sub(msg, M, "IncludesLastFolderInRange", "true")
        return resp
    sub(msg, M, "SyncState", new_token)
    sub(msg, M, "IncludesLastFolderInRange", "true")
    container = sub(msg, M, "Changes")
    for kind, obj in changes:
        el = sub(container, T, kind)
        if kind == "Delete":
            sub(el, T, "FolderId", Id=obj, ChangeKey="AQAAAA==")
        else:
            folder_xml(el, box, obj)
    return resp


def convert_id(req, ctx: Context):
    # exchangelib probes the server version with a ConvertId of a dummy id; any answer with a
    # ServerVersionInfo header will do, and Exchange answers a malformed id like this.
    resp, msgs = new_response("ConvertId")
    for _ in req.find(q(M, "SourceIds")):
        response_message(msgs, "ConvertId", "ErrorInvalidIdMalformed", "Id is malformed.")
    return resp


OPERATIONS = {
    "GetFolder": get_folder,
    "FindFolder": find_folder,
    "FindItem": find_item,
    "GetItem": get_item,
    "CreateItem": create_item,
    "UpdateItem": update_item,
    "MoveItem": move_item,
    "DeleteItem": delete_item,
    "CreateFolder": create_folder,
    "UpdateFolder": update_folder,
    "MoveFolder": move_folder,
    "DeleteFolder": delete_folder,
    "SyncFolderItems": sync_folder_items,
    "SyncFolderHierarchy": sync_folder_hierarchy,
    "ConvertId": convert_id,
    "Subscribe": subscribe,
    "Unsubscribe": unsubscribe,
}
