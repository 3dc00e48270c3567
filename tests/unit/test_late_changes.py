"""Changes that reach the primary after the cutover point (expunges, flag changes, moves,
folders) are kept and reported at failback, and the standby ends equal to the primary.

In one process against in-memory servers; the real-server run of the same story is
``test_mail_delivered_to_the_primary_after_cutover_is_kept`` in tests/e2e/test_cutover_failback.py.
"""
from __future__ import annotations

import json

import pytest

from mailrepl.shared.store.models import Replica
from tests.unit.test_failback_memory import Sites, body, uid
from tests.unit.test_pipeline_memory import snapshot


def report_of(p: Sites) -> dict:
    with p.dst.read() as s:
        return json.loads(s.get(Replica, p.rid()).failback_report)


def test_late_expunges_flags_moves_and_folders_are_kept_and_reported(tmp_path):
    p = Sites(tmp_path)
    pr, sb = p.primary, p.standby
    for i in range(8):
        pr.deliver("alice", body(i))
    pr.deliver("alice", body(1, "work"), folder="Work")
    pr.deliver("alice", body(1, "old"), folder="Old")
    p.sync()
    p.sync()
    p.assert_equal()
    p.cutovers.cutover([p.rid()])

    # captured by a cycle under way when the cutover happened: in the copy queue, never shipped
    pr.set_flags("alice", "INBOX", uid(pr, "INBOX", b"m body 6"), {"\\Flagged"})
    pr.expunge("alice", "INBOX", [uid(pr, "INBOX", b"m body 7")])
    pr.open("alice").delete_folder("Old")
    p.capture.cycle(p.mailbox().id, pr.open("alice"))
    p.puller.step()  # the source learns the cutover and stops capturing
    assert p.mailbox().site_state == "active-at-dr"

    # users at DR
    sb.set_flags("alice", "INBOX", uid(sb, "INBOX", b"m body 0"), {"\\Flagged"})
    sb.move("alice", "INBOX", uid(sb, "INBOX", b"m body 1"), "Work")
    sb.expunge("alice", "INBOX", [uid(sb, "INBOX", b"m body 2")])
    sb.deliver("alice", body(1, "dr"))
    p.dr_cycle()

    # the primary, still reachable by something, changes after the source stopped capturing
    pr.set_flags("alice", "INBOX", uid(pr, "INBOX", b"m body 3"), {"\\Answered"})  # late flag change
    pr.expunge("alice", "INBOX", [uid(pr, "INBOX", b"m body 4")])  # late expunge
    pr.move("alice", "INBOX", uid(pr, "INBOX", b"m body 5"), "Work")  # late move
    pr.set_flags("alice", "INBOX", uid(pr, "INBOX", b"m body 0"), {"\\Seen", "$Late"})  # DR changed it too
    pr.expunge("alice", "INBOX", [uid(pr, "INBOX", b"m body 1")])  # DR moved it
    pr.open("alice").create_folder("LateEmpty")
    # (a folder gone from the primary after the source stopped is a wiped copy: full resync)

    p.fail_back()
    report = report_of(p)
    p.sync()
    p.sync()
    p.assert_equal()

    box = snapshot(pr, "alice")
    assert set(box) == {"INBOX", "Work", "LateEmpty"}
    inbox = {m.body.split(b"\r\n")[0]: m.flags for m in pr.box("alice")["INBOX"].msgs.values()}
    assert inbox[b"Subject: m 3"] == {"\\Answered"}  # late flag change kept
    assert inbox[b"Subject: m 0"] == {"\\Flagged"}  # changed on both sides: the standby's change won
    assert inbox[b"Subject: m 6"] == {"\\Flagged"}  # from the copy queue
    assert b"Subject: m 4" not in inbox and b"Subject: m 7" not in inbox  # late expunges kept
    assert b"Subject: dr 1" in inbox
    work = {m.body.split(b"\r\n")[0] for m in pr.box("alice")["Work"].msgs.values()}
    assert work == {b"Subject: work 1", b"Subject: m 5"}  # late move kept; m 1 expunged (expunge wins)

    expunged = sorted(x["folder"] for x in report["late_expunged"])
    assert expunged == ["INBOX", "INBOX", "INBOX"], report["late_expunged"]  # m 4, m 7, m 1
    assert [x for x in report["late_expunged"] if "conflict" in x] == [
        {"folder": "INBOX", "conflict": "changed at DR as well; the expunge is kept"}]
    changed = sorted((x["folder"], x["flags"]) for x in report["late_changed"])
    assert changed == [("INBOX", "\\Answered"), ("INBOX", "\\Flagged"), ("Work", "")], report["late_changed"]
    assert report["late_folders_created"] == ["LateEmpty"]
    assert report["late_folders_deleted"] == ["Old"]
    assert report["late"] == []  # no late deliveries in this story


