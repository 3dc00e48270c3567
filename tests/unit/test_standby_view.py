"""The standby view: the DR capture state the replay keeps current, so that a cutover is a
state store operation. In one process against in-memory servers (the same story on real
Dovecot is in tests/e2e/test_cutover_failback.py, which checks no standby read at cutover)."""
from __future__ import annotations

import json

from sqlalchemy import delete, select

from mailrepl.recovery.cutover import CutoverService
from mailrepl.recovery.standby_view import StandbyView
from mailrepl.shared.errors import ServerUnavailable
from mailrepl.shared.store.models import CatalogEntry, FolderState, IdMapEntry, Mailbox, MidAlias, OutboxRow, Replica
from tests.unit.test_failback_memory import Sites, body, uid


def view_of(store, address: str = "alice"):
    """Everything the view holds, by folder name and UID, with the alias of each DR id (once a
    cutover switched the view on)."""
    with store.read() as s:
        mbx = s.scalar(select(Mailbox).where(Mailbox.address == address))
        folders = {f.id: f for f in s.scalars(select(FolderState).where(FolderState.mailbox_id == mbx.id))}
        alias = dict(s.execute(select(MidAlias.dr_mid, MidAlias.source_mid).where(MidAlias.mailbox_id == mbx.id)).all())
        cats = {(folders[c.folder_id].name, c.uid, c.flags, c.guid, c.sha256, c.size, alias.get(c.mid))
                for c in s.scalars(select(CatalogEntry).where(CatalogEntry.mailbox_id == mbx.id))}
        cursors = {f.name: (f.cursor, f.pending_uids, f.messages) for f in folders.values()}
        dormant = (mbx.protected, mbx.site_state, mbx.last_seq)
    return cats, cursors, dormant


def idmap_of(store, rid: int) -> set:
    with store.read() as s:
        return {(e.folder, e.uid, e.sha256, e.mid) for e in s.scalars(select(IdMapEntry).where(IdMapEntry.replica_id == rid))}


def seeded(tmp_path) -> Sites:
    p = Sites(tmp_path)
    for i in range(6):
        p.primary.deliver("alice", body(i), flags={"\\Seen"} if i % 2 else set())
    p.primary.deliver("alice", body(1, "work"), folder="Work")
    p.primary.deliver("alice", body(2, "work"), folder="Work")
    p.sync()
    p.sync()
    p.assert_equal()
    return p


def test_incremental_view_equals_a_view_built_from_nothing(tmp_path):
    p = seeded(tmp_path)
    rid, view = p.rid(), StandbyView(p.dst)
    assert view.refresh(rid, p.standby.open("alice")) == 2  # both folders read once
    assert view.refresh(rid, p.standby.open("alice")) == 0  # nothing moved: nothing read
    # every kind of change on the primary, replicated, then one incremental refresh
    pr = p.primary
    pr.set_flags("alice", "INBOX", uid(pr, "INBOX", b"m body 0"), {"\\Flagged"})
    pr.expunge("alice", "INBOX", [uid(pr, "INBOX", b"m body 1")])
    pr.move("alice", "INBOX", uid(pr, "INBOX", b"m body 2"), "Work")
    pr.deliver("alice", body(1, "new"), folder="Projects")
    pr.open("alice").rename_folder("Work", "Archive")
    pr.reset_uidvalidity("alice", "INBOX")
    p.sync()
    p.sync()
    p.assert_equal()
    view.refresh(rid, p.standby.open("alice"))
    incremental = view_of(p.dst)
    cats = incremental[0]
    # every standby message is catalogued, aliased to the id the source gave it
    assert {(f, u, sha) for f, u, _, _, sha, _, _ in cats} == {e[:3] for e in idmap_of(p.dst, rid)}
    assert {c[0] for c in cats} == {"INBOX", "Archive", "Projects"}
    assert all(c[6] is None for c in cats)  # aliases come with the cutover
    flagged = [c for c in cats if c[0] == "INBOX" and c[1] == uid(p.standby, "INBOX", b"m body 0")]
    assert flagged and flagged[0][2] == "\\Flagged"
    assert incremental[2] == (False, "replicating", 0)  # dormant: not captured, nothing to ship
    # the same view built from nothing
    with p.dst.tx() as s:
        s.execute(delete(Mailbox).where(Mailbox.address == "alice"))
        s.get(Replica, rid).view_seq = None
    view.refresh(rid, p.standby.open("alice"))
    assert view_of(p.dst) == incremental
    with p.dst.read() as s:
        rep = s.get(Replica, rid)
        assert rep.view_seq == rep.applied_seq


