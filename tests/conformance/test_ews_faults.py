"""EWS adapter under faults, through exchangelib's real HTTP stack against the protocol-shape
responder: throttling with back-off, server errors and dropped connections, expired sync
states, items gone between sync and fetch, refused credentials, paged sync checkpoints."""
from __future__ import annotations

import time
from datetime import datetime, timezone

import httpx
import pytest

from mailrepl.shared.adapters.base import AppendItem
from mailrepl.shared.adapters.ews import EwsAdapter, EwsEndpoint
from mailrepl.shared.errors import AuthenticationFailed, CursorInvalid, MailboxNotFound, ProtocolError, ServerUnavailable
from tests.support import ews_soap
from tests.support.ews_responder import SERVICE_PASSWORD, SERVICE_USER, EwsResponder

ALICE = "alice@example.org"
DATE = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def msg(i: int) -> bytes:
    return f"From: a@example.org\r\nSubject: fault {i}\r\nMessage-ID: <{i}@faults>\r\n\r\nbody {i}\r\n".encode()


@pytest.fixture
def ews():
    with EwsResponder([ALICE, "bob@example.org"]) as responder:
        yield responder


def adapter(ews: EwsResponder, **kw) -> EwsAdapter:
    opts = dict(timeout=10.0, max_wait=5.0)
    opts.update(kw)
    password = opts.pop("password", SERVICE_PASSWORD)
    return EwsAdapter("ews", EwsEndpoint(ews.endpoint, SERVICE_USER, password, **opts))


def times_of(ews: EwsResponder, op: str) -> list[float]:
    return [t for name, t in ews.log if name == op]


# --- throttling -------------------------------------------------------------------------------


def test_server_busy_is_retried_after_the_servers_back_off(ews):
    session = adapter(ews).open(ALICE)
    ews.log.clear()
    ews.faults.busy(2, back_off_ms=400)
    names = [f.name for f in session.list_folders()]
    assert names[0] == "INBOX"
    finds = times_of(ews, "SyncFolderHierarchy")
    assert len(finds) == 3, ews.operations()  # two busy answers, then the real one
    assert finds[1] - finds[0] >= 0.39 and finds[2] - finds[1] >= 0.39


def test_server_busy_beyond_the_retry_budget_is_server_unavailable_with_its_back_off(ews):
    session = adapter(ews, max_wait=1.0).open(ALICE)
    ews.faults.busy(100, back_off_ms=5000)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as busy:
        session.list_folders()
    assert time.monotonic() - started < 1.0, "a back-off past the budget is not slept"
    assert busy.value.retryable and busy.value.back_off == 5.0
    assert "ErrorServerBusy" in str(busy.value)


def test_busy_create_item_is_retried_because_the_server_did_not_run_it(ews):
    session = adapter(ews).open(ALICE)
    session.create_folder("Busy")
    ews.faults.busy(1, back_off_ms=50)
    result = session.append("Busy", [AppendItem(msg(1), frozenset(), DATE)])
    assert len(result.uids) == 1 and session.folder_info("Busy").messages == 1


# --- server errors and connections ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["http_500", "drop"])
def test_http_500_and_dropped_connections_are_retried_for_reads(ews, fault):
    session = adapter(ews).open(ALICE)
    uids = session.append("Reads", [AppendItem(msg(i), frozenset(), DATE) for i in range(3)]).uids
    ews.log.clear()
    getattr(ews.faults, fault)(2)
    assert [m.body for m in session.fetch("Reads", uids)] == [msg(i) for i in range(3)]
    assert len(ews.log) >= 3


@pytest.mark.parametrize("fault", ["http_500", "drop"])
def test_an_ambiguous_failure_of_create_item_is_not_repeated(ews, fault):
    session = adapter(ews).open(ALICE)
    session.create_folder("Once")
    getattr(ews.faults, fault)(1)
    with pytest.raises(ServerUnavailable) as lost:
        session.append("Once", [AppendItem(msg(1), frozenset(), DATE)])
    assert lost.value.retryable
    assert session.folder_info("Once").messages == 0  # dropped before it ran, and not sent twice
    assert ews.operations().count("CreateItem") == 1


# --- accounts -----------------------------------------------------------------------------------


def test_wrong_credentials_fail_at_once_with_authentication_failed(ews):
    wrong = adapter(ews, password="wrong", max_wait=30.0)
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed) as refused:
        wrong.open(ALICE)
    assert time.monotonic() - started < 5, "a 401 is not throttling: no retry loop"
    assert not refused.value.retryable and "Unauthorized" in str(refused.value)
    assert ews.operations().count("401") == 1


