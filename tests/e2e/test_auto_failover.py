"""Automatic failover (opt-in): the recovery gateway probes the primary server, cuts its
mailboxes over after an outage longer than the threshold, holds them at DR and never cuts
back by itself; every automatic action is visible in the API."""
from __future__ import annotations

import time

import pytest

from tests.e2e.test_cutover_failback import eventually, message, post, recovery_mailbox
from tests.support.gateways import GatewayPair
from tests.support.mailcompare import assert_same_mailbox

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

AUTO = """
[failover]
auto = true
outage_seconds = 2
check_interval = 0.5
hold_seconds = 600
redirect_key = "auto-failover-Gh7Ij0Kl3Mn6Op9Qr2St5"
"""


def test_outage_longer_than_threshold_cuts_over_and_holds(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice", "bob"])
    standby = dovecot_factory("standby", ["alice", "bob"])
    for user in ("alice", "bob"):
        primary.deliver_many(user, [message(i) for i in range(5)])
    pair = GatewayPair(tmp_path, primary, standby, users=["alice", "bob"], with_primaries=True, recovery_extra=AUTO,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    pair.start()
    try:
        pair.protect("alice", "bob")
        pair.wait_synced(["alice", "bob"])
        with pair.recovery.api() as c:
            health = eventually(lambda: c.get("/api/v1/failover").json()["servers"], what="first probe")
        assert health[0]["server"] == "primary" and health[0]["up"] is True
        # a short blip is not an outage: nothing happens
        time.sleep(1.5)
        assert recovery_mailbox(pair)["site_state"] == "replicating"

        primary.kill()
        down_at = time.monotonic()
        detail = eventually(lambda: (m := recovery_mailbox(pair))["site_state"] == "active-at-dr" and m,
                            timeout=60, what="automatic cutover")
        assert time.monotonic() - down_at >= 2.0
        assert [(t["after"], t["actor"]) for t in detail["transitions"]] == [
            ("cutting-over", "auto"), ("active-at-dr", "auto")]
        with pair.recovery.api() as c:
            view = c.get("/api/v1/failover").json()
            assert view["auto"] is True and view["servers"][0]["up"] is False
            assert view["servers"][0]["failed_over_at"] is not None
            assert {(a["address"], a["after"]) for a in view["automatic_actions"]} == {
                ("alice", "cutting-over"), ("alice", "active-at-dr"), ("bob", "cutting-over"), ("bob", "active-at-dr")}
            bob = c.get("/api/v1/mailboxes/bob").json()
            assert bob["site_state"] == "active-at-dr"

        # the primary comes back: no automatic cut back, and the hold time refuses a failback
        primary.start()
        with pair.recovery.api() as c:
            eventually(lambda: c.get("/api/v1/failover").json()["servers"][0]["up"], what="primary seen up again")
        time.sleep(1.5)
        assert recovery_mailbox(pair)["site_state"] == "active-at-dr"
        r = post(pair, "/api/v1/failback", {"addresses": ["alice"]})
        assert r.status_code == 409 and "minimum hold time" in r.json()["detail"], r.text
        assert_same_mailbox(primary, standby, "alice")
    finally:
        pair.stop()