def test_cutover_with_a_current_view_needs_no_standby(tmp_path):
    p = seeded(tmp_path)
    rid = p.rid()
    StandbyView(p.dst).refresh(rid, p.standby.open("alice"))

    def unreachable(rep):
        raise ServerUnavailable("standby unreachable")

    res = CutoverService(p.dst, p.replay, unreachable, p.locks).cutover([rid])
    assert res[0]["status"] == "ok" and res[0]["state"] == "active-at-dr" and res[0]["standby_read"] is False, res
    cats, _, state = view_of(p.dst)
    assert state[:2] == (True, "active-at-dr")
    # each DR id is an alias of the source's id of the same message
    assert {(f, u, sha, src) for f, u, _, _, sha, _, src in cats} == idmap_of(p.dst, rid)
    # users on the standby: the first DR capture cycle sees exactly what they changed
    sb = p.standby
    sb.deliver("alice", body(1, "dr"))
    sb.set_flags("alice", "INBOX", uid(sb, "INBOX", b"m body 0"), {"\\Flagged"})
    sb.expunge("alice", "INBOX", [uid(sb, "INBOX", b"m body 1")])
    sb.move("alice", "Work", uid(sb, "Work", b"work body 1"), "INBOX")
    p.dr_cycle()
    with p.dst.read() as s:
        mbx = s.scalar(select(Mailbox).where(Mailbox.address == "alice"))
        kinds = [json.loads(r.change)["kind"] for r in s.scalars(
            select(OutboxRow).where(OutboxRow.mailbox_id == mbx.id).order_by(OutboxRow.seq))]
    assert sorted(kinds) == sorted(["msg.add", "msg.flags", "msg.expunge", "msg.move"]), kinds
    p.fail_back()
    p.assert_equal()


def test_cutover_reads_the_standby_where_the_view_is_behind(tmp_path):
    p = seeded(tmp_path)
    rid = p.rid()
    StandbyView(p.dst).refresh(rid, p.standby.open("alice"))
    # more arrives and is applied, but the view was not brought up to date after it
    p.primary.deliver("alice", body(9))
    p.sync()
    calls = []

    def down(rep):
        calls.append(rep.address)
        raise ServerUnavailable("standby unreachable")

    res = CutoverService(p.dst, p.replay, down, p.locks).cutover([rid])
    assert calls == ["alice"] and res[0]["status"] == "error" and res[0]["state"] == "cutting-over", res
    # with the standby back, asking again finishes the cutover and the view holds the new message
    res = CutoverService(p.dst, p.replay, lambda rep: p.standby.open(rep.address), p.locks).cutover([rid])
    assert res[0]["status"] == "ok" and res[0]["standby_read"] is True and res[0]["state"] == "active-at-dr", res
    cats = view_of(p.dst)[0]
    assert any(c[0] == "INBOX" and c[1] == uid(p.standby, "INBOX", b"m body 9") for c in cats)
    p.dr_cycle()
    with p.dst.read() as s:
        mbx = s.scalar(select(Mailbox).where(Mailbox.address == "alice"))
        assert s.scalar(select(OutboxRow.seq).where(OutboxRow.mailbox_id == mbx.id)) is None  # nothing new