def test_nothing_late_means_nothing_reported_and_no_extra_work(tmp_path):
    p = Sites(tmp_path)
    for i in range(4):
        p.primary.deliver("alice", body(i))
    p.sync()
    p.sync()
    p.cutovers.cutover([p.rid()])
    p.puller.step()
    sb = p.standby
    sb.set_flags("alice", "INBOX", uid(sb, "INBOX", b"m body 0"), {"\\Flagged"})
    sb.move("alice", "INBOX", uid(sb, "INBOX", b"m body 1"), "Work")
    p.dr_cycle()
    p.fail_back()
    report = report_of(p)
    assert all(report[k] == [] for k in ("late", "late_expunged", "late_changed", "late_folders_created",
                                         "late_folders_deleted", "conflicts")), report
    p.sync()
    p.assert_equal()


def test_a_partly_wiped_primary_is_resynchronised_without_duplicates(tmp_path):
    """A folder gone from the primary means its copy was wiped: full resync from the standby. The
    folders still intact keep their messages (claimed, not written again); what users deleted or
    moved at DR goes from them too; late mail stays."""
    p = Sites(tmp_path)
    pr, sb = p.primary, p.standby
    for i in range(4):
        pr.deliver("alice", body(i))
    pr.deliver("alice", body(1, "old"), folder="Old")
    p.sync()
    p.sync()
    p.cutovers.cutover([p.rid()])
    p.puller.step()
    sb.deliver("alice", body(1, "dr"))
    sb.expunge("alice", "INBOX", [uid(sb, "INBOX", b"m body 0")])
    sb.move("alice", "INBOX", uid(sb, "INBOX", b"m body 1"), "Old")
    p.dr_cycle()
    pr.deliver("alice", body(1, "late"))
    pr.open("alice").delete_folder("Old")  # lost on the primary
    kept = {m.uid for m in pr.box("alice")["INBOX"].msgs.values() if b"m body 2" in m.body or b"m body 3" in m.body}

    p.fail_back()
    report = report_of(p)
    assert report["resync"] is True and report["wiped_folders"] == ["Old"]
    assert len(report["late"]) == 1 and report["resync_removed"] == 2, report
    inbox = pr.box("alice")["INBOX"].msgs.values()
    assert sorted(m.body.split(b"\r\n")[0] for m in inbox) == [
        b"Subject: dr 1", b"Subject: late 1", b"Subject: m 2", b"Subject: m 3"]
    assert kept <= {m.uid for m in inbox}  # the intact messages were not written again
    p.sync()
    p.sync()
    p.assert_equal()
    assert {k: sum(c.values()) for k, c in snapshot(pr, "alice").items()} == {"INBOX": 4, "Old": 2}


def test_a_refused_re_base_keeps_the_late_changes_found_first(tmp_path):
    from mailrepl.shared.errors import IllegalTransition, MailreplError

    p = Sites(tmp_path)
    pr = p.primary
    for i in range(3):
        pr.deliver("alice", body(i))
    p.sync()
    p.sync()
    p.cutovers.cutover([p.rid()])
    p.puller.step()
    p.dr_cycle()
    pr.expunge("alice", "INBOX", [uid(pr, "INBOX", b"m body 0")])  # late
    real, refused = p.failbacks.rebase, []

    def refuse_once(*args, **kw):
        if not refused:
            refused.append(True)
            raise IllegalTransition("not yet")
        return real(*args, **kw)

    p.failbacks.rebase = refuse_once
    p.failbacks.failback([p.rid()])
    for _ in range(2):
        p.puller.step()
        p.dr_cycle()
    p.failbacks.confirm(p.rid())
    with pytest.raises(MailreplError, match="409"):
        p.puller.step()  # refused: the puller's loop logs it and tries again next round
    assert refused and p.state() == "switching-back"
    p.puller.step()
    assert p.state() == "replicating"
    assert report_of(p)["late_expunged"] == [{"folder": "INBOX"}]
    p.sync()
    p.assert_equal()
