"""SOAP envelopes, response messages and item/folder XML for the EWS protocol-shape responder.

Shapes follow Microsoft's EWS reference (learn.microsoft.com/exchange/client-developer/
web-service-reference/...):

- envelope and ``ServerVersionInfo`` header: ``serverversioninfo``
- a response message (``ResponseClass``, ``ResponseCode``, ``MessageText``): ``responsecode``,
  ``finditemresponsemessage``
- SOAP faults with ``ResponseCode``/``MessageXml`` in ``detail`` (ErrorServerBusy with the
  ``BackOffMilliseconds`` value): ``messagexml``, "EWS throttling in Exchange"
- ``Folder``: ``folder``; ``Message``: ``message-ex15websvcsotherref``; ``MimeContent``:
  ``mimecontent``; ``ExtendedProperty`` / ``ExtendedFieldURI``: ``extendedproperty``,
  ``extendedfielduri``
"""
from __future__ import annotations

import base64
from datetime import timezone

from lxml import etree

from tests.support.ews_mailstore import PR_ARTICLE_NUMBER, PR_DELIVERY_TIME, PR_MESSAGE_FLAGS, Item, Mailbox, StoreFolder

__all__ = [
    "S", "M", "T", "E",
    "q", "sub",
    "envelope",
    "response_message",
    "soap_fault",
    "folder_xml",
    "item_xml",
    "ext_tag",
    "parse_item_fields",
    "wants_mime",
]

S = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
NSMAP = {"s": S, "m": M, "t": T}

# Exchange 2016 CU (15.1) build numbers, as in the ServerVersionInfo documentation example.
SERVER_VERSION = {"MajorVersion": "15", "MinorVersion": "1", "MajorBuildNumber": "2507",
                  "MinorBuildNumber": "6", "Version": "Exchange2016"}