def test_a_second_cutover_after_failback_starts_from_a_rebuilt_view(tmp_path):
    p = seeded(tmp_path)
    rid, view = p.rid(), StandbyView(p.dst)
    view.refresh(rid, p.standby.open("alice"))
    p.cutovers.cutover([rid])
    p.puller.step()
    p.standby.deliver("alice", body(1, "first outage"))
    p.dr_cycle()
    p.fail_back()
    with p.dst.read() as s:
        assert s.get(Replica, rid).view_seq is None  # dropped with the DR capture state at re-base
    p.primary.deliver("alice", body(2, "between"))
    p.sync()
    p.sync()
    p.assert_equal()
    assert view.refresh(rid, p.standby.open("alice")) == 2  # rebuilt from the standby as it is
    res = p.cutovers.cutover([rid])
    assert res[0]["status"] == "ok" and res[0]["standby_read"] is False, res
    cats, _, _ = view_of(p.dst)
    assert {(f, u, sha, src) for f, u, _, _, sha, _, src in cats} == idmap_of(p.dst, rid)
    p.puller.step()
    sb = p.standby
    sb.set_flags("alice", "INBOX", uid(sb, "INBOX", b"first outage body 1"), {"\\Answered"})
    sb.expunge("alice", "INBOX", [uid(sb, "INBOX", b"between body 2")])
    p.dr_cycle()
    p.fail_back()
    p.sync()
    p.assert_equal()
    flags = {m.body.split(b"\r\n")[0]: m.flags for m in p.primary.box("alice")["INBOX"].msgs.values()}
    assert flags[b"Subject: first outage 1"] == {"\\Answered"} and b"Subject: between 2" not in flags


def _replicate_one_pass(p: Sites, listing=()):
    """Capture, ship, and one replay pass; its report (what the pass wrote)."""
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    while p.shipper.ship_once():
        pass
    return p.replay.replay(p.rid(), p.standby.open("alice"), listing=listing)


class CountingSession:
    """A standby session that counts what it is asked: LISTs (all folders, one folder) and deltas."""

    def __init__(self, inner) -> None:
        self.inner, self.lists, self.infos, self.deltas = inner, 0, [], 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def list_folders(self):
        self.lists += 1
        return self.inner.list_folders()

    def folder_info(self, folder):
        self.infos.append(folder)
        return self.inner.folder_info(folder)

    def changes_since(self, folder, since):
        self.deltas += 1
        return self.inner.changes_since(folder, since)


def _rebuilt_from_nothing(p: Sites, rid: int, view: StandbyView):
    with p.dst.tx() as s:
        s.execute(delete(Mailbox).where(Mailbox.address == "alice"))
        s.get(Replica, rid).view_seq = None
    view.refresh(rid, p.standby.open("alice"))
    return view_of(p.dst)


def _without_guids(view):
    cats, cursors, dormant = view
    return {c[:3] + c[4:] for c in cats}, cursors, dormant


def test_a_pass_that_only_appended_is_catalogued_from_what_the_replayer_wrote(tmp_path):
    p = seeded(tmp_path)
    rid, view = p.rid(), StandbyView(p.dst)
    view.refresh(rid, p.standby.open("alice"))
    for i in range(6, 10):
        p.primary.deliver("alice", body(i), flags={"\\Seen", "$Label"} if i % 2 else set())
    report = _replicate_one_pass(p)
    assert report.appended == 4
    assert view.refresh(rid, p.standby.open("alice"), report.journal) == 0  # nothing read back
    from_journal = view_of(p.dst)
    # the same view as read from the standby, but the new messages' GUIDs (none: not read)
    with p.dst.tx() as s:
        s.execute(delete(Mailbox).where(Mailbox.address == "alice"))
        s.get(Replica, rid).view_seq = None
    view.refresh(rid, p.standby.open("alice"))
    assert _without_guids(view_of(p.dst)) == _without_guids(from_journal)
    assert {c[1] for c in from_journal[0] if c[0] == "INBOX" and c[3] is None} == {
        uid(p.standby, "INBOX", f"m body {i}".encode()) for i in range(6, 10)}


