"""Folder renames and creates that reuse a name within one capture cycle (A renamed to B and a
new A created, a swap through a temporary name, a parent renamed and a new parent of its old
name created with children, a folder deleted and its name taken by a renamed one): the capture
state keeps unique names at every statement, and the standby, applying the changes in order,
ends equal to the primary, every message in its folder. In one process against in-memory
servers; the same on real Dovecot is in tests/e2e/test_folder_renames.py."""
from __future__ import annotations

import json

import pytest
from mailrepl.recovery.standby_view import StandbyView
from mailrepl.shared.capture_state.folder_order import FolderStep, order_folder_steps
from mailrepl.shared.model import Change, Kind
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import FolderState, InboxRow, Mailbox, Replica
from sqlalchemy import delete, select

from tests.unit import test_pipeline_memory as pipeline_module
from tests.unit.memory_server import Folder, MemoryServer
from tests.unit.test_failback_memory import Sites, body
from tests.unit.test_pipeline_memory import Pipeline, _msg
from tests.unit.test_standby_view import view_of


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def states(request, tmp_path, monkeypatch) -> None:
    """Both gateways' state stores of one kind: PostgreSQL checks each statement's unique names
    (and refuses NUL in text) where SQLite may let a name pass through a clash."""
    if request.param == "postgres":
        databases = request.getfixturevalue("postgres_databases")
        urls = iter([databases.create(), databases.create()])
        monkeypatch.setattr(pipeline_module, "open_store", lambda url: open_store(next(urls)))


def _seeded(tmp_path, folders=("A", "B")) -> Pipeline:
    p = Pipeline(tmp_path)
    for n, name in enumerate(folders):
        for i in range(2):
            p.primary.deliver("alice", _msg(10 * n + i), folder=name)
    p.sync()
    p.assert_equal()
    return p


def _state_names(p: Pipeline) -> set[str]:
    with p.src.read() as s:
        return set(s.scalars(select(FolderState.name).where(FolderState.mailbox_id == p.mailbox().id)))


def _folder_changes(p: Pipeline) -> list[tuple[str, str, str | None]]:
    with p.dst.read() as s:  # as the recovery gateway received them
        rows = s.scalars(select(InboxRow).order_by(InboxRow.seq))
        out = []
        for r in rows:
            ch = Change.from_dict(json.loads(r.change))
            if ch.kind in (Kind.FOLDER_CREATE, Kind.FOLDER_RENAME, Kind.FOLDER_DELETE):
                out.append((ch.kind.value, ch.folder, ch.new_folder))
        return out


def _settle(p: Pipeline) -> None:
    p.sync()
    p.sync()  # a second cycle finds nothing more: the first one was not stuck
    p.assert_equal()
    assert _state_names(p) == set(p.primary.box("alice"))
    mbx = p.mailbox()
    assert mbx.applied_seq == mbx.last_seq and mbx.error is None


def test_rename_then_create_under_the_old_name(tmp_path, states):
    p = _seeded(tmp_path)
    p.primary.rename_folder("alice", "A", "C")
    p.primary.deliver("alice", _msg(50), folder="A")
    _settle(p)
    kinds = [c[0] for c in _folder_changes(p)]
    assert kinds[-2:] == [Kind.FOLDER_RENAME.value, Kind.FOLDER_CREATE.value]  # the name freed, then reused


def test_rename_onto_a_name_another_rename_frees(tmp_path, states):
    p = _seeded(tmp_path, ("A", "B"))
    p.primary.rename_folder("alice", "A", "C")
    p.primary.rename_folder("alice", "B", "A")
    _settle(p)


def test_swap_goes_through_a_temporary_name(tmp_path, states):
    p = _seeded(tmp_path, ("A", "B"))
    p.primary.rename_folder("alice", "A", "T")
    p.primary.rename_folder("alice", "B", "A")
    p.primary.rename_folder("alice", "T", "B")
    _settle(p)
    renames = [c for c in _folder_changes(p) if c[0] == Kind.FOLDER_RENAME.value]
    assert len(renames) == 3
    tmp = renames[0][2]
    assert tmp not in ("A", "B", "T") and renames[-1][1] == tmp


