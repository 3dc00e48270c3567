"""Opt-in checks of the EWS adapter against a real Exchange server.

They run only when the environment names one; otherwise every test skips:

- ``MAILREPL_EWS_LIVE_ENDPOINT``  e.g. https://mail.example.org/EWS/Exchange.asmx
- ``MAILREPL_EWS_LIVE_USER`` / ``MAILREPL_EWS_LIVE_PASSWORD``  the service account
- ``MAILREPL_EWS_LIVE_MAILBOX``  a test mailbox the account may impersonate (or open as delegate)
- optional ``MAILREPL_EWS_LIVE_AUTH`` (basic | ntlm, default ntlm) and
  ``MAILREPL_EWS_LIVE_ACCESS`` (impersonation | delegate, default impersonation)

Everything happens in a scratch folder ``mailrepl-live-<random>`` that is deleted afterwards.
Exchange regenerates MIME content, so these tests compare headers and flags, not bytes.
"""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone

import pytest

from mailrepl.shared.adapters.base import AppendItem

ENV = "MAILREPL_EWS_LIVE_"
REQUIRED = ("ENDPOINT", "USER", "PASSWORD", "MAILBOX")

pytestmark = pytest.mark.skipif(
    not all(os.environ.get(ENV + k) for k in REQUIRED),
    reason="set " + ", ".join(ENV + k for k in REQUIRED) + " to run the live Exchange checks",
)

DATE = datetime(2024, 2, 3, 4, 5, 6, tzinfo=timezone.utc)


@pytest.fixture
def live():
    from mailrepl.shared.adapters.ews import EwsAdapter, EwsEndpoint

    env = {k: os.environ.get(ENV + k, "") for k in REQUIRED + ("AUTH", "ACCESS")}
    endpoint = EwsEndpoint(env["ENDPOINT"], env["USER"], env["PASSWORD"], auth=env["AUTH"] or "ntlm",
                           access=env["ACCESS"] or "impersonation", max_wait=120.0)
    adapter = EwsAdapter("live", endpoint)
    session = adapter.open(env["MAILBOX"])
    folder = f"mailrepl-live-{uuid.uuid4().hex[:8]}"
    try:
        yield adapter, session, folder
    finally:
        session.delete_folder(folder)
        session.delete_folder(folder + "-moved")
        session.close()


def _body(i: int) -> bytes:
    return (f"From: live@example.org\r\nTo: live@example.org\r\nSubject: mailrepl live {i}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@mailrepl.live>\r\n\r\nlive test {i}\r\n").encode()


def test_live_check_and_listing(live):
    adapter, session, _ = live
    adapter.check()
    names = [f.name for f in session.list_folders()]
    assert names[0] == "INBOX"


def test_live_append_sync_fetch_flags_move_expunge(live):
    _, session, folder = live
    bodies = [_body(1), _body(2)]
    result = session.append(folder, [AppendItem(bodies[0], frozenset({"\\Seen", "$Live"}), DATE),
                                     AppendItem(bodies[1], frozenset(), DATE)])
    first = session.changes_since(folder, None)
    assert [m.uid for m in first.new] == list(result.uids)
    assert first.new[0].flags == {"\\Seen", "$Live"} and "\\Draft" not in first.new[1].flags
    fetched = list(session.fetch(folder, result.uids))
    assert [b"mailrepl live 1" in fetched[0].body, b"mailrepl live 2" in fetched[1].body] == [True, True]

    session.store_flags(folder, [result.uids[1]], frozenset({"\\Flagged"}))
    delta = session.changes_since(folder, first.cursor)
    assert [(m.uid, m.flags) for m in delta.changed] == [(result.uids[1], {"\\Flagged"})]

    moved = session.move(folder, [result.uids[0]], folder + "-moved")
    assert set(moved) == {result.uids[0]}
    session.expunge(folder, [result.uids[1]])
    after = session.changes_since(folder, delta.cursor)
    assert set(after.vanished) >= set(result.uids)
    assert session.folder_info(folder).messages == 0
