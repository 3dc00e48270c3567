"""A folder deleted on the primary while its subfolders stay (RFC 3501 allows it: Dovecot keeps
the name as a \\Noselect parent; Cyrus lets neither users nor admins do it): the standby must
lose that folder and its messages and keep the subfolders with theirs, and verify find the
copies equal, end to end on two real Dovecot instances and both gateways.
"""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from mailrepl.shared.adapters.base import AppendItem

from tests.e2e.test_verify import run_verify
from tests.support.canonical_compare import adapter_for, canonical_snapshot, differences
from tests.support.gateways import GatewayPair
from tests.support.net import eventually

pytestmark = [pytest.mark.dovecot]

DATE = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
USERS = ["alice"]


def message(i: int, what: str) -> bytes:
    return (f"From: a@example.org\r\nTo: b@example.org\r\nSubject: {what} {i}\r\n"
            f"Message-ID: <{what}{i}@parent.example.org>\r\nDate: Mon, 6 May 2024 07:08:09 +0000\r\n\r\n"
            f"body {what} {i}\r\n").encode()


def test_a_parent_deleted_on_the_primary_leaves_its_subfolders_on_the_standby(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", USERS)
    standby = dovecot_factory("standby", USERS)
    session = adapter_for(primary).open("alice")
    try:
        session.append("Projects", [AppendItem(message(i, "parent"), frozenset(), DATE) for i in range(2)])
        session.append("Projects/Keep", [AppendItem(message(i, "child"), frozenset({"\\Seen"}), DATE) for i in range(3)])
        session.append("Projects/Keep/Deep", [AppendItem(message(0, "deep"), frozenset(), DATE)])
        session.append("Projects/Also", [AppendItem(message(0, "also"), frozenset(), DATE)])
    finally:
        session.close()
    pair = GatewayPair(tmp_path, primary, standby, users=USERS, poll_interval=0.3,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    pair.start()
    try:
        pair.protect("alice")
        pair.wait_synced(USERS, timeout=120)
        assert sum(canonical_snapshot(standby, "alice")["Projects"].values()) == 2
        M = primary.imap("alice")  # the user deletes the parent only; its subfolders stay
        try:
            typ, data = M.delete('"Projects"')
            assert typ == "OK", data
        finally:
            M.logout()
        want = canonical_snapshot(primary, "alice")
        assert "Projects" not in want and {"Projects/Keep", "Projects/Keep/Deep", "Projects/Also"} <= set(want)

        def same() -> dict | None:
            pair.wait_synced(USERS, timeout=120)
            got = canonical_snapshot(standby, "alice")
            return None if differences(want, got) or differences(got, want, ignore_empty_extra=False) else got

        got = eventually(same, 60, "the standby drops the parent and keeps its subfolders")
        assert sum(got["Projects/Keep"].values()) == 3 and sum(got["Projects/Keep/Deep"].values()) == 1
        assert "Projects" not in got
        assert pair.status()["alice"]["rejected"] == 0
        # verify agrees: the primary's \\Noselect parent name is no folder on either side
        report = run_verify(pair, addresses=USERS)
        assert report["equal"] is True, report
    finally:
        pair.stop()
