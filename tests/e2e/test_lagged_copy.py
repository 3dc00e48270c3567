"""A lagged copy end to end on real Dovecot servers, with a short delay.

The standby trails the primary by the delay (a change received at DR is on the standby only once
it is older than the delay; status shows the delay and what waits); a cutover "up to T" leaves
out exactly the changes captured after T, lists them, and a restore from history brings them
back onto the standby.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from mailrepl.recovery.restore_plan import restored_prefix

from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.mailcompare import snapshot, total_messages
from tests.support.net import eventually

pytestmark = [pytest.mark.dovecot]

DELAY = 4
CONFIG = f"\n[lag]\nreplay_delay = {DELAY}\n[history]\nretention_days = 1\ncheck_interval = 1\n"


def msg(i: int) -> bytes:
    return f"Subject: lag {i}\r\nMessage-ID: <l{i}@x>\r\n\r\nmessage {i}\r\n".encode()


def cli(pair: GatewayPair, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailrepl", *args, "--url", pair.recovery.url, "--token",
                           ADMIN_TOKEN], check=False, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200"))


def test_the_standby_trails_by_the_delay_and_a_cutover_up_to_t_sets_later_changes_aside(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    pair = GatewayPair(tmp_path, primary, standby, users=["alice"], recovery_extra=CONFIG,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    primary.deliver_many("alice", [msg(i) for i in range(3)])
    pair.start()
    api = pair.recovery.api()
    try:
        pair.protect("alice")

        def recovery_status() -> dict:
            r = api.get("/api/v1/mailboxes/alice")
            return r.json() if r.status_code == 200 else {"last_captured_seq": 0}

        # received at DR, waiting for the delay: not on the standby yet, status says so
        eventually(lambda: recovery_status()["last_captured_seq"] > 0, timeout=30, what="changes received")
        st = recovery_status()
        received_at = time.monotonic()
        assert st["replay_delay_seconds"] == DELAY
        if total_messages(snapshot(standby, "alice")) == 0:  # still within the delay when checked
            assert st["replay_queue"] > 0 and st["delayed_changes"] > 0
        lag = api.get("/api/v1/lag").json()["mailboxes"]
        assert lag and lag[0]["replay_delay_seconds"] == DELAY
        pair.wait_synced(["alice"], timeout=60)
        assert time.monotonic() - received_at >= DELAY - 1.5, "applied only once older than the delay"
        assert total_messages(snapshot(standby, "alice")) == 3

        # cutover up to T: what was captured before T is played, the rest set aside
        primary.deliver("alice", msg(10))
        eventually(lambda: recovery_status()["last_captured_seq"] > st["last_captured_seq"], timeout=30,
                   what="the change before T received")
        t = datetime.now(UTC)
        time.sleep(0.2)
        before = recovery_status()["last_captured_seq"]
        primary.deliver("alice", msg(11))
        M = primary.imap("alice", master=True)
        M.create("Later")
        M.logout()
        eventually(lambda: recovery_status()["last_captured_seq"] >= before + 2, timeout=30,
                   what="the changes after T received")
        r = api.post("/api/v1/cutover", json={"addresses": ["alice"], "play": "until", "until": t.isoformat()})
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
        assert res["state"] == "active-at-dr" and res["set_aside"] >= 2 and res["applied_seq"] == before
        got = snapshot(standby, "alice")
        assert total_messages(got) == 4 and "Later" not in got
        aside = api.get("/api/v1/lag/alice/set-aside").json()["changes"]
        assert sorted(c["kind"] for c in aside) == ["folder.create", "msg.add"] and res["set_aside"] == 2
        assert all(datetime.fromisoformat(c["captured_at"]) > t for c in aside)

        # recoverable: the mailbox as it was last captured, restored from history onto the standby
        latest = datetime.now(UTC)
        out = cli(pair, "restore", "alice", "--at", latest.isoformat())
        assert out.returncode == 0, out.stdout + out.stderr
        restored = snapshot(standby, "alice")
        prefix = restored_prefix(latest)
        assert total_messages({f: c for f, c in restored.items() if f.startswith(prefix + "/")}) == 5
        assert prefix + "/Later" in restored
    finally:
        api.close()
        pair.stop()
