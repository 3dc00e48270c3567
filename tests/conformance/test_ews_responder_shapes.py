"""Protocol-shape checks of the EWS responder itself: raw SOAP in, the documented XML shapes out
(element names, namespaces, attributes, order where the reference fixes it). They keep the
responder honest independently of exchangelib's tolerant parser."""
from __future__ import annotations

import base64

import httpx
import pytest
from lxml import etree

from tests.support.ews_responder import SERVICE_PASSWORD, SERVICE_USER, EwsResponder

ALICE = "alice@example.org"
NS = {"s": "http://schemas.xmlsoap.org/soap/envelope/",
      "m": "http://schemas.microsoft.com/exchange/services/2006/messages",
      "t": "http://schemas.microsoft.com/exchange/services/2006/types",
      "e": "http://schemas.microsoft.com/exchange/services/2006/errors"}


@pytest.fixture
def ews():
    with EwsResponder([ALICE]) as responder:
        yield responder


def post(ews: EwsResponder, body: str, *, impersonate: str | None = ALICE, auth=(SERVICE_USER, SERVICE_PASSWORD)):
    header = '<t:RequestServerVersion Version="Exchange2016"/>'
    if impersonate:
        header += (f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{impersonate}"
                   "</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>")
    envelope = (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{NS["s"]}" xmlns:m="{NS["m"]}" '
                f'xmlns:t="{NS["t"]}"><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>')
    r = httpx.post(ews.endpoint, content=envelope.encode(), auth=auth, headers={"Content-Type": "text/xml; charset=utf-8"})
    return r, (etree.fromstring(r.content) if r.content.startswith(b"<?xml") else None)


def test_every_answer_carries_server_version_info(ews):
    r, doc = post(ews, '<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>'
                       '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>')
    assert r.status_code == 200
    info = doc.find("s:Header/t:ServerVersionInfo", NS)
    assert info.get("MajorVersion") == "15" and info.get("Version") == "Exchange2016"
    msg = doc.find("s:Body/m:GetFolderResponse/m:ResponseMessages/m:GetFolderResponseMessage", NS)
    assert msg.get("ResponseClass") == "Success" and msg.findtext("m:ResponseCode", namespaces=NS) == "NoError"
    folder = msg.find("m:Folders/t:Folder", NS)
    assert [etree.QName(c).localname for c in folder][:4] == ["FolderId", "ParentFolderId", "FolderClass", "DisplayName"]
    assert folder.findtext("t:DisplayName", namespaces=NS) == "Inbox"


def test_server_busy_fault_with_back_off(ews):
    ews.faults.busy(1, back_off_ms=1234)
    r, doc = post(ews, '<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>'
                       '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>')
    assert r.status_code == 500
    fault = doc.find("s:Body/s:Fault", NS)
    assert fault.findtext("faultcode").endswith("ErrorServerBusy")
    assert fault.findtext("detail/e:ResponseCode", namespaces=NS) == "ErrorServerBusy"
    value = fault.find("detail/t:MessageXml/t:Value", NS)
    assert value.get("Name") == "BackOffMilliseconds" and value.text == "1234"


def test_wrong_password_is_a_401_with_a_challenge(ews):
    r, _ = post(ews, "<m:GetFolder/>", auth=(SERVICE_USER, "nope"))
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")


def test_unknown_impersonated_mailbox_is_a_fault(ews):
    r, doc = post(ews, '<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>'
                       '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>',
                  impersonate="carol@example.org")
    assert r.status_code == 500
    assert doc.findtext("s:Body/s:Fault/detail/e:ResponseCode", namespaces=NS) == "ErrorNonExistentMailbox"


def test_sync_folder_items_pages_and_get_item_mime(ews):
    box = ews.store.mailbox(ALICE)
    inbox = box.distinguished("inbox")
    mimes = [f"Subject: {i}\r\n\r\n\x00{i}\r\n".encode() for i in range(3)]
    for m in mimes:
        box.deliver("INBOX", m)
    body = ('<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>'
            f'<m:SyncFolderId><t:FolderId Id="{inbox.id}"/></m:SyncFolderId>{{state}}'
            '<m:MaxChangesReturned>2</m:MaxChangesReturned></m:SyncFolderItems>')
    _, first = post(ews, body.format(state=""))
    msg = first.find(".//m:SyncFolderItemsResponseMessage", NS)
    names = [etree.QName(c).localname for c in msg]
    assert names == ["ResponseCode", "SyncState", "IncludesLastItemInRange", "Changes"]
    assert msg.findtext("m:IncludesLastItemInRange", namespaces=NS) == "false"
    creates = msg.findall("m:Changes/t:Create/t:Message", NS)
    assert len(creates) == 2
    _, second = post(ews, body.format(state=f"<m:SyncState>{msg.findtext('m:SyncState', namespaces=NS)}</m:SyncState>"))
    msg2 = second.find(".//m:SyncFolderItemsResponseMessage", NS)
    assert msg2.findtext("m:IncludesLastItemInRange", namespaces=NS) == "true"
    assert len(msg2.findall("m:Changes/t:Create", NS)) == 1

    item_id = creates[0].find("t:ItemId", NS).get("Id")
    _, got = post(ews, '<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>'
                       '<t:FieldURI FieldURI="item:MimeContent"/></t:AdditionalProperties></m:ItemShape>'
                       f'<m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>')
    mime = got.find(".//m:Items/t:Message/t:MimeContent", NS)
    assert mime.get("CharacterSet") == "UTF-8" and base64.b64decode(mime.text) == mimes[0]
    _, gone = post(ews, '<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>'
                        '<m:ItemIds><t:ItemId Id="AAMkAGone"/></m:ItemIds></m:GetItem>')
    err = gone.find(".//m:GetItemResponseMessage", NS)
    assert err.get("ResponseClass") == "Error" and err.findtext("m:ResponseCode", namespaces=NS) == "ErrorItemNotFound"