def test_parent_renamed_and_a_new_parent_of_the_old_name_created_with_children(tmp_path, states):
    p = _seeded(tmp_path, ("P", "P/x", "P/x/y"))
    p.primary.rename_folder("alice", "P", "Q")
    p.primary.deliver("alice", _msg(60), folder="P")
    p.primary.deliver("alice", _msg(61), folder="P/x")
    _settle(p)
    assert set(p.standby.box("alice")) == {"INBOX", "P", "P/x", "Q", "Q/x", "Q/x/y"}


def test_swap_of_parents_with_children(tmp_path, states):
    p = _seeded(tmp_path, ("A", "A/x", "B", "B/y"))
    p.primary.rename_folder("alice", "A", "T")
    p.primary.rename_folder("alice", "B", "A")
    p.primary.rename_folder("alice", "T", "B")
    _settle(p)
    assert set(p.standby.box("alice")) == {"INBOX", "A", "A/y", "B", "B/x"}


def test_deleted_folder_whose_name_a_rename_takes(tmp_path, states):
    p = _seeded(tmp_path, ("A", "B"))
    uid = next(iter(p.primary.box("alice")["A"].msgs))
    p.primary.move("alice", "A", uid, "INBOX")  # moved out of A before A goes: a move, no body
    p.primary.delete_folder("alice", "A")
    p.primary.rename_folder("alice", "B", "A")
    raw = p.shipper.stats.raw_bytes
    _settle(p)
    assert p.shipper.stats.raw_bytes == raw


def test_child_moved_out_of_a_renamed_parent(tmp_path, states):
    p = _seeded(tmp_path, ("A", "A/x"))
    p.primary.rename_folder("alice", "A", "B")
    p.primary.rename_folder("alice", "B/x", "C")
    p.primary.deliver("alice", _msg(70), folder="A")
    _settle(p)


def test_each_step_applied_twice_changes_nothing(tmp_path):
    """Each folder step is idempotent on the standby: a pass that runs the step it was applying
    again after a crash (the standby changed, our bookkeeping not) ends the same."""
    p = _seeded(tmp_path, ("A", "B"))
    before = {n: set(f.msgs) for n, f in p.standby.box("alice").items()}
    p.primary.rename_folder("alice", "A", "T")
    p.primary.rename_folder("alice", "B", "A")
    p.primary.rename_folder("alice", "T", "B")
    _settle(p)
    steps = [c for c in _folder_changes(p) if c[0] == Kind.FOLDER_RENAME.value]
    copy = MemoryServer(["alice"])
    for name in before:
        copy.box("alice").setdefault(name, Folder(name))
    sb = copy.open("alice")
    for _, old, new in steps:
        sb.rename_folder(old, new)
        sb.rename_folder(old, new)  # old is gone: a no-op
    assert set(copy.box("alice")) == set(p.primary.box("alice"))


def _reuse_names(server, old: str) -> None:
    """A swap of A and B through T, and Work renamed to ``old`` with a new Work."""
    server.rename_folder("alice", "A", "T")
    server.rename_folder("alice", "B", "A")
    server.rename_folder("alice", "T", "B")
    server.rename_folder("alice", "Work", old)
    server.deliver("alice", body(len(old), "new work"), folder="Work")


def test_standby_view_and_failback_through_reused_names(tmp_path, states):
    """The standby view follows the renames the replay made, cutover, users at DR reuse names
    again, and the DR capture (the same engine) sends them back to the primary in an order it
    can apply."""
    p = Sites(tmp_path)
    for n, name in enumerate(("A", "B", "Work")):
        for i in range(2):
            p.primary.deliver("alice", body(10 * n + i, name), folder=name)
    p.sync()
    p.sync()
    rid, view = p.rid(), StandbyView(p.dst)
    view.refresh(rid, p.standby.open("alice"))
    _reuse_names(p.primary, "Old")
    p.sync()
    p.sync()
    p.assert_equal()
    view.refresh(rid, p.standby.open("alice"))
    incremental = view_of(p.dst)
    assert {c[0] for c in incremental[0]} == {"A", "B", "Old", "Work"}
    with p.dst.tx() as s:  # the same view built from nothing
        mbx_id = s.scalar(select(Mailbox.id).where(Mailbox.address == "alice"))
        s.execute(delete(FolderState).where(FolderState.mailbox_id == mbx_id))
        s.get(Replica, rid).view_seq = None
    view.refresh(rid, p.standby.open("alice"))
    assert view_of(p.dst)[0] == incremental[0]

    assert p.cutovers.cutover([rid])[0]["status"] == "ok"
    p.puller.step()
    _reuse_names(p.standby, "Older")  # the users at DR: A and B swapped back, Work renamed again
    p.dr_cycle()
    p.dr_cycle()
    p.fail_back()
    p.assert_equal()
    assert set(p.primary.box("alice")) == {"INBOX", "A", "B", "Old", "Older", "Work"}
    assert any(b"A body 0" in m.body for m in p.primary.box("alice")["A"].msgs.values())  # swapped back


