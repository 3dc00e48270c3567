"""``mailrepl verify`` end to end: two real Dovecot instances, both gateways as processes.

One pair for the module (each test works on its own users): equal copies verify equal (through
the cheap first pass) and stay equal under live traffic; changes made on the standby behind the
gateways' back are found, each with its kind; the CLI's exit codes and JSON; the API's job,
roles, the mailbox detail and the metrics.
"""
from __future__ import annotations

import imaplib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.dovecot import DovecotServer, DovecotUnavailable, dovecot_missing_reason
from tests.support.environment import unavailable
from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.mailcompare import assert_same_mailbox

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

USERS = ["alice", "bob", "carol", "dave"]
ROOT = Path(__file__).resolve().parents[2]


def message(i: int, user: str) -> bytes:
    return (f"From: sender{i}@example.org\r\nTo: {user}@example.org\r\nSubject: message {i} for {user}\r\n"
            f"Message-ID: <{i}.{user}@example.org>\r\nDate: Tue, 3 Sep 2024 10:{i % 60:02d}:00 +0200\r\n"
            f"\r\nHello {user}, this is message {i}.\r\n").encode()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    reason = dovecot_missing_reason()
    if reason:
        unavailable(reason)
    tmp = tmp_path_factory.mktemp("verify")
    servers = []
    try:
        for name in ("primary", "standby"):
            try:
                server = DovecotServer(name, USERS)
            except DovecotUnavailable as exc:
                unavailable(str(exc))
            servers.append(server)
            server.start()
        primary, standby = servers
        for u in USERS:
            primary.deliver_many(u, [message(i, u) for i in range(6)])
            primary.deliver_many(u, [message(i, u) for i in range(100, 104)], folder="Lists")
        p = GatewayPair(tmp, primary, standby, users=USERS, source_state=f"sqlite:///{tmp / 'source.sqlite'}",
                        recovery_state=f"sqlite:///{tmp / 'recovery.sqlite'}")
        p.primary, p.standby = primary, standby
        p.start()
        try:
            p.protect(*USERS)
            p.wait_synced(USERS)
            yield p
        finally:
            p.stop()
    finally:
        for server in reversed(servers):
            server.cleanup()