def test_impersonation_without_the_role_is_authentication_failed(ews):
    ews.impersonation_allowed = False
    with pytest.raises(AuthenticationFailed) as denied:
        adapter(ews).open(ALICE)
    assert "ErrorImpersonateUserDenied" in str(denied.value)


def test_unknown_mailbox_and_configured_users(ews):
    with pytest.raises(MailboxNotFound):
        adapter(ews).open("carol@example.org")
    limited = EwsAdapter("ews", EwsEndpoint(ews.endpoint, SERVICE_USER, SERVICE_PASSWORD), users=["bob@example.org"])
    with pytest.raises(MailboxNotFound):
        limited.open(ALICE)
    assert limited.list_mailboxes() == ["bob@example.org"]


def test_delegate_access_names_the_mailbox_in_each_request(ews):
    session = adapter(ews, access="delegate").open(ALICE)
    uids = session.append("Delegated", [AppendItem(msg(1), frozenset({"\\Seen"}), DATE)]).uids
    assert [m.uid for m in session.changes_since("Delegated", None).new] == list(uids)
    assert ews.store.mailbox(ALICE).path("Delegated").items  # stored in alice's mailbox


# --- sync states --------------------------------------------------------------------------------


def test_an_expired_sync_state_is_cursor_invalid_and_a_fresh_sync_sees_everything_once(ews):
    session = adapter(ews).open(ALICE)
    session.append("Sync", [AppendItem(msg(i), frozenset(), DATE) for i in range(3)])
    first = session.changes_since("Sync", None)
    ews.store.forget_sync_states()
    with pytest.raises(CursorInvalid):
        session.changes_since("Sync", first.cursor)
    again = session.changes_since("Sync", None)
    assert [m.uid for m in again.new] == [m.uid for m in first.new]
    assert again.cursor.uidvalidity == first.cursor.uidvalidity


def test_error_responses_carry_an_empty_sync_state(ews):
    """Protocol shape: ErrorInvalidSyncStateData comes with ``<m:SyncState/>`` (exchangelib
    reads the element before it looks at the response code)."""
    box = ews.store.mailbox(ALICE)
    body = f"""<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
  xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
 <s:Header><t:RequestServerVersion Version="Exchange2016"/>
  <t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{ALICE}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>
 </s:Header>
 <s:Body><m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>
  <m:SyncFolderId><t:FolderId Id="{box.distinguished('inbox').id}"/></m:SyncFolderId>
  <m:SyncState>bm90LWEtc3RhdGU=</m:SyncState><m:MaxChangesReturned>10</m:MaxChangesReturned>
 </m:SyncFolderItems></s:Body></s:Envelope>"""
    r = httpx.post(ews.endpoint, content=body.encode(), auth=(SERVICE_USER, SERVICE_PASSWORD),
                   headers={"Content-Type": "text/xml; charset=utf-8"})
    assert r.status_code == 200
    text = r.text
    assert 'ResponseClass="Error"' in text and "<m:ResponseCode>ErrorInvalidSyncStateData</m:ResponseCode>" in text
    assert "<m:SyncState/>" in text and "<t:ServerVersionInfo" in text


def test_sync_pages_are_checkpointed_and_a_new_session_resumes_from_the_cursor(ews):
    writer = adapter(ews).open(ALICE)
    reader = adapter(ews, page_size=3, max_changes=5).open(ALICE)
    writer.create_folder("Paged")
    start = reader.changes_since("Paged", None)
    uids = list(writer.append("Paged", [AppendItem(msg(i), frozenset(), DATE) for i in range(12)]).uids)
    ews.log.clear()
    first = reader.changes_since("Paged", start.cursor)
    assert [m.uid for m in first.new] == uids[:6]  # two pages of three, then stop (>= 5 changes)
    assert ews.operations().count("SyncFolderItems") == 2
    resumed = adapter(ews, page_size=3, max_changes=5).open(ALICE)  # e.g. after a restart
    second = resumed.changes_since("Paged", first.cursor)
    assert [m.uid for m in second.new] == uids[6:]
    assert second.cursor.token != first.cursor.token and second.cursor.uidnext == uids[-1] + 1
    assert resumed.changes_since("Paged", second.cursor).new == ()


def test_a_full_sync_reads_every_page_whatever_max_changes_says(ews):
    session = adapter(ews, page_size=3, max_changes=5).open(ALICE)
    uids = list(session.append("Full", [AppendItem(msg(i), frozenset(), DATE) for i in range(12)]).uids)
    ews.log.clear()
    assert [m.uid for m in session.changes_since("Full", None).new] == uids
    assert ews.operations().count("SyncFolderItems") == 4


