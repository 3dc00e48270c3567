"""Cutover, DR capture, failback and re-basing in one process against in-memory servers.

The id maps in both directions are the delicate part: messages the standby had at cutover go
back under the source's own ids, messages born at DR get new ids at re-base, and afterwards
forward replication must address every message correctly (flags, expunges, moves) without
re-seeding. Real-server runs of the same story are in tests/e2e/test_cutover_failback.py.
"""
from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mailrepl.gateway.failback import FailbackPuller
from mailrepl.gateway.shipper import Shipper
from mailrepl.recovery.api import ingest_router
from mailrepl.recovery.cutover import CutoverService
from mailrepl.recovery.failback import FailbackService
from mailrepl.recovery.site import KeyedLocks
from mailrepl.recovery.site_api import site_ingest_router
from mailrepl.shared.content.blobstore import BlobStore
from mailrepl.shared.content.bodies import BodyStore
from mailrepl.shared.engines.capture import CaptureEngine
from mailrepl.shared.store.models import IdMapEntry, Mailbox, Replica, SiteTransition
from tests.unit.memory_server import MemoryAdapter
from tests.unit.test_pipeline_memory import TOKEN, Pipeline, snapshot, source_access


def body(i: int, tag: str = "m") -> bytes:
    return f"Subject: {tag} {i}\r\nMessage-ID: <{tag}{i}@x>\r\n\r\n{tag} body {i}\r\n".encode()


class Sites(Pipeline):
    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.locks = KeyedLocks()
        self.dr_capture = CaptureEngine(self.dst)
        self.cutovers = CutoverService(self.dst, self.replay, lambda rep: self.standby.open(rep.address), self.locks)
        self.failbacks = FailbackService(self.dst, self.dr_capture, lambda rep: self.standby.open(rep.address),
                                         self.locks, "dr")
        app = FastAPI()
        access = source_access(MemoryAdapter("standby", self.standby))
        app.include_router(ingest_router(self.receiver, access, 1 << 30))
        app.include_router(site_ingest_router(access, "dr", self.failbacks))
        self.client = TestClient(app, base_url="http://recovery")
        self.shipper = Shipper(self.src, "hq", self.client, token=TOKEN, max_changes=7)
        self.shipper.builder.where = Mailbox.site_state == "replicating"
        self.puller = FailbackPuller(self.src, {"primary": MemoryAdapter("primary", self.primary)}, self.client,
                                   token=TOKEN, source_id="hq", bodies=BodyStore(self.src, BlobStore(tmp_path / "fb")))

    def rid(self) -> int:
        with self.dst.read() as s:
            return s.scalar(select(Replica.id).where(Replica.address == "alice"))

    def state(self) -> str:
        with self.dst.read() as s:
            return s.get(Replica, self.rid()).site_state

    def dr_cycle(self):
        with self.dst.read() as s:
            mbx = s.scalar(select(Mailbox.id).where(Mailbox.address == "alice"))
        self.dr_capture.cycle(mbx, self.standby.open("alice"))

    def sync(self):
        if self.mailbox().site_state == "replicating":
            super().sync()

    def fail_back(self):
        self.failbacks.failback([self.rid()])
        for _ in range(3):
            self.puller.step()
            self.dr_cycle()
        self.failbacks.confirm(self.rid())
        for _ in range(3):
            self.puller.step()
        assert self.state() == "replicating"


def uid(server, folder: str, subject: bytes) -> int:
    return next(m.uid for m in server.box("alice")[folder].msgs.values() if subject in m.body)