def test_flags_stored_and_messages_expunged_by_the_pass_are_catalogued_from_the_journal(tmp_path):
    p = seeded(tmp_path)
    rid, view = p.rid(), StandbyView(p.dst)
    view.refresh(rid, p.standby.open("alice"))
    # appends, a flag change of an old message and of a new one, an old and a new message expunged
    for i in (6, 7, 8):
        p.primary.deliver("alice", body(i))
    p.primary.set_flags("alice", "INBOX", uid(p.primary, "INBOX", b"m body 0"), {"\\Flagged"})
    p.primary.set_flags("alice", "INBOX", uid(p.primary, "INBOX", b"m body 6"), {"\\Seen", "$Done"})
    p.primary.expunge("alice", "INBOX", [uid(p.primary, "INBOX", b"m body 1"), uid(p.primary, "INBOX", b"m body 7")])
    p.primary.set_flags("alice", "Work", uid(p.primary, "Work", b"work body 1"), {"\\Answered"})
    listing = p.standby.open("alice").list_folders()  # as the replay worker lists before a pass
    report = _replicate_one_pass(p, listing)
    assert report.applied and not report.journal.touched and report.journal.exact
    standby = CountingSession(p.standby.open("alice"))
    assert view.refresh(rid, standby, report.journal, listing) == 0  # nothing read back
    # no LIST of the whole copy: only the folders the pass wrote, each listed once
    assert standby.lists == 0 and sorted(standby.infos) == ["INBOX", "Work"] and standby.deltas == 0
    from_journal = view_of(p.dst)
    cats = from_journal[0]
    assert [c[2] for c in cats if c[0] == "INBOX" and c[1] == uid(p.standby, "INBOX", b"m body 0")] == ["\\Flagged"]
    assert not any(c[0] == "INBOX" and c[1] == 2 for c in cats)  # m body 1 is gone
    assert _without_guids(_rebuilt_from_nothing(p, rid, view)) == _without_guids(from_journal)


def test_a_message_expunged_behind_the_replayers_back_makes_the_view_read_the_folder(tmp_path):
    p = seeded(tmp_path)
    rid, view = p.rid(), StandbyView(p.dst)
    view.refresh(rid, p.standby.open("alice"))
    p.standby.expunge("alice", "INBOX", [uid(p.standby, "INBOX", b"m body 2")])  # not by the replayer
    p.primary.set_flags("alice", "INBOX", uid(p.primary, "INBOX", b"m body 0"), {"\\Flagged"})
    listing = p.standby.open("alice").list_folders()
    report = _replicate_one_pass(p, listing)
    assert view.refresh(rid, p.standby.open("alice"), report.journal, listing) == 1  # counts do not add up
    assert _without_guids(view_of(p.dst)) == _without_guids(_rebuilt_from_nothing(p, rid, view))


def test_the_view_reads_a_folder_back_when_the_pass_did_more_than_the_journal_knows_or_someone_else_wrote(tmp_path):
    p = seeded(tmp_path)
    rid, view = p.rid(), StandbyView(p.dst)
    view.refresh(rid, p.standby.open("alice"))
    # a move in the same pass as an append: both folders are read back
    p.primary.deliver("alice", body(6))
    p.primary.move("alice", "INBOX", uid(p.primary, "INBOX", b"m body 0"), "Work")
    report = _replicate_one_pass(p)
    assert view.refresh(rid, p.standby.open("alice"), report.journal) == 2
    cats = view_of(p.dst)[0]
    assert [c[0] for c in cats if c[1] == uid(p.standby, "Work", b"m body 0") and c[0] == "Work"] == ["Work"]
    assert _without_guids(view_of(p.dst)) == _without_guids(_rebuilt_from_nothing(p, rid, view))
    # a message delivered to the standby behind the replayer's back, then a pass that appends:
    # the counts do not add up, the folder is read and the stranger left pending
    p.standby.deliver("alice", body(1, "stranger"))
    p.primary.deliver("alice", body(7))
    report = _replicate_one_pass(p)
    assert report.journal.writes["INBOX"].new  # the replayer's appends chained ...
    assert view.refresh(rid, p.standby.open("alice"), report.journal) == 1  # ... but INBOX is read
    _, cursors, _ = view_of(p.dst)
    assert cursors["INBOX"][1] == str(uid(p.standby, "INBOX", b"stranger body 1"))  # pending