def q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def sub(parent, ns: str, tag: str, text: str | None = None, **attrs):
    el = etree.SubElement(parent, q(ns, tag), {k: str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def envelope(body_child=None, with_header: bool = True) -> bytes:
    env = etree.Element(q(S, "Envelope"), nsmap=NSMAP)
    if with_header:
        header = sub(env, S, "Header")
        sub(header, T, "ServerVersionInfo", **SERVER_VERSION)
    body = sub(env, S, "Body")
    if body_child is not None:
        body.append(body_child)
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def response_message(container, op: str, code: str = "NoError", text: str = ""):
    """Append ``<m:{op}ResponseMessage>`` with class and code; returns it for the payload."""
    cls = "Success" if code == "NoError" else "Error"
    msg = sub(container, M, f"{op}ResponseMessage", ResponseClass=cls)
    if code != "NoError":
        sub(msg, M, "MessageText", text or code)
    sub(msg, M, "ResponseCode", code)
    if code != "NoError":
        sub(msg, M, "DescriptiveLinkKey", "0")
    return msg


def soap_fault(code: str, text: str, back_off_ms: int | None = None) -> bytes:
    """A SOAP 1.1 fault as EWS sends it (HTTP 500) for request-level errors."""
    env = etree.Element(q(S, "Envelope"), nsmap=NSMAP)
    body = sub(env, S, "Body")
    fault = sub(body, S, "Fault")
    etree.SubElement(fault, "faultcode").text = "a:" + code
    etree.SubElement(fault, "faultstring", {"{http://www.w3.org/XML/1998/namespace}lang": "en-US"}).text = text
    detail = etree.SubElement(fault, "detail")
    etree.SubElement(detail, q(E, "ResponseCode"), nsmap={"e": E}).text = code
    etree.SubElement(detail, q(E, "Message"), nsmap={"e": E}).text = text
    if back_off_ms is not None:
        mx = etree.SubElement(detail, q(T, "MessageXml"), nsmap={"t": T})
        sub(mx, T, "Value", str(back_off_ms), Name="BackOffMilliseconds")
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def folder_xml(parent, box: Mailbox, f: StoreFolder):
    tag = {"IPF.Appointment": "CalendarFolder", "IPF.Contact": "ContactsFolder"}.get(f.folder_class, "Folder")
    el = sub(parent, T, tag)
    sub(el, T, "FolderId", Id=f.id, ChangeKey=f.changekey)
    if f.parent_id:
        p = box.folders[f.parent_id]
        sub(el, T, "ParentFolderId", Id=p.id, ChangeKey=p.changekey)
    if f.folder_class:
        sub(el, T, "FolderClass", f.folder_class)
    sub(el, T, "DisplayName", f.name)
    sub(el, T, "TotalCount", str(len(f.items)))
    sub(el, T, "ChildFolderCount", str(len(box.children(f.id))))
    sub(el, T, "UnreadCount", str(sum(1 for i in f.items.values() if not i.is_read)))
    return el


def ext_tag(el) -> tuple[int, str]:
    """(tag, type) of an ``ExtendedFieldURI`` element (PropertyTag is hex, e.g. ``0x1090``)."""
    return int(el.get("PropertyTag"), 16), el.get("PropertyType")


_ITEM_CLASSES = {"MeetingRequest": "IPM.Schedule.Meeting.Request", "PostItem": "IPM.Post"}
_PROP_TYPES = {PR_DELIVERY_TIME: "SystemTime"}  # the others the store keeps are Integer


def item_xml(parent, box: Mailbox, it: Item, mime: bool = False):
    el = sub(parent, T, it.tag)
    if mime:
        sub(el, T, "MimeContent", base64.b64encode(it.mime).decode(), CharacterSet="UTF-8")
    sub(el, T, "ItemId", Id=it.id, ChangeKey=it.changekey)
    f = box.folders[it.folder_id]
    sub(el, T, "ParentFolderId", Id=f.id, ChangeKey=f.changekey)
    sub(el, T, "ItemClass", _ITEM_CLASSES.get(it.tag, "IPM.Note"))
    received = it.received.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    sub(el, T, "DateTimeReceived", received)
    sub(el, T, "Size", str(len(it.mime)))
    if it.categories:
        cats = sub(el, T, "Categories")
        for c in it.categories:
            sub(cats, T, "String", c)
    props = dict(it.props)
    props[PR_ARTICLE_NUMBER] = str(it.article)
    props[PR_MESSAGE_FLAGS] = str(it.message_flags)
    for ptag in sorted(props):
        ep = sub(el, T, "ExtendedProperty")
        sub(ep, T, "ExtendedFieldURI", PropertyTag=hex(ptag), PropertyType=_PROP_TYPES.get(ptag, "Integer"))
        sub(ep, T, "Value", props[ptag])
    sub(el, T, "IsRead", "true" if it.is_read else "false")
    return el


def parse_item_fields(msg) -> dict:
    """The settable fields of a ``<t:Message>`` in CreateItem/UpdateItem: mime, is_read,
    categories, props {tag: text}, prop_types {tag: type}."""
    out: dict = {}
    for child in msg:
        name = etree.QName(child).localname
        if name == "MimeContent":
            out["mime"] = base64.b64decode(child.text or "")
        elif name == "IsRead":
            out["is_read"] = (child.text or "").strip() in ("true", "1")  # xs:boolean
        elif name == "Categories":
            out["categories"] = [s.text or "" for s in child]
        elif name == "ExtendedProperty":
            tag, ptype = ext_tag(child.find(q(T, "ExtendedFieldURI")))
            value = child.find(q(T, "Value"))
            out.setdefault("props", {})[tag] = value.text if value is not None else ""
            out.setdefault("prop_types", {})[tag] = ptype
    return out


def wants_mime(shape) -> bool:
    """Whether an ItemShape asks for ``item:MimeContent`` (it is only sent when asked for)."""
    if shape is None:
        return False
    for uri in shape.iter(q(T, "FieldURI")):
        if uri.get("FieldURI") == "item:MimeContent":
            return True
    return False