def test_round_trip_keeps_ids_straight_in_both_directions(tmp_path):
    p = Sites(tmp_path)
    for i in range(6):
        p.primary.deliver("alice", body(i), flags={"\\Seen"} if i % 2 else set())
    p.primary.deliver("alice", body(1, "work"), folder="Work")
    p.sync()
    p.sync()
    p.assert_equal()

    res = p.cutovers.cutover([p.rid()])
    assert res[0]["state"] == "active-at-dr" and res[0]["status"] == "ok"
    assert p.cutovers.cutover([p.rid()])[0]["note"] == "already active at DR"  # idempotent
    p.puller.step()
    assert p.mailbox().site_state == "active-at-dr" and p.mailbox().active_site == "dr"

    # users on the standby
    sb = p.standby
    sb.deliver("alice", body(1, "dr"))
    sb.deliver("alice", body(2, "dr"), folder="New")
    sb.set_flags("alice", "INBOX", uid(sb, "INBOX", b"m body 0"), {"\\Flagged"})
    sb.expunge("alice", "INBOX", [uid(sb, "INBOX", b"m body 1")])
    sb.move("alice", "INBOX", uid(sb, "INBOX", b"m body 2"), "Work")
    p.dr_cycle()
    # messages reach the primary after the cutover point; one is even captured by a cycle that
    # was under way when the source learned of the cutover
    p.primary.deliver("alice", body(2, "late"))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    p.primary.deliver("alice", body(1, "late"))
    # fencing: nothing the source might still send is replayed into the standby
    assert not any(b"late" in m.body for f in sb.box("alice").values() for m in f.msgs.values())

    p.fail_back()
    with p.dst.read() as s:
        report = s.get(Replica, p.rid()).failback_report
        history = [(t.before, t.after) for t in s.scalars(select(SiteTransition).order_by(SiteTransition.id))]
    assert len(json.loads(report)["late"]) == 2
    assert history == [("replicating", "cutting-over"), ("cutting-over", "active-at-dr"),
                       ("active-at-dr", "failing-back"), ("failing-back", "switching-back"),
                       ("switching-back", "replicating")]
    # the late message is on the primary only until forward replication brings it over
    p.sync()
    p.assert_equal()

    # forward replication addresses every kind of message correctly afterwards
    pr = p.primary
    pr.set_flags("alice", "INBOX", uid(pr, "INBOX", b"dr body 1"), {"\\Answered"})  # born at DR
    pr.set_flags("alice", "Work", uid(pr, "Work", b"m body 2"), {"\\Seen", "$Moved"})  # moved at DR
    pr.expunge("alice", "INBOX", [uid(pr, "INBOX", b"m body 3")])  # known since before
    pr.move("alice", "New", uid(pr, "New", b"dr body 2"), "INBOX")
    pr.set_flags("alice", "INBOX", uid(pr, "INBOX", b"late body 1"), {"\\Flagged"})  # late, now replicated
    p.sync()
    p.sync()
    p.assert_equal()
    counts = {k: sum(c.values()) for k, c in snapshot(pr, "alice").items()}
    assert counts == {"INBOX": 7, "Work": 2, "New": 0}


def test_only_changes_travel_back(tmp_path):
    p = Sites(tmp_path)
    for i in range(40):
        p.primary.deliver("alice", body(i))
    p.sync()
    p.sync()
    p.cutovers.cutover([p.rid()])
    p.standby.deliver("alice", body(1, "dr"))
    p.dr_cycle()
    p.fail_back()
    assert p.puller.wire_bytes < 2000  # one message and its change, not the 40 of the mailbox
    p.assert_equal()


def test_recreated_primary_is_resynchronised_in_full(tmp_path):
    p = Sites(tmp_path)
    for i in range(5):
        p.primary.deliver("alice", body(i))
    p.primary.deliver("alice", body(9, "work"), folder="Work")
    p.sync()
    p.sync()
    p.cutovers.cutover([p.rid()])
    p.standby.deliver("alice", body(1, "dr"))
    p.dr_cycle()
    # the primary comes back with a recreated INBOX (new UIDVALIDITY) and Work gone
    p.primary.reset_uidvalidity("alice", "INBOX")
    p.primary.expunge("alice", "INBOX", list(p.primary.box("alice")["INBOX"].msgs))
    del p.primary.box("alice")["Work"]
    p.fail_back()
    p.assert_equal()
    p.primary.deliver("alice", body(2, "after"))
    p.sync()
    p.sync()
    p.assert_equal()
    with p.src.read() as s:  # the reverse replica is gone, the forward one continues
        assert s.scalar(select(func.count()).select_from(Replica)) == 0
    with p.dst.read() as s:
        assert s.scalar(select(func.count()).select_from(IdMapEntry)) == 8


