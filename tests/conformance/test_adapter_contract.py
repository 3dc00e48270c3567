"""The adapter contract (``mailrepl.shared.adapters.base``), asserted against every adapter alike.

Each test gets a fresh server through ``contract_env`` (see conftest). Where the contract lets
servers differ (server-side push, where a refusal's index is known, line-ending
normalisation), the test asserts the allowed outcomes and nothing looser.
"""
from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from mailrepl.shared.adapters.base import AppendItem, FolderDelta
from mailrepl.shared.errors import (
    AuthenticationFailed,
    CursorInvalid,
    FolderNotFound,
    MailboxNotFound,
    MessageRejected,
    ServerUnavailable,
)
from mailrepl.shared.model import Cursor
from tests.conformance.conftest import limitation

DATE = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))


def message(i: int, extra: bytes = b"") -> bytes:
    return (
        f"From: sender@example.org\r\nTo: alice@example.org\r\nSubject: contract {i}\r\n"
        f"Message-ID: <{i}@contract.example.org>\r\n\r\nbody {i}\r\n"
    ).encode() + extra


def big_message(size: int) -> bytes:
    line = b"%07d " + b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    return b"Subject: big\r\n\r\n" + b"".join(line % i for i in range(size // len(line % 0)))


def item(body: bytes, *flags: str) -> AppendItem:
    return AppendItem(body, frozenset(flags), DATE)


# --- listing --------------------------------------------------------------------------------


def test_list_folders_puts_inbox_first_then_sorts_by_name(contract_env):
    session = contract_env.open_session()
    for name in ("zeta", "Alpha", "beta/gamma", "Entwürfe"):
        session.create_folder(name)
    folders = session.list_folders()
    names = [f.name for f in folders]
    assert names[0] == "INBOX"
    assert names[1:] == sorted(names[1:])
    assert {"zeta", "Alpha", "beta/gamma", "Entwürfe"} <= set(names)
    assert all(f.uidvalidity > 0 and f.uidnext >= 1 for f in folders)
    if session.features.folder_id:
        assert len({f.fid for f in folders}) == len(folders) and all(f.fid for f in folders)
    assert session.folder_info("beta/gamma") == next(f for f in folders if f.name == "beta/gamma")


# --- append and fetch -------------------------------------------------------------------------


def test_append_then_fetch_returns_the_exact_bytes_flags_and_date(contract_env):
    session = contract_env.open_session()
    bodies = [
        message(1),
        b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGr\xc3\xbc\xc3\x9fe \xe2\x80\x94 \xe2\x82\xac\r\n",
        b"Subject: nul\r\n\r\nbefore\x00after\r\nreal 0x80 \x80 and NUL \x00\r\n",
        b"Subject: bare cr\r\n\r\none\rstill the same line\r\n",
        big_message(5 * 1024 * 1024),
    ]
    flag_sets = [("\\Seen", "$Label1"), ("\\Flagged",), (), ("\\Answered", "\\Draft", "$Work"), ("\\Seen",)]
    items = [item(b, *f) for b, f in zip(bodies, flag_sets)]
    items[0] = AppendItem(items[0].body, items[0].flags | {"\\Recent"}, DATE)  # never stored

    result = session.append("Exact", items)

    assert len(result.uids) == len(items) and list(result.uids) == sorted(set(result.uids))
    info = session.folder_info("Exact")
    assert info.uidvalidity == result.uidvalidity and info.uidnext > max(result.uids) and info.messages == 5
    fetched = list(session.fetch("Exact", result.uids))
    assert [m.uid for m in fetched] == list(result.uids)
    for body, flags, msg in zip(bodies, flag_sets, fetched):
        assert hashlib.sha256(msg.body).hexdigest() == hashlib.sha256(body).hexdigest(), body[:20]
        assert msg.flags == frozenset(flags)
        assert msg.internaldate == DATE and msg.internaldate.tzinfo is not None
        assert (msg.guid is not None) is session.features.message_guid
    if session.features.message_guid:
        assert len({m.guid for m in fetched}) == len(fetched)


def test_bare_line_feeds_survive_or_become_crlf_and_then_stay_stable(contract_env):
    # IMAP servers may store bare LF as CRLF (Dovecot does); what comes back must append and
    # come back unchanged, so replicas converge on the same bytes.
    limitation(contract_env, "imap-cyrus", "Cyrus refuses a message with bare LF (NO Message contains bare "
               "newlines); replay reports it as refused")
    session = contract_env.open_session()
    body = b"Subject: unix\n\nline one\nline two\n"
    first = list(session.fetch("LF", session.append("LF", [item(body)]).uids))[0].body
    assert first in (body, body.replace(b"\n", b"\r\n"))
    second = list(session.fetch("LF", session.append("LF", [item(first)]).uids))[0].body
    assert second == first


def test_append_creates_a_missing_folder(contract_env):
    session = contract_env.open_session()
    result = session.append("New/Deeper", [item(message(1))])
    info = session.folder_info("New/Deeper")
    assert info is not None and info.messages == 1 and info.uidvalidity == result.uidvalidity


def test_refused_messages_leave_the_folder_unchanged(contract_env):
    session = contract_env.open_session()
    refused = contract_env.refused_body()
    session.create_folder("Refusals")
    with pytest.raises(MessageRejected) as single:
        session.append("Refusals", [item(refused)])
    assert single.value.index in (0, None)
    batch = [item(message(1)), item(refused), item(message(2))]
    with pytest.raises(MessageRejected) as whole:
        session.append("Refusals", batch)
    assert whole.value.index in (1, None)
    assert session.folder_info("Refusals").messages == 0  # all or none
    assert len(session.append("Refusals", [batch[0], batch[2]]).uids) == 2  # the session goes on


def test_fetch_streams_in_uid_order_skips_missing_and_may_stop_early(contract_env):
    session = contract_env.open_session()
    uids = list(session.append("Many", [item(message(i)) for i in range(450)]).uids)
    asked = list(reversed(uids)) + [max(uids) + 1000]

    stream = session.fetch("Many", asked)
    head = [next(stream) for _ in range(10)]
    stream.close()

    assert [m.uid for m in head] == uids[:10]
    assert head[3].body == message(3)
    assert [m.uid for m in session.fetch("Many", asked)] == uids
    assert session.folder_info("Many").messages == 450


def test_fetch_and_deltas_never_set_seen(contract_env):
    session = contract_env.open_session()
    uids = session.append("Unread", [item(message(1))]).uids
    list(session.fetch("Unread", uids))
    session.changes_since("Unread", None)
    other = contract_env.open_session()
    assert [m.flags for m in other.changes_since("Unread", None).new] == [frozenset()]


# --- deltas -------------------------------------------------------------------------------------


def test_changes_since_reports_everything_then_what_changed(contract_env):
    reader, writer = contract_env.open_session(), contract_env.open_session()
    bodies = [message(i) for i in range(4)]
    added = reader.append("Delta", [item(bodies[0], "\\Seen", "$Label1")] + [item(b) for b in bodies[1:]])
    u = added.uids

    first = reader.changes_since("Delta", None)

    assert [m.uid for m in first.new] == list(u) and not first.vanished and not first.changed
    assert first.cursor.uidvalidity == added.uidvalidity and first.cursor.uidnext == u[-1] + 1
    head = first.new[0]
    assert head.flags == frozenset({"\\Seen", "$Label1"}) and head.size == len(bodies[0])
    assert head.internaldate == DATE and head.internaldate.tzinfo is not None and head.modseq > 0
    assert (head.guid is not None) is reader.features.message_guid
    assert reader.changes_since("Delta", first.cursor) == FolderDelta(first.cursor)

    writer.store_flags("Delta", [u[1]], frozenset({"\\Flagged", "$Done"}))
    writer.expunge("Delta", [u[2]])
    more = writer.append("Delta", [item(message(9))])
    delta = reader.changes_since("Delta", first.cursor)

    assert delta.vanished == (u[2],)
    assert [(m.uid, m.flags) for m in delta.changed] == [(u[1], frozenset({"\\Flagged", "$Done"}))]
    assert [m.uid for m in delta.new] == list(more.uids) and delta.new[0].size == len(message(9))
    assert delta.cursor.uidvalidity == first.cursor.uidvalidity
    assert delta.cursor.highestmodseq > first.cursor.highestmodseq
    assert delta.cursor.uidnext == more.uids[-1] + 1
    assert reader.changes_since("Delta", delta.cursor) == FolderDelta(delta.cursor)
    if reader.features.message_guid:  # a GUID is the message's, whatever session reads it
        assert {m.uid: m.guid for m in first.new}[u[0]] == writer.changes_since("Delta", None).new[0].guid


def test_a_recreated_folder_invalidates_the_cursor(contract_env):
    reader, writer = contract_env.open_session(), contract_env.open_session()
    reader.append("Again", [item(message(1))])
    before = reader.changes_since("Again", None)
    writer.delete_folder("Again")
    writer.append("Again", [item(message(2))])
    with pytest.raises(CursorInvalid):
        reader.changes_since("Again", before.cursor)
    fresh = reader.changes_since("Again", None)
    assert fresh.cursor.uidvalidity != before.cursor.uidvalidity and len(fresh.new) == 1


def test_missing_folders(contract_env):
    session = contract_env.open_session()
    with pytest.raises(FolderNotFound):
        session.changes_since("Missing", None)
    with pytest.raises(FolderNotFound):
        session.changes_since("Missing", Cursor(1, 1, 1))
    with pytest.raises(FolderNotFound):
        list(session.fetch("Missing", [1]))
    assert session.folder_info("Missing") is None
    # the idempotent operations never raise it
    session.store_flags("Missing", [1], frozenset({"\\Seen"}))
    session.expunge("Missing", [1])
    assert session.move("Missing", [1], "Elsewhere") == {}
    session.rename_folder("Missing", "Other")
    session.delete_folder("Missing")
    assert "Other" not in {f.name for f in session.list_folders()}


# --- flags, expunge, move ---------------------------------------------------------------------


def test_store_flags_replaces_the_whole_set(contract_env):
    session = contract_env.open_session()
    u = session.append("Flags", [item(message(i), "\\Seen", "$Old") for i in range(3)]).uids
    for _ in range(2):  # idempotent
        session.store_flags("Flags", u[:2], frozenset({"\\Flagged", "$New"}))
    session.store_flags("Flags", [u[2], max(u) + 100], frozenset())
    got = {m.uid: m.flags for m in session.fetch("Flags", u)}
    assert got == {u[0]: {"\\Flagged", "$New"}, u[1]: {"\\Flagged", "$New"}, u[2]: frozenset()}


def test_expunge_removes_exactly_the_given_messages(contract_env):
    session = contract_env.open_session()
    u = session.append("Trashy", [item(message(i)) for i in range(4)]).uids
    session.store_flags("Trashy", [u[3]], frozenset({"\\Deleted"}))  # someone's pending delete stays
    session.expunge("Trashy", [u[0], u[1], max(u) + 100])
    session.expunge("Trashy", [u[0], u[1]])
    session.expunge("Nowhere", [1])
    assert [m.uid for m in session.changes_since("Trashy", None).new] == [u[2], u[3]]


def test_move_returns_the_uid_mapping_and_keeps_bytes_and_flags(contract_env):
    mover, reader = contract_env.open_session(), contract_env.open_session()
    bodies = [message(i) for i in range(3)]
    u = mover.append("From", [item(bodies[0], "$Keep"), item(bodies[1]), item(bodies[2], "\\Seen")]).uids

    mapping = mover.move("From", [u[0], u[2], max(u) + 100], "To/Nested")

    assert set(mapping) == {u[0], u[2]} and len(set(mapping.values())) == 2
    assert [m.uid for m in mover.changes_since("From", None).new] == [u[1]]
    moved = {m.uid: m for m in reader.fetch("To/Nested", list(mapping.values()))}
    assert moved[mapping[u[0]]].body == bodies[0] and moved[mapping[u[0]]].flags == {"$Keep"}
    assert moved[mapping[u[2]]].body == bodies[2] and moved[mapping[u[2]]].flags == {"\\Seen"}
    assert mover.move("From", [u[0]], "To/Nested") == {}


# --- folders ------------------------------------------------------------------------------------


def test_folder_operations_are_idempotent(contract_env):
    session = contract_env.open_session()

    def names() -> set[str]:
        return {f.name for f in session.list_folders()}

    odd = "Tom & Jerry's (2024) ~ * 50€"
    for name in ("Entwürfe/Ünter", odd, "Projekte", "Projekte/Älter"):
        session.create_folder(name)
        session.create_folder(name)
    session.create_folder("Gesendet", frozenset({"\\Sent"}))
    session.append("Projekte/Älter", [item(message(1))])
    assert {"Entwürfe/Ünter", odd, "Projekte", "Projekte/Älter", "Gesendet"} <= names()
    assert session.folder_info("Gesendet").special_use <= {"\\Sent"}
    before = session.folder_info("Projekte/Älter")

    session.rename_folder("Projekte", "Archiv 2024")
    session.rename_folder("Projekte", "Archiv 2024")

    after = session.folder_info("Archiv 2024/Älter")
    assert "Projekte" not in names() and "Projekte/Älter" not in names() and "Archiv 2024" in names()
    assert (after.uidvalidity, after.fid, after.messages) == (before.uidvalidity, before.fid, 1)

    for name in ("Archiv 2024/Älter", "Archiv 2024", "Entwürfe/Ünter", "Entwürfe", odd):
        session.delete_folder(name)
        session.delete_folder(name)
    assert not names() & {"Archiv 2024", "Archiv 2024/Älter", "Entwürfe/Ünter", odd}


def test_delete_folder_deletes_that_folder_alone(contract_env):
    """A folder deleted on the primary while its subfolders stay (RFC 3501 allows it) is replayed
    as a delete of that folder: its subfolders, their messages and UIDVALIDITY stay. Cyrus
    cannot hold a subfolder without its parent (it refuses the delete, HASCHILDREN): there the
    folder stays, emptied."""
    limitation(contract_env, "ews", "Exchange's DeleteFolder deletes the folder with its subfolders")
    session = contract_env.open_session()
    session.append("Parent", [item(message(1))])
    session.append("Parent/Child", [item(message(2)), item(message(3), "\\Seen")])
    session.append("Parent/Child/Deep", [item(message(4))])
    session.append("Parent/Other", [item(message(5))])
    before = {n: session.folder_info(n) for n in ("Parent/Child", "Parent/Child/Deep", "Parent/Other")}
    for _ in range(2):  # idempotent
        session.delete_folder("Parent")
    listed = {f.name: f for f in session.list_folders()}
    if contract_env.name.startswith("imap-cyrus"):
        assert listed["Parent"].messages == 0
    else:
        assert "Parent" not in listed
    for name, info in before.items():
        assert (listed[name].uidvalidity, listed[name].messages) == (info.uidvalidity, info.messages), name
    assert [m.body for m in session.fetch("Parent/Child/Deep", [1, 2, 3])] == [message(4)]
    session.delete_folder("Parent/Child/Deep")
    session.delete_folder("Parent/Child")
    left = {f.name for f in session.list_folders() if f.name.startswith("Parent")}
    assert left - {"Parent"} == {"Parent/Other"}


def test_folder_names_with_quotes_backslashes_and_wildcards(contract_env):
    session = contract_env.open_session()
    odd = 'Say "hi" & \\ more 100%^'
    session.create_folder(odd)
    session.append(odd, [item(message(1))])
    assert session.folder_info(odd).messages == 1
    session.delete_folder(odd)
    assert odd not in {f.name for f in session.list_folders()}


# --- push -----------------------------------------------------------------------------------------


def test_wait_for_change_wakes_on_another_sessions_append(contract_env):
    watcher, writer = contract_env.open_session(), contract_env.open_session()
    push = watcher.features.notify or watcher.features.idle

    started = time.monotonic()
    assert watcher.wait_for_change(0.5) is False
    waited = time.monotonic() - started
    assert waited < 5 and (waited >= 0.45 or not push)

    timer = threading.Timer(0.5, writer.append, args=("INBOX", [item(message(1))]))
    timer.start()
    started = time.monotonic()
    woke = watcher.wait_for_change(20.0)
    waited = time.monotonic() - started
    timer.join()

    assert woke is push and (waited < 15 or not push)
    assert watcher.folder_info("INBOX").messages == 1  # still usable afterwards


# --- accounts and reachability -------------------------------------------------------------


# (Servers slow down every login from an address after a failed one, Dovecot by seconds, so
# the tests with refused logins log in successfully as little as possible.)


def test_check_and_list_mailboxes(contract_env):
    contract_env.adapter.check()
    listed = contract_env.adapter.list_mailboxes()
    assert listed is None or contract_env.address in listed


def test_unknown_mailbox(contract_env):
    with pytest.raises(MailboxNotFound) as missing:
        contract_env.adapter.open(contract_env.unknown_address)
    assert not missing.value.retryable


def test_wrong_service_password(contract_env):
    wrong = contract_env.adapter_with_password("not-the-password")
    with pytest.raises(AuthenticationFailed) as refused:
        wrong.open(contract_env.address)
    assert not refused.value.retryable
    with pytest.raises(AuthenticationFailed):
        wrong.check()


def test_unreachable_server(contract_env):
    session = contract_env.open_session()
    with contract_env.server_down():
        with pytest.raises(ServerUnavailable) as down:
            contract_env.adapter.open(contract_env.address)
        assert down.value.retryable
        with pytest.raises(ServerUnavailable):
            session.list_folders()
        with pytest.raises(ServerUnavailable):
            contract_env.adapter.check()
        session.close()  # never raises
    assert contract_env.open_session().folder_info("INBOX") is not None
