"""Folder names given up and taken again within one capture cycle, end to end on two real
Dovecot instances and both gateways: A renamed to C and a new A created; A and B swapped
through a third name; a parent renamed and a new parent of its old name created with children.
The source gateway is stopped while the user makes the changes, so that one capture cycle sees
them all; the standby must end equal to the primary (per folder: SHA-256 of BODY[], flags,
internal dates), every message in its folder, and capture must not be stuck.
Runs with SQLite and with PostgreSQL as the gateways' state store.
"""
from __future__ import annotations

import pytest

from tests.support.gateways import GatewayPair
from tests.support.mailcompare import assert_same_mailbox, snapshot

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

USERS = ["alice"]


def message(i: int, tag: str) -> bytes:
    return (
        f"From: sender{i}@example.org\r\nTo: alice@example.org\r\nSubject: {tag} {i}\r\n"
        f"Message-ID: <{tag}.{i}@example.org>\r\nDate: Tue, 3 Sep 2024 10:{i % 60:02d}:00 +0200\r\n"
        f"\r\nThis is {tag} message {i}.\r\n"
    ).encode()


def ok(result) -> None:
    typ, data = result
    assert typ == "OK", data


def folder_of(server, tag: str) -> set[str]:
    """The folders holding the messages with subject ``tag …`` (the subject is in the body)."""
    M = server.imap("alice")
    try:
        found = set()
        typ, listing = M.list()
        assert typ == "OK"
        for line in listing:
            name = line.decode().rsplit(' "/" ', 1)[-1].strip('"')
            typ, _ = M.select(f'"{name}"', readonly=True)
            if typ != "OK":
                continue
            typ, data = M.uid("SEARCH", None, "HEADER", "Subject", f'"{tag}"')
            if typ == "OK" and data[0]:
                found.add(name)
        return found
    finally:
        M.logout()


def test_renames_that_reuse_a_name_within_one_cycle(dovecot_factory, gateway_states, tmp_path):
    primary = dovecot_factory("primary", USERS)
    standby = dovecot_factory("standby", USERS)
    src_state, rec_state = gateway_states
    pair = GatewayPair(tmp_path, primary, standby, users=USERS, source_state=src_state, recovery_state=rec_state)
    pair.start()
    try:
        for folder in ("A", "B", "P", "P/x"):
            tag = folder.replace("/", "-")
            for i in range(2):
                primary.deliver("alice", message(i, f"seed-{tag}"), folder=folder)
        pair.protect("alice")
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")
        seq = pair.status()["alice"]["last_captured_seq"]

        # A renamed to C and a new A created, while no cycle runs
        pair.source.stop()
        M = primary.imap("alice")
        ok(M.rename("A", "C"))
        ok(M.create("A"))
        ok(M.append("A", None, None, message(1, "new-A")))
        M.logout()
        pair.source.start()
        st = pair.wait_synced(["alice"])
        assert st["alice"]["last_captured_seq"] > seq and not st["alice"].get("error"), st["alice"]
        assert_same_mailbox(primary, standby, "alice")
        assert folder_of(standby, "seed-A") == {"C"} and folder_of(standby, "new-A") == {"A"}

        # A and B swapped through a third name; P renamed to Q and a new P with a child P/x
        pair.source.stop()
        M = primary.imap("alice")
        ok(M.rename("A", "T"))
        ok(M.rename("B", "A"))
        ok(M.rename("T", "B"))
        ok(M.rename("P", "Q"))
        ok(M.create("P"))
        ok(M.create("P/x"))
        ok(M.append("P/x", None, None, message(2, "new-P-x")))
        M.logout()
        pair.source.start()
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")
        assert folder_of(standby, "seed-B") == {"A"} and folder_of(standby, "new-A") == {"B"}
        assert folder_of(standby, "seed-P-x") == {"Q/x"} and folder_of(standby, "new-P-x") == {"P/x"}
        assert set(snapshot(standby, "alice")) == set(snapshot(primary, "alice"))
        assert not any(n.startswith("mailrepl-") for n in snapshot(standby, "alice"))  # no temporary name left

        # capture goes on: a later change is replicated
        primary.deliver("alice", message(3, "after"), folder="A")
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")
    finally:
        pair.stop()