def test_admin_api_answers_409_for_illegal_steps_and_shows_the_history(tmp_path):
    from mailrepl.recovery.api import admin_router
    from mailrepl.recovery.autofailover import FailoverMonitor
    from mailrepl.recovery.site_api import redirect_router, site_admin_router
    from mailrepl.recovery.redirect import Redirect

    p = Sites(tmp_path)
    p.primary.deliver("alice", body(1))
    p.sync()
    p.sync()
    monitor = FailoverMonitor(p.dst, {}, cutover_server=lambda name: [], confirm_caught_up=None, auto=False,
                              outage_seconds=1, check_interval=1)
    from mailrepl.shared.runtime.authz import Authorizer
    from mailrepl.shared.runtime.tokens import admin_resolver

    app = FastAPI()
    auth = Authorizer(admin_resolver(TOKEN, None))  # the config token: role admin
    app.include_router(admin_router(p.dst, auth))
    app.include_router(site_admin_router(p.dst, auth, p.cutovers, p.failbacks, monitor, False))
    app.include_router(redirect_router(Redirect(p.dst, {}, {}, lambda x: "standby"), "k"))
    c = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    r = c.post("/api/v1/failback", json={"addresses": ["alice"]})
    assert r.status_code == 409 and "cut over first" in r.json()["detail"]
    assert c.post("/api/v1/cutover", json={"addresses": ["nobody"]}).status_code == 404
    assert c.post("/api/v1/cutover", json={}).status_code == 422
    r = c.post("/api/v1/cutover", json={"server": "primary", "all": True})
    assert r.status_code == 200 and r.json()["results"][0]["state"] == "active-at-dr"
    detail = c.get("/api/v1/mailboxes/alice").json()
    assert detail["site_state"] == "active-at-dr" and detail["active_site"] == "dr"
    assert [t["after"] for t in detail["transitions"]] == ["cutting-over", "active-at-dr"]
    assert detail["site_since"] is not None
    r = c.post("/api/v1/failback", json={"addresses": ["alice"], "confirm": True})
    assert r.status_code == 200 and r.json()["results"][0]["state"] == "switching-back"
    assert c.post("/api/v1/cutover", json={"addresses": ["alice"]}).status_code == 409
    assert c.get("/api/v1/failover").json() == {"auto": False, "servers": [], "automatic_actions": []}
    # the redirect needs nginx's key
    assert c.get("/auth", headers={"Auth-User": "alice"}).headers["Auth-Status"].startswith("Temporary")


def test_failback_waits_for_a_primary_that_is_still_down(tmp_path):
    import pytest
    from mailrepl.shared.errors import MailreplError

    p = Sites(tmp_path)
    for i in range(3):
        p.primary.deliver("alice", body(i))
    p.sync()
    p.sync()
    p.cutovers.cutover([p.rid()])
    p.standby.deliver("alice", body(1, "dr"))
    p.dr_cycle()
    p.primary.down = True
    p.failbacks.failback([p.rid()])
    with pytest.raises(MailreplError, match="primary/alice"):
        p.puller.step()  # reported, nothing lost, nothing half done
    assert p.state() == "failing-back"
    p.primary.down = False
    p.fail_back()
    p.assert_equal()


def test_folder_deleted_at_dr_keeps_the_mail_that_reached_the_primary_late(tmp_path):
    p = Sites(tmp_path)
    p.primary.deliver("alice", body(0))
    for i in range(3):
        p.primary.deliver("alice", body(i, "project"), folder="Projects")
    p.sync()
    p.sync()
    p.assert_equal()
    p.cutovers.cutover([p.rid()])
    p.puller.step()
    p.standby.delete_folder("alice", "Projects")  # the user at DR
    p.dr_cycle()
    # late mail to the folder on the primary, one of them captured by a cycle under way
    p.primary.deliver("alice", body(1, "late"), folder="Projects")
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    p.primary.deliver("alice", body(2, "late"), folder="Projects")

    p.fail_back()
    # the folder stays on the primary with the late mail only; what the standby had is gone
    assert sorted(m.body for m in p.primary.box("alice")["Projects"].msgs.values()) == [body(1, "late"), body(2, "late")]
    with p.dst.read() as s:
        report = json.loads(s.get(Replica, p.rid()).failback_report)
    assert report["kept_folders"] == [dict(folder="Projects", messages=2, reason=(
        "deleted at DR; held mail delivered to the primary after the cutover"))]
    assert sorted((x["folder"], x["uid"]) for x in report["late"]) == [
        ("Projects", uid(p.primary, "Projects", b"late body 1")), ("Projects", uid(p.primary, "Projects", b"late body 2"))]
    assert report["resync"] is False
    # forward replication brings the folder and its late mail back to the standby
    p.sync()
    p.sync()
    p.assert_equal()
    assert sorted(m.body for m in p.standby.box("alice")["Projects"].msgs.values()) == [body(1, "late"), body(2, "late")]