def run_verify(pair, settle_timeout: float = 20.0, token: str = ADMIN_TOKEN, **body) -> dict:
    with httpx.Client(base_url=pair.source.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        r = c.post("/api/v1/verify", json=dict(body, settle_timeout=settle_timeout))
        assert r.status_code == 202, r.text
        job = r.json()["job"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            report = c.get(f"/api/v1/verify/{job}").json()
            if report["state"] != "running":
                assert report["job"] == job
                return report
            time.sleep(0.3)
    raise AssertionError("verify job did not end")


def uid_of(M, subject: str) -> bytes:
    typ, data = M.uid("SEARCH", None, "HEADER", "Subject", f'"{subject}"')
    assert typ == "OK" and data[0], f"no message {subject!r}"
    return data[0].split()[0]


def test_equal_copies_are_equal_without_reading_bodies(pair):
    report = run_verify(pair, addresses=["carol", "dave"])
    assert report["state"] == "done" and report["equal"] is True, report
    assert [m["address"] for m in report["mailboxes"]] == ["carol", "dave"]
    for m in report["mailboxes"]:
        assert m["verdict"] == "equal" and m["differences"] == [] and m["error"] is None, m
        assert m["folders_checked"] >= 2 and m["messages_checked"] == 10, m
        assert m["folders_listed"] == 0, f"the cheap pass should have proven every folder equal: {m}"


def test_equal_under_live_traffic(pair):
    """LMTP deliveries and flag changes on the primary while verify runs: no false difference."""
    stop = threading.Event()
    done = {"delivered": 0, "flagged": 0}

    def traffic():
        i = 200
        while not stop.is_set():
            pair.primary.deliver("alice", message(i, "alice"), folder="Lists" if i % 3 == 0 else None)
            done["delivered"] += 1
            M = pair.primary.imap("alice")
            try:
                M.select("INBOX")
                M.uid("STORE", uid_of(M, f"message {i % 6} for alice"), "+FLAGS" if (i // 6) % 2 else "-FLAGS",
                      "(\\Flagged $Work)")
                done["flagged"] += 1
            finally:
                M.logout()
            i += 1
            time.sleep(0.1)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        report = run_verify(pair, addresses=["alice"], settle_timeout=60)
        assert t.is_alive(), "the traffic ended before the verify did"
    finally:
        stop.set()
        t.join(30)
    assert done["delivered"] >= 3 and done["flagged"] >= 3, done
    m = report["mailboxes"][0]
    assert report["equal"] is True and m["verdict"] == "equal", json.dumps(report, indent=1)
    # and the copies really are equal once the traffic has stopped
    pair.wait_synced(["alice"])
    after = run_verify(pair, addresses=["alice"])
    assert after["equal"] is True, after


def test_finds_what_was_changed_on_the_standby_behind_the_gateways_back(pair):
    S = pair.standby.imap("bob")
    S.select("INBOX")
    S.uid("STORE", uid_of(S, "message 1 for bob"), "+FLAGS", "(\\Deleted)")  # missing
    S.expunge()
    S.uid("STORE", uid_of(S, "message 2 for bob"), "+FLAGS", "($Altered)")  # flags
    uid = uid_of(S, "message 3 for bob")  # replaced by a copy with another internal date
    typ, data = S.uid("FETCH", uid, "(BODY.PEEK[])")
    body = data[0][1]
    S.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
    S.expunge()
    S.append("INBOX", None, imaplib.Time2Internaldate(time.mktime((2020, 1, 2, 3, 4, 5, 0, 0, 0))), body)
    S.append("INBOX", None, None, message(999, "bob"))  # extra
    assert S.rename("Lists", "Lists2")[0] == "OK"  # folder renamed
    S.logout()

    report = run_verify(pair, addresses=["bob"], settle_timeout=3)
    m = report["mailboxes"][0]
    assert report["equal"] is False and m["verdict"] == "different", json.dumps(report, indent=1)
    found = sorted((d["kind"], d["folder"], d.get("message_id")) for d in m["differences"])
    assert found == sorted([
        ("missing", "INBOX", "<1.bob@example.org>"),
        ("flags", "INBOX", "<2.bob@example.org>"),
        ("internal_date", "INBOX", "<3.bob@example.org>"),
        ("extra", "INBOX", "<999.bob@example.org>"),
        ("folder_missing", "Lists", None),
        ("folder_extra", "Lists2", None),
    ]), json.dumps(m["differences"], indent=1)
    by_kind = {d["kind"]: d for d in m["differences"]}
    assert "$Altered" in by_kind["flags"]["detail"]
    assert "2020-01-02" in by_kind["internal_date"]["detail"]
    assert by_kind["folder_missing"]["standby_folder"] == "Lists2"
    assert all(re.fullmatch(r"[0-9a-f]{64}", d["sha256"]) for d in m["differences"] if d["kind"] not in
               ("folder_missing", "folder_extra"))

    # the verdict is kept: mailbox detail and metrics
    with pair.source.api() as c:
        detail = c.get("/api/v1/mailboxes/bob").json()
        assert detail["verify"]["verdict"] == "different" and detail["verify"]["job"] == report["job"]
        assert detail["verify"]["kinds"]["missing"] == 1 and detail["verify"]["kinds"]["folder_extra"] == 1
        metrics = c.get("/metrics").text
    assert 'mailrepl_verify_equal{mailbox="bob",server="primary"} 0.0' in metrics
    assert 'mailrepl_verify_differences{kind="extra",mailbox="bob",server="primary"} 1.0' in metrics
    assert 'mailrepl_verify_last_timestamp_seconds{mailbox="bob",server="primary"}' in metrics


def _cli(pair, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "mailrepl", "verify", "--url", pair.source.url, "--token",
                           ADMIN_TOKEN, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_cli_exit_codes_and_json(pair):
    ok = _cli(pair, "carol", "--timeout", "3")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "carol: equal" in ok.stdout and "verify: 1/1 mailboxes" in ok.stdout

    S = pair.standby.imap("dave")
    S.select("Lists")
    S.uid("STORE", uid_of(S, "message 101 for dave"), "+FLAGS", "(\\Answered)")
    S.logout()
    bad = _cli(pair, "dave", "carol", "--json", "--timeout", "2")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    report = json.loads(bad.stdout)
    verdicts = {m["address"]: m["verdict"] for m in report["mailboxes"]}
    assert verdicts == {"dave": "different", "carol": "equal"} and report["equal"] is False
    (diff,) = report["mailboxes"][0]["differences"]
    assert diff["kind"] == "flags" and diff["folder"] == "Lists" and diff["message_id"] == "<101.dave@example.org>"

    plain = _cli(pair, "dave", "--timeout", "2")
    assert plain.returncode == 1 and "dave: DIFFERENT" in plain.stdout and "flags" in plain.stdout, plain.stdout

    err = _cli(pair, "--server", "nosuchserver")
    assert err.returncode == 2 and "nosuchserver" in err.stdout + err.stderr, err.stdout + err.stderr
    unprotected = _cli(pair, "nobody", "--timeout", "1")
    assert unprotected.returncode == 2, unprotected.stdout + unprotected.stderr
    assert "not protected" in unprotected.stdout


def test_repair_then_verify_again_is_equal(pair):
    """dave: a flag altered (previous test), a message deleted, a copy with another internal date,
    an extra message and a duplicate, all on the standby; bob: the differences of the test above,
    a renamed folder among them. ``repair`` hands them to replication; verified again, dave is
    equal; bob's renamed folder is found by the recovery gateway's standby check, which has the
    original brought back, and the renamed copy stays an extra folder (repair removes no folder)."""
    S = pair.standby.imap("dave")
    S.select("INBOX")
    S.uid("STORE", uid_of(S, "message 1 for dave"), "+FLAGS", "(\\Deleted)")
    S.expunge()
    uid = uid_of(S, "message 2 for dave")
    body = S.uid("FETCH", uid, "(BODY.PEEK[])")[1][0][1]
    S.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
    S.expunge()
    S.append("INBOX", None, imaplib.Time2Internaldate(time.mktime((2021, 5, 6, 7, 8, 9, 0, 0, 0))), body)
    S.append("INBOX", None, None, message(998, "dave"))
    typ, data = S.uid("FETCH", uid_of(S, "message 4 for dave"), "(INTERNALDATE BODY.PEEK[])")
    date = re.search(rb'INTERNALDATE ("[^"]+")', data[0][0]).group(1).decode()
    S.append("INBOX", None, date, data[0][1])
    S.logout()

    report = run_verify(pair, addresses=["dave", "bob"], settle_timeout=3, repair=True)
    dave, bob = report["mailboxes"]
    assert report["repair"] is True and dave["verdict"] == "different", json.dumps(report, indent=1)
    assert sorted(d["kind"] for d in dave["differences"]) == [
        "duplicate", "extra", "flags", "internal_date", "missing"], json.dumps(dave, indent=1)
    assert dave["repair"] == {"resynced_folders": ["INBOX", "Lists"], "removals_queued": 3, "not_repaired": []}
    assert bob["repair"]["resynced_folders"] == ["INBOX"] and bob["repair"]["removals_queued"] == 2
    assert sorted(n["kind"] for n in bob["repair"]["not_repaired"]) == ["folder_extra", "folder_missing"]

    pair.wait_synced(["dave", "bob"])
    # bob's "Lists" is gone from the standby (renamed there): the recovery gateway's standby check
    # finds that at the replay the repair started and has the mailbox resynced, which brings
    # "Lists" back; the renamed copy stays, an extra folder that neither touches
    deadline = time.monotonic() + 60
    while not _standby_has_folder(pair, "bob", "Lists"):
        assert time.monotonic() < deadline, "bob's Lists never came back on the standby"
        time.sleep(0.5)
    pair.wait_synced(["bob"])
    again = run_verify(pair, addresses=["dave", "bob"], settle_timeout=20)
    dave, bob = again["mailboxes"]
    assert dave["verdict"] == "equal", json.dumps(dave, indent=1)
    assert [(d["kind"], d["folder"]) for d in bob["differences"]] == [("folder_extra", "Lists2")], json.dumps(bob, indent=1)
    assert_same_mailbox(pair.primary, pair.standby, "dave")


def _standby_has_folder(pair, user: str, name: str) -> bool:
    S = pair.standby.imap(user)
    try:
        typ, data = S.list()
        return typ == "OK" and any(line.decode().endswith(f' "{name}"') or line.decode().endswith(f" {name}")
                                   for line in data if line)
    finally:
        S.logout()


def test_viewer_cannot_start_a_verify(pair):
    with pair.source.api() as c:
        r = c.post("/api/v1/tokens", json={"name": "verify-viewer", "role": "viewer"})
        assert r.status_code == 201, r.text
        viewer = r.json()["token"]
    headers = {"Authorization": f"Bearer {viewer}"}
    r = httpx.post(pair.source.url + "/api/v1/verify", json={"addresses": ["carol"]}, headers=headers, timeout=30)
    assert r.status_code == 403, r.text
    report = run_verify(pair, addresses=["carol"])  # an operator may; the viewer may read the job
    r = httpx.get(pair.source.url + f"/api/v1/verify/{report['job']}", headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["equal"] is True
    r = httpx.post(pair.source.url + "/api/v1/verify", json={}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                   timeout=30)
    assert r.status_code == 422
