"""Verify through both real gateways (served in this process, ``tests.unit.test_cli.Site``) over
in-memory mail servers: the job and its report, the cheap pass, differences, the in-flight
verdict, the CLI's exit codes and usage errors, and the ingest route's checks."""
from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx
import pytest

from mailrepl.shared.errors import MailreplError, TransportError
from mailrepl.shared.protocol.peer_client import PeerClient
from tests.unit.test_cli import TOKEN, Site, cli

INGEST = "ingest-token-Kl3Zx6Cv9Bn2Mq5We8Rt1"


@pytest.fixture
def site(tmp_path, monkeypatch):
    s = Site(tmp_path, monkeypatch)
    try:
        with s.api() as c:
            for user in ("alice", "bob"):
                assert c.put(f"/api/v1/mailboxes/{user}/protection", json={"enabled": True}).status_code == 200
        wait_synced(s, ["alice", "bob"])
        yield s
    finally:
        s.stop()


def wait_synced(site: Site, users, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = site.statuses()
        if all(st[u]["phase"] == "replicating" and st[u]["last_captured_seq"] > 0
               and st[u]["last_applied_seq"] == st[u]["last_captured_seq"] for u in users):
            return
        time.sleep(0.1)
    raise AssertionError(f"not in sync: {site.statuses()}")


def verify(site: Site, **body) -> dict:
    with site.api() as c:
        r = c.post("/api/v1/verify", json=body)
        assert r.status_code == 202, r.text
        job = r.json()["job"]
        for _ in range(600):
            report = c.get(f"/api/v1/verify/{job}").json()
            if report["state"] != "running":
                return report
            time.sleep(0.1)
    raise AssertionError("verify job did not end")


def test_equal_copies_and_the_report_shape(site):
    report = verify(site, server="primary", settle_timeout=5)
    assert set(report) >= {"job", "state", "equal", "mailboxes", "progress"}
    assert report["state"] == "done" and report["equal"] is True
    assert [m["address"] for m in report["mailboxes"]] == ["alice", "bob"]
    alice = report["mailboxes"][0]
    assert alice["verdict"] == "equal" and alice["error"] is None and alice["differences"] == []
    assert alice["folders_checked"] == 2 and alice["messages_checked"] == 13
    assert alice["folders_listed"] == 0  # the cheap pass proved both folders equal
    assert report["progress"]["mailboxes_done"] == report["progress"]["mailboxes_total"] == 2


@pytest.mark.parametrize("retryable", [True, False])
def test_a_retryable_failure_is_checked_again_and_another_is_an_error(site, monkeypatch, retryable):
    """The recovery gateway not answering in time (a link just back) does not make the verdict an
    error: the mailbox is checked again after the back-off. Any other failure is reported."""
    calls: list[str] = []
    listing = PeerClient.verify

    def flaky(self, server, address, folders=()):
        calls.append(address)
        if address == "alice" and calls.count("alice") == 1:
            raise TransportError("the recovery gateway did not answer in time") if retryable else \
                MailreplError("the recovery gateway refused the listing")
        return listing(self, server, address, folders)

    monkeypatch.setattr(PeerClient, "verify", flaky)
    report = verify(site, addresses=["alice"], settle_timeout=20)
    alice = report["mailboxes"][0]
    if retryable:
        assert alice["verdict"] == "equal" and alice["error"] is None and report["equal"] is True
        assert calls.count("alice") >= 2 and alice["messages_checked"] == 13
    else:
        assert alice["verdict"] == "error" and "refused the listing" in alice["error"]
        assert calls.count("alice") == 1


def test_differences_on_the_standby(site):
    standby = site.standby
    inbox = standby.box("alice")["INBOX"]
    uids = sorted(inbox.msgs)
    standby.expunge("alice", "INBOX", [uids[0]])  # missing
    standby.set_flags("alice", "INBOX", uids[1], {"$Changed"})  # flags
    standby.deliver("alice", b"Subject: extra\r\nMessage-ID: <x@y>\r\n\r\nnot on the primary\r\n")  # extra
    session = standby.open("alice")
    session.rename_folder("Lists/dev", "Lists/old")  # renamed
    session.close()
    report = verify(site, addresses=["alice"], settle_timeout=5)
    alice = report["mailboxes"][0]
    assert report["equal"] is False and alice["verdict"] == "different", json.dumps(report, indent=1)
    assert sorted((d["kind"], d["folder"]) for d in alice["differences"]) == [
        ("extra", "INBOX"), ("flags", "INBOX"), ("folder_extra", "Lists/old"), ("folder_missing", "Lists/dev"),
        ("missing", "INBOX")]
    extra = next(d for d in alice["differences"] if d["kind"] == "extra")
    assert extra["message_id"] == "<x@y>"
    missing = next(d for d in alice["differences"] if d["kind"] == "folder_missing")
    assert missing["standby_folder"] == "Lists/old"  # the view knows the renamed folder by its id
    assert alice["rounds"] == 3  # found again twice, the queues settled in between

    with site.api() as c:
        detail = c.get("/api/v1/mailboxes/alice").json()["verify"]
        metrics = c.get("/metrics").text
    assert detail["verdict"] == "different" and detail["kinds"]["missing"] == 1 and len(detail["differences"]) == 5
    assert 'mailrepl_verify_equal{mailbox="alice",server="primary"} 0.0' in metrics
    assert 'mailrepl_verify_differences{kind="flags",mailbox="alice",server="primary"} 1.0' in metrics

    # never settled within the bound: in flight, with what was seen, and the CLI says 1
    report = verify(site, addresses=["alice"], settle_timeout=0.001)
    assert report["mailboxes"][0]["verdict"] == "in_flight" and report["equal"] is False
    assert len(report["mailboxes"][0]["differences"]) == 5
    r = site.cli("verify", "alice", "bob", "--timeout", "5")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "alice: DIFFERENT" in r.stdout and "bob: equal" in r.stdout and "folder_missing" in r.stdout
    assert "verify: 2/2 mailboxes" in r.stdout


def test_cli(site):
    r = site.cli("verify", "--server", "primary", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["equal"] is True and len(report["mailboxes"]) == 2
    r = site.cli("verify", "carol")  # not protected
    assert r.returncode == 2 and "not protected" in r.stdout, r.stdout
    r = site.cli("verify", "alice", "--server", "nowhere")
    assert r.returncode == 2 and "nowhere" in r.stdout, r.stdout + r.stderr
    for args, why in ((["verify"], "ADDRESS"), (["verify", "alice", "--all"], "not both"),
                      (["verify", "alice", "--timeout", "0"], "> 0")):
        r = cli(*args, "--url", site.url, "--token", TOKEN)
        assert r.returncode == 2 and why in r.stderr, (args, r.stderr)
    r = cli("verify", "alice", "--url", site.url, "--token", "wrong-token-wrong-token-x")
    assert r.returncode == 2 and "admin token" in r.stdout, r.stdout + r.stderr


def test_the_ingest_route_checks_the_source(site):
    def post(body, token=INGEST):
        return httpx.post(site.recovery_url + "/api/v1/ingest/verify", json=body, timeout=10,
                          headers={"Authorization": f"Bearer {token}"})

    ok = post({"source": "hq", "server": "primary", "address": "alice", "folders": ["INBOX"]})
    assert ok.status_code == 200, ok.text
    listed = {f["name"]: f for f in ok.json()["folders"]}
    assert len(listed["INBOX"]["messages_listed"]) == 12 and listed["Lists/dev"]["messages_listed"] is None
    assert all(e["mid"] is not None for e in listed["INBOX"]["messages_listed"])
    assert post({"source": "hq", "server": "primary", "address": "alice"}, token=TOKEN).status_code == 401
    assert post({"source": "other", "server": "primary", "address": "alice"}).status_code == 403
    assert post({"source": "hq", "server": "elsewhere", "address": "alice"}).status_code == 403
    assert post({"source": "hq", "server": "primary", "address": "carol"}).status_code == 404
    assert post({"source": "hq", "server": "primary", "address": "alice", "more": 1}).status_code == 422
    assert post({"source": "hq", "server": "primary", "address": "alice", "folders": ["a\nb"]}).status_code == 422
    r = httpx.post(site.recovery_url + "/api/v1/ingest/verify-remove", timeout=10,
                   headers={"Authorization": f"Bearer {INGEST}"},
                   json={"source": "hq", "server": "primary", "address": "alice",
                         "folders": [{"folder": "INBOX", "uidvalidity": 1, "messages": [[1, "nothex"]]}]})
    assert r.status_code == 422


def test_repair_then_equal(site):
    """Every message difference handed to replication by ``repair``; verified again: equal."""
    standby = site.standby
    inbox = standby.box("alice")["INBOX"]
    uids = sorted(inbox.msgs)
    standby.expunge("alice", "INBOX", [uids[0]])  # missing
    standby.set_flags("alice", "INBOX", uids[1], {"$Changed"})  # flags
    third = inbox.msgs[uids[2]]
    standby.expunge("alice", "INBOX", [uids[2]])  # replaced by a copy with another internal date
    standby.deliver("alice", third.body, flags=third.flags, date=third.date - timedelta(days=3))
    fourth = inbox.msgs[uids[3]]
    standby.deliver("alice", fourth.body, flags=fourth.flags, date=fourth.date)  # duplicate
    standby.deliver("alice", b"Subject: extra\r\n\r\nnot on the primary\r\n")  # extra
    report = verify(site, addresses=["alice"], settle_timeout=5, repair=True)
    alice = report["mailboxes"][0]
    assert sorted(d["kind"] for d in alice["differences"]) == [
        "duplicate", "extra", "flags", "internal_date", "missing"], json.dumps(alice, indent=1)
    assert alice["repair"] == {"resynced_folders": ["INBOX"], "removals_queued": 3, "not_repaired": []}
    # right away: the resync is in flight, and verify waits for it
    again = verify(site, addresses=["alice"], settle_timeout=20)
    assert again["equal"] is True, json.dumps(again, indent=1)
    primary = sorted((m.body, frozenset(m.flags), m.date) for m in site.primary.box("alice")["INBOX"].msgs.values())
    copy = sorted((m.body, frozenset(m.flags), m.date) for m in standby.box("alice")["INBOX"].msgs.values())
    assert copy == primary
