"""What a Debian-default Cyrus standby changes or refuses is reported, never silent, and a crash
while it alters messages writes nothing twice.

- ``munge8bit`` (on by default) rewrites 8-bit header bytes: the message is replicated, reported
  as altered (recovery gateway API and CLI, ``/metrics``), with its identity;
- a message with a header line Cyrus refuses (``NO Message contains invalid header``) is listed
  as rejected with Message-ID, subject and date, at both gateways, and counted on ``/metrics``;
- a folder name the Cyrus standby cannot hold (it contains the look-alike that stands for a
  character Cyrus refuses) blocks that mailbox at the DR site, and the source gateway's status of
  the mailbox says so, with the reason;
- kill -9 of the recovery gateway while it replays messages Cyrus alters: after the restart the
  standby holds each message once (with ``MAILREPL_CYRUS_FULL=1``; the suite runs the same crash
  deterministically in memory: ``tests/unit/test_pipeline_memory.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from mailrepl.shared.adapters.base import AppendItem
from tests.support.canonical_compare import adapter_for, canonical_snapshot
from tests.support.cyrus import full_only
from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.net import eventually

pytestmark = [pytest.mark.dovecot, pytest.mark.cyrus]


def eight_bit(i: int) -> bytes:
    return (f"From: a@example.org\r\nSubject: H\u00c4NSCHEL {i}\r\nMessage-ID: <h{i}@munge.example.org>\r\n"
            f"Date: Mon, 6 May 2024 07:08:09 +0000\r\n\r\nK\u00f6rper {i}\r\n").encode()


def plain(i: int) -> bytes:
    return f"Subject: plain {i}\r\nMessage-ID: <p{i}@munge.example.org>\r\n\r\nbody {i}\r\n".encode()


REFUSED = (b"Subject: refused by Cyrus\r\nMessage-ID: <refused@munge.example.org>\r\n"
           b"Date: Tue, 7 May 2024 01:02:03 +0000\r\nthis line is no header\r\n\r\nbody\r\n")


def detail(api: httpx.Client, address: str) -> dict:
    r = api.get(f"/api/v1/mailboxes/{address}")
    r.raise_for_status()
    return r.json()


def metric(url: str, name: str, address: str) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + "{") and f'address="{address}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def make_pair(tmp_path, primary, standby, users) -> GatewayPair:
    return GatewayPair(tmp_path, primary, standby, users=users, poll_interval=0.3,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")


def test_altered_refused_and_blocked_are_reported(cyrus_instances, dovecot_factory, tmp_path):
    cyrus = cyrus_instances("debian-default")
    user, blocked = cyrus.unique_user("find"), cyrus.unique_user("block")
    primary = dovecot_factory("primary", [user, blocked])
    primary.deliver_many(user, [plain(0), eight_bit(1), REFUSED, plain(2)])
    session = adapter_for(primary).open(blocked)
    try:
        session.append("Quote \uff02 mark", [AppendItem(plain(0), frozenset(), None)])
    finally:
        session.close()
    pair = make_pair(tmp_path, primary, cyrus, [user, blocked])
    pair.start()
    try:
        pair.protect(user, blocked)
        pair.wait_synced([user])
        with pair.source.api() as src, pair.recovery.api() as rec:
            # refused: at both gateways, with the message's identity
            for where in (src, rec):
                (r,) = detail(where, user)["rejected_messages"]
                assert (r["message_id"], r["subject"], r["date"]) == (
                    "<refused@munge.example.org>", "refused by Cyrus", "Tue, 7 May 2024 01:02:03 +0000")
                assert "invalid header" in r["reason"] and r["folder"] == "INBOX"
            # altered: replicated, reported with what changed and the standby's hash
            d = detail(rec, user)
            (a,) = d["altered_messages"]
            assert a["message_id"] == "<h1@munge.example.org>" and a["what"] == "8-bit header bytes rewritten"
            assert d["altered"] == 1
            held = canonical_snapshot(cyrus, user)["INBOX"]
            assert a["standby_sha256"] in {k[0] for k in held} and a["sha256"] not in {k[0] for k in held}
            # everything else byte-exact: the primary's hashes minus the refused and the altered one
            sent = {k[0] for k in canonical_snapshot(primary, user)["INBOX"]}
            assert sent - {k[0] for k in held} == {a["sha256"], hashlib.sha256(
                next(m for m in sent_bodies(primary, user) if b"refused by Cyrus" in m)).hexdigest()}
        assert metric(pair.recovery.url, "mailrepl_recovery_rejected_messages", user) == 1
        assert metric(pair.recovery.url, "mailrepl_recovery_altered_messages", user) == 1
        # the CLI, pointed at the recovery gateway's config, lists both
        cli = subprocess.run([sys.executable, "-m", "mailrepl", "status", user, "--config", str(pair.recovery.config)],
                             capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="250"), check=False)
        assert cli.returncode == 0, cli.stderr
        assert "<refused@munge.example.org>" in cli.stdout and "8-bit header bytes rewritten" in cli.stdout
        # blocked at DR (Cyrus refuses the folder name): shown at the source, with the reason
        status = eventually(lambda: (st := pair.status()[blocked])["phase"] == "error" and st, 60,
                            "the source shows the DR-side error")
        assert status["error"].startswith("at the DR site:") and "Quote \uff02 mark" in status["error"]
        assert pair.status()[user]["phase"] == "replicating"
        # the pre-flight check ran before the first protection of the primary, and runs on demand
        with pair.source.api() as src:
            last = src.get("/api/v1/servers/check").raise_for_status().json()
            again = src.post("/api/v1/servers/check", json={"server": "primary"}).raise_for_status().json()
        assert last["blockers"] == 0 and {f["server"] for f in last["findings"]} == {"primary"}
        assert {(f["topic"], f["level"]) for f in again["findings"]} == {(f["topic"], f["level"]) for f in last["findings"]}
        assert ("probe 8-bit header", "ok") in {(f["topic"], f["level"]) for f in again["findings"]}
    finally:
        pair.stop()


def sent_bodies(server, user: str) -> list[bytes]:
    session = adapter_for(server).open(user)
    try:
        info = session.folder_info("INBOX")
        return [m.body for m in session.fetch("INBOX", list(range(1, info.uidnext)))]
    finally:
        session.close()


@full_only
def test_kill9_of_recovery_while_cyrus_alters_messages(cyrus_instances, dovecot_factory, tmp_path):
    cyrus = cyrus_instances("debian-default")
    user = cyrus.unique_user("crash")
    primary = dovecot_factory("primary", [user])
    total = 200
    primary.deliver_many(user, [eight_bit(i) for i in range(total)])
    pair = make_pair(tmp_path, primary, cyrus, [user])
    pair.start()
    try:
        pair.protect(user)
        eventually(lambda: 0 < (pair.status()[user]["last_applied_seq"] or 0), 120, "replay has begun")
        pair.recovery.kill9()
        time.sleep(0.5)
        pair.recovery.start()
        pair.wait_synced([user], timeout=180)
        held = canonical_snapshot(cyrus, user)["INBOX"]
        assert sum(held.values()) == total and max(held.values()) == 1, "a message was written twice"
        with pair.recovery.api() as rec:
            altered = detail(rec, user)["altered_messages"]
        assert altered and all(a["what"] == "8-bit header bytes rewritten" for a in altered)
        assert len({a["seq"] for a in altered}) == len(altered)
        # verify: the altered copies are the messages sent (reported as altered, not as differences)
        v = subprocess.run([sys.executable, "-m", "mailrepl", "verify", user, "--json", "--config",
                            str(pair.source.config)], capture_output=True, text=True, timeout=300, check=False)
        assert v.returncode == 0, v.stdout[-2000:] + v.stderr[-2000:]
    finally:
        pair.stop()
    print(json.dumps({"messages": total, "altered_reported": len(altered)}))
