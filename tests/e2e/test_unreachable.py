"""Gateways start and serve their API while the mail server or the peer gateway is down; status
shows the error; replication resumes by itself when they come back."""
from __future__ import annotations


import pytest

from tests.support.gateways import GatewayPair
from tests.support.mailcompare import assert_same_mailbox
from tests.support.net import eventually

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]


def msg(i: int) -> bytes:
    return f"Subject: m{i}\r\nMessage-ID: <m{i}@x>\r\n\r\nbody {i}\r\n".encode()


def test_peer_and_server_outages(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    for i in range(5):
        primary.deliver("alice", msg(i))
    pair = GatewayPair(tmp_path, primary, standby, users=["alice"],
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    # the source comes up alone: its peer is not there
    pair.source.start()
    try:
        pair.protect("alice")
        st = eventually(lambda: s if (s := pair.status()["alice"])["error"] and s["last_captured_seq"] >= 5 else None,
                        what="peer error in status")
        assert "recovery" in st["error"].lower() or "peer" in st["error"].lower() or "connect" in st["error"].lower(), st

        pair.recovery.start()
        pair.wait_synced(["alice"])
        assert pair.status()["alice"]["error"] is None
        assert_same_mailbox(primary, standby, "alice")

        # the primary mail server goes away: the API still answers and shows the error
        primary.stop()
        st = eventually(lambda: s if (s := pair.status()["alice"])["error"] else None, what="server error in status")
        assert st["protected"] is True

        # ... and the source gateway restarted meanwhile still starts and serves
        pair.source.stop()
        pair.source.start()
        assert "alice" in pair.status()

        primary.start()
        primary.deliver("alice", msg(100))
        pair.wait_synced(["alice"])
        assert pair.status()["alice"]["error"] is None
        assert_same_mailbox(primary, standby, "alice")

        # the standby goes away: received changes wait, then are applied when it is back
        standby.stop()
        primary.deliver("alice", msg(101))
        eventually(lambda: pair.status()["alice"]["replay_queue"], what="replay queue while the standby is down")
        standby.start()
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")
    finally:
        pair.stop()
