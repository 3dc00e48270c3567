"""A folder reset on a real Dovecot primary: the folder deleted and created again, the same
messages appended back, some with new internal dates and flags. The standby ends equal in
everything the comparison looks at (bytes, flags and keywords, internal dates); a copy the
standby already had is kept only where its internal date is the same (no server lets an internal
date change), the others are written again and the old copies removed."""
from __future__ import annotations

import pytest

from tests.support.gateways import GatewayPair
from tests.support.mailcompare import assert_same_mailbox

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

USERS = ["alice", "bob"]


def message(i: int) -> bytes:
    return (f"From: s{i}@example.org\r\nTo: alice@example.org\r\nSubject: reset {i}\r\n"
            f"Message-ID: <reset.{i}@example.org>\r\nDate: Tue, 3 Sep 2024 10:{i:02d}:00 +0200\r\n\r\n"
            f"body {i}\r\n").encode()


def test_folder_recreated_with_new_dates_ends_equal_including_internal_dates(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", USERS)
    standby = dovecot_factory("standby", USERS)
    pair = GatewayPair(tmp_path, primary, standby, users=USERS, source_state=f"sqlite:///{tmp_path}/s.sqlite",
                       recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    pair.start()
    try:
        M = primary.imap("alice")
        M.create("Projects")
        for i in range(6):
            M.append("Projects", "(\\Seen)" if i % 2 else "()", '"01-Oct-2024 09:00:00 +0000"', message(i))
        pair.protect("alice")
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")

        # the folder deleted and created again; the same messages appended back: three with their
        # old internal date, three with a new one, and some flags changed
        M.select("Projects")
        typ, data = M.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        bodies = [part[1] for part in data if isinstance(part, tuple)]
        assert len(bodies) == 6
        M.close()
        assert M.delete("Projects")[0] == "OK"
        assert M.create("Projects")[0] == "OK"
        for i, body in enumerate(bodies):
            date = '"01-Oct-2024 09:00:00 +0000"' if i < 3 else '"02-Dec-2026 11:30:00 +0000"'
            flags = "(\\Flagged)" if i in (1, 4) else "()"
            assert M.append("Projects", flags, date, body)[0] == "OK"
        M.logout()
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")  # per folder: bytes, flags, internal dates
        S = standby.imap("alice")
        S.select("Projects", readonly=True)
        typ, data = S.uid("SEARCH", None, "ALL")
        assert typ == "OK" and len(data[0].split()) == 6, "no duplicates left behind"
        S.logout()
    finally:
        pair.stop()