# ------------------------------------------------------------------ the pure order


def _apply(names: dict[int, str], steps: list[FolderStep]) -> set[str]:
    """Run the steps as an IMAP server would (a rename takes the subfolders; it fails onto a
    name in use; a create fails onto one), returning the folder names at the end."""
    have = set(names.values())
    for st in steps:
        if st.old is None:
            assert st.new not in have, st
            have.add(st.new)
            continue
        moved = {n for n in have if n == st.old or n.startswith(st.old + "/")}
        assert st.old in have and st.new not in have and not st.new.startswith(st.old + "/"), st
        have = (have - moved) | {st.new + n[len(st.old):] for n in moved}
    return have


@pytest.mark.parametrize("names,targets,creates", [
    ({1: "A"}, {1: "B"}, ["A"]),
    ({1: "A", 2: "B"}, {1: "B", 2: "A"}, []),
    ({1: "A", 2: "B", 3: "C"}, {1: "B", 2: "C", 3: "A"}, []),
    ({1: "A", 2: "A/x"}, {1: "B", 2: "B/x"}, ["A", "A/x"]),
    ({1: "A", 2: "A/x", 3: "B", 4: "B/y"}, {1: "B", 2: "B/x", 3: "A", 4: "A/y"}, []),
    ({1: "A", 2: "B"}, {2: "A"}, []),  # 1 deleted: it leaves its name first
    ({1: "A"}, {1: "A/sub"}, ["A"]),  # into a new folder of its old name
    ({1: "A", 2: "A/x"}, {1: "B", 2: "C"}, []),
    ({1: "A", 2: "B"}, {1: "B/A", 2: "A"}, ["B"]),
    ({1: "C/x", 2: "T", 3: "B"}, {1: "C/x", 2: "A/y", 3: "B/y"}, ["B/x", "A"]),  # B/x made, then B moves
])
def test_order_reaches_the_targets_with_unique_names_at_every_step(names, targets, creates):
    steps = order_folder_steps(names, targets, creates)
    live = set(targets.values()) | set(creates)
    deleted = {n for r, n in names.items() if r not in targets}
    end = _apply(names, steps)
    assert live <= end
    extra = end - live  # only deleted folders (perhaps under a temporary name), deleted after
    assert len(extra) <= len(deleted)
    for st in steps:
        if st.old is not None and st.new not in live:
            assert st.new.startswith("mailrepl-")  # a temporary name no user folder has


def test_nothing_to_order_is_no_step():
    assert order_folder_steps({1: "A", 2: "B"}, {1: "A", 2: "B"}, []) == []


def test_any_permutation_of_names_is_reached():
    """Random folder trees given random new names, deleted folders and new folders (a new
    folder inside one that then moves away is moved back): every case ends where it must,
    every step onto a free name."""
    import random

    pool = ["A", "B", "C", "A/x", "A/y", "B/x", "B/y", "C/x", "A/x/z", "B/x/z", "T", "T/x", "A/B", "B/A", "A/A"]
    rnd = random.Random(7)
    for _ in range(3000):
        names = dict(enumerate(rnd.sample(pool, rnd.randint(1, 8)), start=1))
        live = [r for r in names if rnd.random() < 0.8]
        wanted = rnd.sample(pool, len(live) + rnd.randint(0, 2))
        targets, creates = dict(zip(live, wanted)), wanted[len(live):]
        end = _apply(names, order_folder_steps(names, targets, creates))
        assert set(wanted) <= end, (names, targets, creates)
