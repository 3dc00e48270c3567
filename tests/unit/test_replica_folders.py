"""The replica's folder record: every folder the applied changes say the copy has, empty and
special ones included, so that a copy that lost one is found and a resync brings it back as it
was (the same story against a wiped real Dovecot is tests/e2e/test_standby_folder_loss.py)."""
from __future__ import annotations

from mailrepl.recovery.standby_check import standby_damage
from mailrepl.shared.adapters.base import FolderInfo
from mailrepl.shared.capture_state import ReplicaFolders
from mailrepl.shared.model import Change, Kind
from mailrepl.shared.store.models import InboxRow, Replica
from sqlalchemy import select

from tests.unit.memory_server import Folder
from tests.unit.test_failback_memory import Sites, body
from tests.unit.test_pipeline_memory import Pipeline, _msg


def test_the_record_follows_creates_renames_deletes_and_writes(store):
    with store.tx() as s:
        rep = Replica(source_id="hq", server="primary", address="alice", target="standby")
        s.add(rep)
        s.flush()
        rid = rep.id
        folders = ReplicaFolders(s, rid)
        folders.applied([
            Change(Kind.FOLDER_CREATE, "Receipts", special_use=("\\Archive",)),
            Change(Kind.FOLDER_CREATE, "Projects"),
            Change(Kind.FOLDER_CREATE, "Projects/2024"),
            Change(Kind.MSG_ADD, "Projects/2024/Q1", mid=1, sha256="0" * 64, size=1, flags=(),
                   internaldate="2024-10-01T09:00:00+00:00"),
            Change(Kind.MSG_MOVE, "Projects/2024/Q1", mid=1, new_folder="Later"),
            Change(Kind.FOLDER_RENAME, "Projects", new_folder="Done"),
            Change(Kind.FOLDER_RENAME, "Receipts", new_folder="Bills"),
            Change(Kind.FOLDER_RESET, "Bills"),  # a reset keeps what the folder was created with
            Change(Kind.FOLDER_DELETE, "Done/2024/Q1"),  # children first, as capture sends them
            Change(Kind.FOLDER_DELETE, "Done/2024"),
        ])
        assert folders.names() == {"Bills", "Done", "Later"}
        assert folders.special_use("Bills") == {"\\Archive"} and folders.special_use("Done") == frozenset()

    live = [FolderInfo("Bills", "", 1, 1, 1, 0), FolderInfo("Later", "", 2, 1, 1, 0)]
    with store.read() as s:
        # an empty folder, lost alone, with nothing of it in the id map and no fresh view
        assert standby_damage(s, rid, live, view_fresh=False, use_fid=False) == ["Done"]
        assert standby_damage(s, rid, [*live, FolderInfo("Done", "", 3, 1, 1, 0)], view_fresh=False, use_fid=False) == []
    # unless the next change to apply deletes it: done on the server, the process stopped before
    # its bookkeeping (only that change can be; a later one cannot have begun)
    for seq, ch in ((2, Change(Kind.FOLDER_DELETE, "Done")), (1, Change(Kind.FOLDER_RENAME, "Done", new_folder="Old"))):
        text, digest = ch.encoded()
        with store.tx() as s:
            s.add(InboxRow(replica_id=rid, seq=seq, change=text, digest=digest))
        with store.read() as s:
            assert standby_damage(s, rid, live, view_fresh=False, use_fid=False) == ([] if seq == 1 else ["Done"])


def test_a_resync_of_a_wiped_copy_brings_back_empty_and_special_folders(tmp_path):
    p = Pipeline(tmp_path)
    p.primary.deliver("alice", _msg(1))
    p.primary.box("alice")["Receipts"] = Folder("Receipts", special_use=frozenset({"\\Archive"}))
    p.primary.box("alice")["Empty"] = Folder("Empty")
    p.sync()
    p.assert_equal()
    assert p.standby.box("alice")["Receipts"].special_use == {"\\Archive"}

    box = p.standby.box("alice")  # the copy wiped on the standby: only a new, empty INBOX
    box.clear()
    box["INBOX"] = Folder("INBOX")
    p.capture.resync(p.mailbox().id)
    p.sync()
    p.sync()
    p.assert_equal()
    assert set(p.standby.box("alice")) == {"INBOX", "Receipts", "Empty"}
    assert p.standby.box("alice")["Receipts"].special_use == {"\\Archive"}


def test_after_a_failback_the_record_is_the_copy_users_left(tmp_path):
    p = Sites(tmp_path)
    p.primary.deliver("alice", body(1))
    p.primary.deliver("alice", body(2, "work"), folder="Work")
    p.primary.box("alice")["Empty"] = Folder("Empty")
    p.sync()
    p.sync()
    p.assert_equal()
    assert p.cutovers.cutover([p.rid()])[0]["state"] == "active-at-dr"
    p.puller.step()
    p.standby.delete_folder("alice", "Empty")  # users at DR remove one folder and make another
    p.standby.deliver("alice", body(3, "dr"), folder="New")
    p.dr_cycle()
    p.fail_back()
    # replicating again: the first check, before any forward change, sees no damage
    with p.dst.read() as s:
        assert ReplicaFolders(s, p.rid()).names() == set(p.standby.box("alice")) == {"INBOX", "Work", "New"}
        live = p.standby.open("alice").list_folders()
        assert standby_damage(s, p.rid(), live, view_fresh=False, use_fid=False) == []
    p.sync()
    p.assert_equal()


def test_one_pass_writing_renaming_and_writing_again_leaves_the_record_right(tmp_path):
    p = Pipeline(tmp_path)
    p.primary.deliver("alice", _msg(1), folder="A")
    p.sync()
    # in one replay pass: A renamed to B, then a new A written into
    box = p.primary.box("alice")
    box["B"] = box.pop("A")
    box["B"].name = "B"
    p.primary.deliver("alice", _msg(3), folder="B")
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    p.primary.deliver("alice", _msg(2), folder="A")
    p.sync()
    p.assert_equal()
    with p.dst.read() as s:
        rid = s.scalar(select(Replica.id))
        assert ReplicaFolders(s, rid).names() == {"INBOX", "A", "B"} == set(p.standby.box("alice"))
