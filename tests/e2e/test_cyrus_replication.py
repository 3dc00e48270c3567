"""Replication across server kinds: Dovecot -> Cyrus (Debian's default configuration and the
recommended one) and Cyrus -> Dovecot, both gateways as real processes.

Folder names with the other side's separator, ``&``, non-ASCII and deep nesting arrive as the
same canonical names (one level stays one level), special folders pair with the standby's own,
and every change kind (new mail, flags and keywords, move, rename, delete, expunge) converges.
Cyrus instances are shared per configuration for the test session; each test has its own user.
The suite runs Debian-default Cyrus as standby and as primary; ``MAILREPL_CYRUS_FULL=1`` adds the
recommended configuration as standby and Cyrus -> Dovecot with every change kind.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from mailrepl.shared.adapters.base import AppendItem
from tests.support.canonical_compare import adapter_for, canonical_snapshot, differences
from tests.support.cyrus import full_only
from tests.support.gateways import GatewayPair
from tests.support.net import eventually

pytestmark = [pytest.mark.dovecot, pytest.mark.cyrus]

DATE = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
FOLDERS = ["Release v1.2", "Projects/2024/Q1/deep/deeper", "Tom & Jerry", "Entwürfe/Ünter", "dots.in.name/sub",
           'Say "hi" \\ 100%^']


def message(i: int, what: str = "m") -> bytes:
    return (f"From: a@example.org\r\nTo: b@example.org\r\nSubject: {what} {i}\r\n"
            f"Message-ID: <{what}{i}@cross.example.org>\r\nDate: Mon, 6 May 2024 07:08:09 +0000\r\n\r\n"
            f"body {what} {i}\r\n").encode()


def fill(server, user: str) -> None:
    session = adapter_for(server).open(user)
    try:
        session.append("INBOX", [AppendItem(message(i), frozenset({"\\Seen"} if i % 2 else ()), DATE) for i in range(6)])
        for n, folder in enumerate(FOLDERS):
            session.append(folder, [AppendItem(message(i, f"f{n}"), frozenset({"$Work"}), DATE) for i in range(2)])
        session.append("Sent", [AppendItem(message(1, "sent"), frozenset({"\\Seen"}), DATE)])
    finally:
        session.close()


def change(server, user: str) -> None:
    """Every change kind, made on the primary through a user's session."""
    session = adapter_for(server).open(user)
    try:
        inbox = sorted(m.uid for m in session.fetch("INBOX", list(range(1, session.folder_info("INBOX").uidnext))))
        session.store_flags("INBOX", inbox[:1], frozenset({"\\Flagged", "$Label1"}))
        session.move("INBOX", inbox[1:2], "Tom & Jerry")
        session.expunge("INBOX", inbox[2:3])
        session.rename_folder("Release v1.2", "Release v1.3")
        session.delete_folder("dots.in.name/sub")
        session.create_folder("new.level/x")
        session.append("new.level/x", [AppendItem(message(9, "late"), frozenset(), DATE)])
    finally:
        session.close()


def converge(pair: GatewayPair, primary, standby, user: str) -> list[str]:
    """Wait until the standby equals the primary; the differences left if it never does."""
    left: list[str] = []

    def same() -> bool:
        pair.wait_synced([user], timeout=120)
        left[:] = differences(canonical_snapshot(primary, user), canonical_snapshot(standby, user))
        return not left

    try:
        eventually(same, 60, "standby converges")
    except AssertionError:
        pass
    return left


def replicate_with_changes(pair: GatewayPair, primary, standby, user: str) -> None:
    """Seed, then every change kind on the primary; the standby must converge after each."""
    pair.protect(user)
    assert converge(pair, primary, standby, user) == []
    change(primary, user)
    assert converge(pair, primary, standby, user) == []
    snap = canonical_snapshot(standby, user)
    # 6 + 6 folders x 2 + 1 sent; one expunged, a folder of 2 deleted, one late
    assert sum(sum(v.values()) for k, v in snap.items() if not isinstance(k, tuple)) == 17
    assert 'Say "hi" \\ 100%^' in snap
    assert "Release v1.3" in snap and "Release v1.2" not in snap and "Release v1" not in snap
    assert "Projects/2024/Q1/deep/deeper" in snap and "new.level/x" in snap
    assert snap[("Sent", "special_use")] == frozenset({"\\Sent"})
    assert pair.status()[user]["rejected"] == 0
    if standby.__class__.__name__ == "CyrusServer":
        # the parents Cyrus made by itself for the replicated folders: kept while needed,
        # removed with the folder that needed them
        assert "Projects/2024/Q1/deep" in snap and "dots.in.name" not in snap


