"""Cutover and failback end to end: real Dovecots, both gateways, nginx's mail proxy in front.

A user logs in through the proxy and is on the primary; the primary dies; cutover; the same
login through the same proxy reaches the standby with all mail replicated before the failure;
the user works there (LMTP delivery, delete, move, flags, a new folder); the primary comes back;
failback brings exactly those changes back (bytes proportional to them, not to the mailbox);
the primary ends equal to the standby and forward replication works again.
"""
from __future__ import annotations

import imaplib
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from tests.support.environment import unavailable
from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.mailcompare import assert_same_mailbox, describe_difference, snapshot
from tests.support.nginx import NginxMailProxy, nginx_missing_reason

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

KEY = "proxy-key-Zn4Xb7Cv0Mq3Wr6Et9Yu2"
FAILOVER = f'\n[failover]\nredirect_key = "{KEY}"\n'
FILLER = ("x" * 76 + "\r\n") * 60  # ~4.7 KB per message: the mailbox is much bigger than the changes


def message(i: int, tag: str = "m") -> bytes:
    return (f"From: s{i}@example.org\r\nTo: alice@example.org\r\nSubject: {tag} {i}\r\n"
            f"Message-ID: <{tag}{i}@example.org>\r\nDate: Tue, 3 Sep 2024 10:{i % 60:02d}:00 +0200\r\n\r\n"
            f"Body of {tag} {i}.\r\n{FILLER}").encode()


def eventually(pred, timeout=90.0, what=""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"timed out: {what} (last: {last!r})")


def proxy_login(proxy: NginxMailProxy) -> imaplib.IMAP4:
    M = imaplib.IMAP4("127.0.0.1", proxy.port)
    M.login("alice", "secret")
    return M


def uidvalidity(M: imaplib.IMAP4, folder: str = "INBOX") -> int:
    typ, data = M.status(folder, "(UIDVALIDITY MESSAGES)")
    assert typ == "OK", data
    return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))


def direct_uidvalidity(server) -> int:
    M = server.imap("alice", master=True)
    try:
        return uidvalidity(M)
    finally:
        M.logout()


def uid_of(M, subject: str) -> bytes:
    typ, data = M.uid("SEARCH", None, "HEADER", "Subject", f'"{subject}"')
    assert typ == "OK" and data[0], f"no message {subject!r}"
    return data[0].split()[0]


def recovery_mailbox(pair: GatewayPair) -> dict:
    with pair.recovery.api() as c:
        r = c.get("/api/v1/mailboxes/alice")
        r.raise_for_status()
        return r.json()


