"""kill -9 of the recovery gateway in the middle of a lagged replay and in the middle of a restore.

Restarted, the result is the one without the crash: the lagged standby ends equal to the primary
with no message twice; the restore job is taken up again at start-up (the CLI following it rides
out the restart) and the restored tree is exactly the primary as it was at the time asked for,
nothing written twice (the comparison counts each (hash, flags, date) key).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest
from mailrepl.recovery.restore_plan import restored_prefix

from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.mailcompare import assert_same_mailbox, snapshot
from tests.support.net import eventually

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

CONFIG = "\n[lag]\nreplay_delay = 3\n[history]\nretention_days = 1\ncheck_interval = 1\n"


def body(i: int) -> bytes:
    lines = "\r\n".join(f"line {k} of message {i} " + "z" * 60 for k in range(120))
    return f"Subject: crash {i}\r\nMessage-ID: <c{i}@x>\r\n\r\n{lines}\r\n".encode()


def recovery_seqs(pair: GatewayPair) -> tuple[int, int]:
    try:
        r = httpx.get(pair.recovery.url + "/api/v1/mailboxes/alice", timeout=5,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    except httpx.HTTPError:
        return 0, 0
    if r.status_code != 200:
        return 0, 0
    return r.json()["last_applied_seq"], r.json()["last_captured_seq"]


def test_kill9_during_a_lagged_replay_and_during_a_restore(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    pair = GatewayPair(tmp_path, primary, standby, users=["alice"], with_primaries=True, recovery_extra=CONFIG,
                       recovery_gateway_extra="append_batch = 10",
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    primary.deliver_many("alice", [body(i) for i in range(100)])
    pair.start()
    try:
        # 1. a lagged replay under way: the first half applied once older than the delay, the
        # second half, delivered 2 s later, received and still waiting for it
        pair.protect("alice")
        eventually(lambda: recovery_seqs(pair)[1] >= 100, timeout=60, what="the first half received")
        time.sleep(2)
        primary.deliver_many("alice", [body(i) for i in range(100, 200)])

        def mid_replay() -> bool:
            applied, received = recovery_seqs(pair)
            return 0 < applied < received - 30

        eventually(mid_replay, timeout=60, what="a lagged replay under way")
        pair.recovery.kill9()
        pair.recovery.start()
        pair.wait_synced(["alice"], timeout=120)
        assert_same_mailbox(primary, standby, "alice")

        # 2. a restore under way
        at = datetime.now(UTC)
        time.sleep(0.05)
        expected = {f: c for f, c in snapshot(primary, "alice").items() if c}
        M = primary.imap("alice", master=True)
        M.select("INBOX")
        M.uid("STORE", "1:150", "+FLAGS", "(\\Deleted)")
        M.uid("EXPUNGE", "1:150")
        M.logout()
        pair.wait_synced(["alice"], timeout=60)
        follower = subprocess.Popen(
            [sys.executable, "-m", "mailrepl", "restore", "alice", "--at", at.isoformat(), "--json",
             "--url", pair.recovery.url, "--token", ADMIN_TOKEN],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, COLUMNS="200"))
        deadline = time.monotonic() + 60
        while _restore_progress(pair) is None:  # polled closely: a batch of the restore is quick
            assert follower.poll() is None and time.monotonic() < deadline, "no restore under way to interrupt"
            time.sleep(0.002)
        pair.recovery.kill9()
        time.sleep(0.3)
        pair.recovery.start()
        out, err = follower.communicate(timeout=180)
        assert follower.returncode == 0, out + err
        result = json.loads(out)
        assert result["state"] == "done"
        assert result["result"]["already_there"] > 0, "the job ran again over what it had written before the kill"
        got = {f[len(restored_prefix(at)) + 1:]: c for f, c in snapshot(primary, "alice").items()
               if f.startswith(restored_prefix(at) + "/") and c}
        assert got == expected
    finally:
        pair.stop()


def _restore_progress(pair: GatewayPair):
    """(done, total) of the restore job under way, read from the state store's progress."""
    import sqlite3

    con = sqlite3.connect(f"file:{pair.tmp}/r.sqlite?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT messages_done, messages_total FROM restore_job WHERE state = 'running'").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()
    if row is None or not (0 < row[0] < row[1]):
        return None
    return row
