"""A message the standby refuses is reported per mailbox (API and log) and does not stop the rest.

The standby runs with a per-message size limit the primary does not have (Dovecot's quota
plugin, ``quota_max_mail_size``), so a large message is accepted by the primary and refused by
the standby's APPEND, for real.
"""
from __future__ import annotations

import os

import pytest

from tests.support.gateways import GatewayPair
from tests.support.mailcompare import snapshot

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]


def small(i: int) -> bytes:
    return f"Subject: small {i}\r\nMessage-ID: <small{i}@x>\r\n\r\nbody {i}\r\n".encode()


def test_rejected_message_is_reported_and_the_rest_replicates(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice", "bob"])
    standby = dovecot_factory("standby", ["alice", "bob"], max_mail_size="1M")
    big = b"Subject: too big for the standby\r\nMessage-ID: <big@x>\r\n\r\n" + os.urandom(900_000).hex().encode() + b"\r\n"
    for i in range(10):
        primary.deliver("alice", small(i))
        primary.deliver("bob", small(i))
    primary.deliver("alice", big)
    for i in range(10, 20):
        primary.deliver("alice", small(i))

    pair = GatewayPair(tmp_path, primary, standby, users=["alice", "bob"],
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    pair.start()
    try:
        pair.protect("alice", "bob")
        st = pair.wait_synced(["alice", "bob"])
        assert st["alice"]["rejected"] == 1 and st["bob"]["rejected"] == 0

        with pair.source.api() as c:
            detail = c.get("/api/v1/mailboxes/alice").json()
        (rej,) = detail["rejected_messages"]
        assert rej["folder"] == "INBOX" and rej["reason"], rej
        assert "rejected" in pair.recovery.log.read_text()

        # everything else arrived, including what came after the refused message
        p, s = snapshot(primary, "alice"), snapshot(standby, "alice")
        assert sum(p["INBOX"].values()) == 21 and sum(s["INBOX"].values()) == 20
        missing = p["INBOX"] - s["INBOX"]
        assert sum(missing.values()) == 1 and not (s["INBOX"] - p["INBOX"])
        assert snapshot(primary, "bob") == snapshot(standby, "bob")

        # replication goes on after the rejection
        primary.deliver("alice", small(99))
        st = pair.wait_synced(["alice"])
        assert sum(snapshot(standby, "alice")["INBOX"].values()) == 21
    finally:
        pair.stop()