def test_a_message_catalogued_without_its_guid_still_moves_as_a_move_after_cutover(tmp_path):
    p = seeded(tmp_path)
    rid, view = p.rid(), StandbyView(p.dst)
    view.refresh(rid, p.standby.open("alice"))
    p.primary.deliver("alice", body(6))
    report = _replicate_one_pass(p)
    assert view.refresh(rid, p.standby.open("alice"), report.journal) == 0
    res = CutoverService(p.dst, p.replay, lambda rep: p.standby.open(rep.address), p.locks).cutover([rid])
    assert res[0]["status"] == "ok" and res[0]["standby_read"] is False, res
    p.standby.move("alice", "INBOX", uid(p.standby, "INBOX", b"m body 6"), "Work")
    p.dr_cycle()
    with p.dst.read() as s:
        mbx = s.scalar(select(Mailbox).where(Mailbox.address == "alice"))
        kinds = [json.loads(r.change)["kind"] for r in s.scalars(
            select(OutboxRow).where(OutboxRow.mailbox_id == mbx.id).order_by(OutboxRow.seq))]
    assert kinds == ["msg.move"], kinds  # paired by content hash: the body does not travel back
    p.fail_back()
    p.assert_equal()


class ReadBack(CountingSession):
    """Also counts the messages read back from the standby (the metadata of each)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.messages = 0

    def changes_since(self, folder, since):
        delta = super().changes_since(folder, since)
        self.messages += len(delta.new)
        return delta


def test_the_first_pass_of_a_new_copy_is_catalogued_from_its_journal_not_read_back(tmp_path):
    """A seed: the view of the (empty) copy is taken before the first pass, so what the pass
    writes — most of a seed — is catalogued from what the replayer wrote, never read back."""
    from mailrepl.recovery.replay_pass import ReplayPass
    from mailrepl.recovery.standby_check import ResyncRequests

    p = Sites(tmp_path)
    for i in range(6):
        p.primary.deliver("alice", body(i), flags={"\\Seen"} if i % 2 else set())
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    while p.shipper.ship_once():
        pass
    rid, view = p.rid(), StandbyView(p.dst)
    standby = ReadBack(p.standby.open("alice"))
    report, _ = ReplayPass(p.dst, p.replay, view, ResyncRequests()).run(rid, standby)
    assert report.appended == 6 and report.journal.exact, "creating INBOX, which the copy has, changed nothing"
    assert standby.messages == 0, "nothing the pass wrote was read back"
    with p.dst.read() as s:
        rep = s.get(Replica, rid)
        assert rep.view_seq == rep.applied_seq == p.mailbox().last_seq
    from_journal = view_of(p.dst)
    assert _without_guids(_rebuilt_from_nothing(p, rid, view)) == _without_guids(from_journal)
    p.assert_equal()


def test_a_folder_the_pass_created_is_read_back_by_the_view():
    """A folder the copy did not have before the pass is new to the view: the journal is void
    and the view reads the copy (nothing taken on trust)."""
    from mailrepl.shared.adapters.base import FolderInfo
    from mailrepl.shared.engines.replay_journal import PassJournal
    journal = PassJournal()
    journal.listed["INBOX"] = FolderInfo("INBOX", "", uidvalidity=1, uidnext=1, highestmodseq=1, messages=0)
    journal.created("INBOX")
    assert journal.exact
    journal.created("Work")
    assert not journal.exact


def test_folders_listed_empty_are_catalogued_from_the_listing_without_reading_them(tmp_path):
    """A new copy's view: the folders the listing shows empty (the standby's default folders)
    are taken from the listing, with its cursor; a folder holding messages is read. The view
    is the one a full read gives."""
    p = Sites(tmp_path)
    p.standby.deliver("alice", body(9, "kept"), folder="Kept")  # on the standby before the seed
    p.standby.open("alice").create_folder("Empty")
    p.primary.deliver("alice", body(0))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    while p.shipper.ship_once():
        pass
    rid, view = p.rid(), StandbyView(p.dst)
    standby = CountingSession(p.standby.open("alice"))
    listed = {f.name: f for f in standby.inner.list_folders()}
    assert listed["Empty"].messages == 0 and listed["Kept"].messages == 1
    view.refresh(rid, standby)
    assert standby.deltas == sum(1 for f in listed.values() if f.messages), "only folders with messages are read"
    _, cursors, _ = view_of(p.dst)
    assert cursors["Empty"][0] == listed["Empty"].cursor.format()
    assert cursors["Empty"][2] == 0
    taken = view_of(p.dst)
    assert _without_guids(_rebuilt_from_nothing(p, rid, view)) == _without_guids(taken)