def failback_bytes(pair: GatewayPair) -> float:
    r = httpx.get(pair.source.url + "/metrics", timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    for line in r.text.splitlines():
        if line.startswith("mailrepl_source_failback_wire_bytes "):
            return float(line.split()[1])
    raise AssertionError("no mailrepl_source_failback_wire_bytes metric")


def post(pair: GatewayPair, path: str, body: dict) -> httpx.Response:
    with pair.recovery.api() as c:
        return c.post(path, json=body, timeout=120)


def fail_back(pair: GatewayPair, *, timeout: float = 120.0, captured_at_least: int = 0) -> dict:
    """failback, wait until the primary has every standby change (at least ``captured_at_least``
    of them captured at DR), confirm, wait for replicating."""
    r = post(pair, "/api/v1/failback", {"addresses": ["alice"]})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["state"] == "failing-back"

    def caught_up():
        res = post(pair, "/api/v1/failback", {"addresses": ["alice"]}).json()["results"][0]  # idempotent
        done = (res.get("failback_queue") == 0 and res.get("dr_captured_seq", -1) >= captured_at_least
                and res.get("primary_applied_seq") == res.get("dr_captured_seq"))
        return res if done else None

    eventually(caught_up, timeout, "the primary applied every standby change")
    r = post(pair, "/api/v1/failback", {"addresses": ["alice"], "confirm": True})
    assert r.status_code == 200, r.text
    return eventually(lambda: (m := recovery_mailbox(pair))["site_state"] == "replicating" and m, timeout,
                      "switched back to replicating")


@pytest.fixture
def proxy_factory():
    reason = nginx_missing_reason()
    if reason:
        unavailable(reason)
    made = []

    def make(auth_http: str) -> NginxMailProxy:
        p = NginxMailProxy(auth_http, key=KEY)
        made.append(p)
        p.start()
        return p

    yield make
    for p in made:
        p.cleanup()


def test_cutover_through_nginx_then_incremental_failback(dovecot_factory, proxy_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    primary.deliver_many("alice", [message(i) for i in range(200)])
    primary.deliver_many("alice", [message(i, "work") for i in range(10)], folder="Work")
    pair = GatewayPair(tmp_path, primary, standby, users=["alice"], with_primaries=True, recovery_extra=FAILOVER,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    pair.start()
    try:
        pair.protect("alice")
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")
        proxy = proxy_factory(f"127.0.0.1:{pair.recovery.port}/auth")
        uv_primary, uv_standby = direct_uidvalidity(primary), direct_uidvalidity(standby)
        assert uv_primary != uv_standby, "the two servers must be told apart by UIDVALIDITY"

        # 1. through the proxy, the user is on the primary
        M = proxy_login(proxy)
        assert uidvalidity(M) == uv_primary
        M.logout()
        before = snapshot(primary, "alice")
        mailbox_bytes = sum(len(message(i)) for i in range(200))

        # 2. the primary dies; cutover: the replayer kept the DR capture state current, so the
        #    cutover is a state change, without reading the standby
        eventually(lambda: recovery_mailbox(pair)["standby_view_current"], what="standby view current")
        primary.kill()
        r = post(pair, "/api/v1/cutover", {"addresses": ["alice"]})
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
        assert res["state"] == "active-at-dr" and res["status"] == "ok" and res["replay_queue"] == 0, res
        assert res["standby_read"] is False, res
        again = post(pair, "/api/v1/cutover", {"addresses": ["alice"]})  # idempotent
        assert again.status_code == 200 and again.json()["results"][0]["state"] == "active-at-dr"
        detail = recovery_mailbox(pair)
        assert detail["active_site"] == "dr"
        assert [(t["before"], t["after"]) for t in detail["transitions"]] == [
            ("replicating", "cutting-over"), ("cutting-over", "active-at-dr")]
        assert all(t["at"] for t in detail["transitions"])

        # 3. the same login through the same proxy reaches the standby, with all mail
        M = proxy_login(proxy)
        assert uidvalidity(M) == uv_standby
        assert describe_difference(before, snapshot(standby, "alice"), "primary before", "standby") == ""

        # 4. the user works on the standby
        M.select("INBOX")
        M.uid("STORE", uid_of(M, "m 1"), "+FLAGS", r"(\Flagged $Important)")
        M.uid("STORE", uid_of(M, "m 2"), "+FLAGS", r"(\Seen)")
        M.uid("STORE", uid_of(M, "m 3"), "+FLAGS", r"(\Deleted)")
        M.uid("STORE", uid_of(M, "m 4"), "+FLAGS", r"(\Deleted)")
        M.expunge()
        M.uid("MOVE", uid_of(M, "m 5"), "Work")
        assert M.create("Projects")[0] == "OK"
        M.uid("MOVE", uid_of(M, "m 6"), "Projects")
        M.append("Projects", r"(\Seen)", None, message(1, "draft"))
        M.logout()
        standby.deliver_many("alice", [message(i, "while at DR") for i in range(3)])
        with pair.recovery.api() as c:
            eventually(lambda: c.get("/api/v1/mailboxes/alice").status_code == 200, what="recovery API")

        # 5. the primary comes back; failback; the primary equals the standby
        primary.start()
        sent_before = failback_bytes(pair)
        final = fail_back(pair, captured_at_least=10)  # 2 flags, 2 expunges, 2 moves, 1 folder, 4 adds
        assert final["active_site"] == "primary"
        assert [t["after"] for t in final["transitions"]][-3:] == ["failing-back", "switching-back", "replicating"]
        assert final["failback_report"]["late"] == [] and final["failback_report"]["resync"] is False
        assert_same_mailbox(primary, standby, "alice")
        sent = failback_bytes(pair) - sent_before
        changes_bytes = 4 * len(message(0))  # 3 deliveries + 1 append; the rest carries no body
        assert 0 < sent < max(4 * changes_bytes, mailbox_bytes / 10), (sent, changes_bytes, mailbox_bytes)
        print(f"failback: {sent:.0f} bytes for 11 changes; mailbox {mailbox_bytes} bytes")

        # 6. the proxy sends the user to the primary again, and forward replication works
        M = proxy_login(proxy)
        assert uidvalidity(M) == uv_primary
        M.select("INBOX")
        M.uid("STORE", uid_of(M, "while at DR 0"), "+FLAGS", r"(\Answered)")
        M.uid("MOVE", uid_of(M, "m 7"), "Projects")
        M.logout()
        primary.deliver_many("alice", [message(i, "after failback") for i in range(2)])
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")
        assert pair.status()["alice"]["site_state"] == "replicating"
    finally:
        pair.stop()


def test_wiped_primary_is_fully_resynchronised(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    primary.deliver_many("alice", [message(i) for i in range(20)])
    primary.deliver_many("alice", [message(i, "work") for i in range(5)], folder="Work")
    pair = GatewayPair(tmp_path, primary, standby, users=["alice"],
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    pair.start()
    try:
        pair.protect("alice")
        pair.wait_synced(["alice"])
        primary.kill()
        cli = subprocess.run([sys.executable, "-m", "mailrepl", "cutover", "--all", "--server", "primary",
                              "--url", pair.recovery.url, "--token", ADMIN_TOKEN],
                             capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="200"))
        assert cli.returncode == 0 and "active-at-dr" in cli.stdout, cli.stdout + cli.stderr
        assert recovery_mailbox(pair)["site_state"] == "active-at-dr"
        standby.deliver_many("alice", [message(i, "at DR") for i in range(2)])
        M = standby.imap("alice")
        M.select("Work")
        M.uid("STORE", uid_of(M, "work 1"), "+FLAGS", r"(\Flagged)")
        M.logout()
        time.sleep(2)  # the DR capture sees the changes (the full resync reads the standby anyway)
        primary.wipe_user("alice")  # the primary comes back with an empty mail store
        primary.start()
        final = fail_back(pair)
        assert final["failback_report"]["resync"] is True
        assert_same_mailbox(primary, standby, "alice")
        primary.deliver("alice", message(99, "after"))
        pair.wait_synced(["alice"])
        assert_same_mailbox(primary, standby, "alice")
    finally:
        pair.stop()


def test_mail_delivered_to_the_primary_after_cutover_is_kept(dovecot_factory, gateway_states, tmp_path):
    """Runs with SQLite and with PostgreSQL as the gateways' state stores."""
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    primary.deliver_many("alice", [message(i) for i in range(10)])
    primary.deliver("alice", message(1, "project"), folder="Projects")
    source_state, recovery_state = gateway_states
    pair = GatewayPair(tmp_path, primary, standby, users=["alice"],
                       source_state=source_state, recovery_state=recovery_state)
    pair.start()
    try:
        pair.protect("alice")
        pair.wait_synced(["alice"])
        conflict = post(pair, "/api/v1/failback", {"addresses": ["alice"]})
        assert conflict.status_code == 409 and "cut over first" in conflict.json()["detail"], conflict.text
        # cutover while the primary still answers (e.g. a planned move): the source learns it
        r = post(pair, "/api/v1/cutover", {"addresses": ["alice"]})
        assert r.status_code == 200 and r.json()["results"][0]["state"] == "active-at-dr", r.text
        eventually(lambda: pair.status()["alice"]["site_state"] == "active-at-dr", what="source learns the cutover")
        assert pair.status()["alice"]["active_site"] == "dr"
        # an MTA still delivers to the primary: late mail the standby never sees; a client still
        # connected to the primary deletes one message and flags another
        primary.deliver_many("alice", [message(i, "late") for i in range(2)])
        primary.deliver("alice", message(0, "late project"), folder="Projects")
        P = primary.imap("alice")
        P.select("INBOX")
        P.uid("STORE", uid_of(P, "m 3"), "+FLAGS", r"(\Deleted)")
        P.expunge()
        P.uid("STORE", uid_of(P, "m 4"), "+FLAGS", r"(\Flagged)")
        P.logout()
        time.sleep(2)
        assert not any("late" in str(k) for c in snapshot(standby, "alice").values() for k in c), \
            "nothing is replayed into the standby while it is active"
        standby.deliver("alice", message(1, "at DR"))
        M = standby.imap("alice")
        M.select("INBOX")
        M.uid("STORE", uid_of(M, "m 2"), "+FLAGS", r"(\Deleted)")
        M.expunge()
        assert M.delete("Projects")[0] == "OK"  # with the late mail the standby never saw
        M.logout()
        final = fail_back(pair)
        report = final["failback_report"]
        late = report["late"]
        assert sorted(x["folder"] for x in late) == ["INBOX", "INBOX", "Projects"], late
        assert [(k["folder"], k["messages"]) for k in report["kept_folders"]] == [("Projects", 1)]
        assert report["late_expunged"] == [{"folder": "INBOX"}], report
        assert [(x["folder"], x["flags"]) for x in report["late_changed"]] == [("INBOX", "\\Flagged")], report
        M = primary.imap("alice")
        M.select("Projects")
        assert M.uid("SEARCH", None, "ALL")[1][0].split() == [uid_of(M, "late project 0")]
        M.logout()
        pair.wait_synced(["alice"])
        # nothing lost on either side: the late mail is kept on the primary and now on the standby,
        # the late expunge and flag change too
        subjects = [k for k in snapshot(primary, "alice")["INBOX"]]
        assert len(subjects) == 10 - 1 - 1 + 1 + 2
        eventually(lambda: not describe_difference(snapshot(primary, "alice"), snapshot(standby, "alice"),
                                                   "primary", "standby"), what="late changes on the standby")
        assert_same_mailbox(primary, standby, "alice")
    finally:
        pair.stop()