def make_pair(tmp_path, primary, standby, user: str) -> GatewayPair:
    return GatewayPair(tmp_path, primary, standby, users=[user], poll_interval=0.3,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")


@full_only
def test_cyrus_to_dovecot(cyrus_instances, dovecot_factory, tmp_path):
    cyrus = cyrus_instances("debian-default")
    user = cyrus.unique_user("c2d")
    standby = dovecot_factory("standby", [user])
    fill(cyrus, user)
    pair = make_pair(tmp_path, cyrus, standby, user)
    pair.start()
    try:
        replicate_with_changes(pair, cyrus, standby, user)
    finally:
        pair.stop()
    assert "INBOX/Sent" not in canonical_snapshot(standby, user)


def post(pair: GatewayPair, path: str, body: dict) -> dict:
    with pair.recovery.api() as c:
        r = c.post(path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def fail_back(pair: GatewayPair, user: str) -> dict:
    post(pair, "/api/v1/failback", {"addresses": [user]})

    def caught_up():
        res = post(pair, "/api/v1/failback", {"addresses": [user]})["results"][0]
        return res if res.get("failback_queue") == 0 and res.get("primary_applied_seq") == res.get("dr_captured_seq") else None

    eventually(caught_up, 120, "the primary applied every standby change")
    post(pair, "/api/v1/failback", {"addresses": [user], "confirm": True})

    def back() -> bool:
        with pair.recovery.api() as c:
            return c.get(f"/api/v1/mailboxes/{user}").json()["site_state"] == "replicating"

    return eventually(back, 120, "replicating again")


@pytest.mark.parametrize("profile", ["debian-default", pytest.param("recommended", marks=full_only)])
def test_dovecot_to_cyrus_then_cutover_and_failback(profile, cyrus_instances, dovecot_factory, tmp_path):
    """Dovecot primary, Cyrus standby: seeding and every change kind converge; cutover, failback
    with no change at DR (nothing may come back), then cutover, changes at DR, failback: the
    primary equals the standby, folder names exact, no duplicate, no folder the primary never had."""
    cyrus = cyrus_instances(profile)
    user = cyrus.unique_user("cf")
    primary = dovecot_factory("primary", [user])
    fill(primary, user)
    pair = make_pair(tmp_path, primary, cyrus, user)
    pair.start()
    try:
        replicate_with_changes(pair, primary, cyrus, user)
        before = canonical_snapshot(primary, user)
        post(pair, "/api/v1/cutover", {"addresses": [user]})
        fail_back(pair, user)
        pair.wait_synced([user])
        after = canonical_snapshot(primary, user)
        assert differences(before, after, ignore_empty_extra=False) == [], "a failback with no change at DR changed the primary"
        assert differences(after, before, ignore_empty_extra=False) == []
        # changes at DR, then back
        post(pair, "/api/v1/cutover", {"addresses": [user]})
        eventually(lambda: pair.status()[user]["site_state"] == "active-at-dr", 60, "the source learns the cutover")
        dr = adapter_for(cyrus).open(user)
        try:
            dr.append("Review v2.0/Ä & Ö", [AppendItem(message(1, "at dr"), frozenset({"\\Seen"}), DATE)])
            inbox = sorted(m.uid for m in dr.fetch("INBOX", list(range(1, dr.folder_info("INBOX").uidnext))))
            dr.store_flags("INBOX", inbox[:1], frozenset({"\\Answered"}))
            dr.rename_folder("Release v1.3", "Release v1.3.1")
        finally:
            dr.close()
        time.sleep(2)  # the DR capture sees the changes
        fail_back(pair, user)
        assert converge(pair, primary, cyrus, user) == []
        final = canonical_snapshot(primary, user)
        assert "Release v1.3.1" in final and "Release v1.3" not in final and "Review v2.0/Ä & Ö" in final
        assert all(n == 1 for k, c in final.items() if not isinstance(k, tuple) for n in c.values()), "duplicate"
        assert sum(sum(c.values()) for k, c in final.items() if not isinstance(k, tuple)) == 18
        assert sum(final['Say "hi" \\ 100%^'].values()) == 2
        extra = {k for k in final if not isinstance(k, tuple)} - {k for k in before if not isinstance(k, tuple)}
        # Cyrus made the parent "Review v2.0" a real folder at DR: it comes back as one (empty)
        assert extra == {"Release v1.3.1", "Review v2.0/Ä & Ö", "Review v2.0"}, extra
        assert sum(final["Review v2.0"].values()) == 0
    finally:
        pair.stop()


def test_special_folders_pair_with_the_standbys_own(cyrus_instances, dovecot_factory, tmp_path):
    """Cyrus's \\Sent is "Sent Items" (INBOX.Sent Items), Dovecot's is "Sent": the sent mail lands in
    Dovecot's Sent, no "Sent Items" appears there, and after cutover and failback the primary
    still has its "Sent Items" and no "Sent"."""
    cyrus = cyrus_instances("debian-default")
    user = cyrus.unique_user("sp", specials=(("Sent Items", "\\Sent"), ("Trash", "\\Trash")))
    standby = dovecot_factory("standby", [user])
    session = adapter_for(cyrus).open(user)
    try:
        session.append("Sent Items", [AppendItem(message(i, "sent"), frozenset({"\\Seen"}), DATE) for i in range(3)])
        session.append("INBOX", [AppendItem(message(1), frozenset(), DATE)])
    finally:
        session.close()
    pair = make_pair(tmp_path, cyrus, standby, user)
    pair.start()
    try:
        pair.protect(user)
        pair.wait_synced([user])
        held = canonical_snapshot(standby, user)
        assert "Sent Items" not in held and sum(held["Sent"].values()) == 3
        assert held[("Sent", "special_use")] == frozenset({"\\Sent"})
        before = canonical_snapshot(cyrus, user)
        post(pair, "/api/v1/cutover", {"addresses": [user]})
        eventually(lambda: pair.status()[user]["site_state"] == "active-at-dr", 60, "the source learns the cutover")
        dr = adapter_for(standby).open(user)
        try:
            dr.append("Sent", [AppendItem(message(7, "sent at dr"), frozenset({"\\Seen"}), DATE)])
        finally:
            dr.close()
        time.sleep(2)
        fail_back(pair, user)
        pair.wait_synced([user])
        after = canonical_snapshot(cyrus, user)
        assert "Sent" not in after and sum(after["Sent Items"].values()) == 4
        assert {k for k in after if not isinstance(k, tuple)} == {k for k in before if not isinstance(k, tuple)}
    finally:
        pair.stop()