def test_paging_until_includes_last_item_in_range(ews):
    session = adapter(ews, page_size=2).open(ALICE)
    uids = list(session.append("Pages", [AppendItem(msg(i), frozenset(), DATE) for i in range(5)]).uids)
    ews.log.clear()
    delta = session.changes_since("Pages", None)
    assert [m.uid for m in delta.new] == uids and ews.operations().count("SyncFolderItems") == 3


def test_an_item_gone_between_sync_and_fetch_is_skipped(ews):
    session = adapter(ews).open(ALICE)
    uids = list(session.append("Gone", [AppendItem(msg(i), frozenset(), DATE) for i in range(3)]).uids)
    delta = session.changes_since("Gone", None)
    box = ews.store.mailbox(ALICE)
    victim = next(i for i in box.path("Gone").items.values() if i.article == uids[1])
    ews.faults.before("GetItem", lambda: box.delete_item(victim.id))
    fetched = list(session.fetch("Gone", [m.uid for m in delta.new]))
    assert [m.uid for m in fetched] == [uids[0], uids[2]]
    later = session.changes_since("Gone", delta.cursor)
    assert uids[1] in later.vanished and not later.new


def test_read_and_flag_changes_made_in_the_mailbox_are_reported(ews):
    session = adapter(ews).open(ALICE)
    box = ews.store.mailbox(ALICE)
    a = box.deliver("INBOX", msg(1), categories=["Red category"], received=DATE)
    b = box.deliver("INBOX", msg(2), is_read=True)
    first = session.changes_since("INBOX", None)
    assert {m.uid: m.flags for m in first.new} == {a.article: {"Red_category"}, b.article: {"\\Seen"}}
    assert first.new[0].internaldate == DATE
    box.set_read(a.id, True)  # ReadFlagChange
    box.set_flagged(b.id, True)  # Update
    delta = session.changes_since("INBOX", first.cursor)
    assert {m.uid: m.flags for m in delta.changed} == {
        a.article: {"\\Seen", "Red_category"}, b.article: {"\\Seen", "\\Flagged"}}


def test_meeting_requests_and_posts_in_mail_folders_are_items_too(ews):
    session = adapter(ews).open(ALICE)
    box = ews.store.mailbox(ALICE)
    meeting = box.deliver("INBOX", msg(1), tag="MeetingRequest", is_read=True, received=DATE)
    post = box.deliver("INBOX", msg(2), tag="PostItem", categories=["Team"], received=DATE)
    delta = session.changes_since("INBOX", None)
    assert {m.uid: m.flags for m in delta.new} == {meeting.article: {"\\Seen"}, post.article: {"Team"}}
    assert [m.body for m in session.fetch("INBOX", [meeting.article, post.article])] == [msg(1), msg(2)]


# --- streaming notifications --------------------------------------------------------------------


def test_streaming_notifications_wake_and_survive_a_closed_stream(ews):
    ews.stream_seconds = 1.0  # the server closes each GetStreamingEvents after a second
    watcher = adapter(ews).open(ALICE)
    assert watcher.features.notify
    assert watcher.wait_for_change(0.3) is False  # subscribes; nothing happened yet
    box = ews.store.mailbox(ALICE)
    time.sleep(2.5)  # at least one stream closed and was opened again
    box.deliver("INBOX", msg(1))
    started = time.monotonic()
    assert watcher.wait_for_change(10.0) is True and time.monotonic() - started < 3
    assert watcher.wait_for_change(0.3) is False  # the wake-up was consumed
    box.deliver("Elsewhere/deep", msg(2))  # any folder
    assert watcher.wait_for_change(10.0) is True
    ops = ews.operations()
    assert ops.count("Subscribe") == 1 and ops.count("GetStreamingEvents") >= 2
    watcher.close()
    assert not ews.store.subscriptions, "close() unsubscribes"


def test_an_item_without_an_article_number_stops_capture_loudly(ews, monkeypatch):
    session = adapter(ews).open(ALICE)
    box = ews.store.mailbox(ALICE)
    box.deliver("INBOX", msg(1))
    monkeypatch.setattr(ews_soap, "PR_ARTICLE_NUMBER", 0x7FFF)  # the responder stops sending 0x0E23
    with pytest.raises(ProtocolError) as err:
        session.changes_since("INBOX", None)
    assert "PR_INTERNET_ARTICLE_NUMBER" in str(err.value)
