"""The capture-state package: folder pairing (pure), the rebuild plan (pure) and its applier,
the id map, and the chunked IN helper, against a real SQLite state store."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from mailrepl.shared.adapters.base import FolderDelta, FolderInfo, MessageMeta
from mailrepl.shared.capture_state import (
    CaptureState, CatalogRow, FolderListing, Fresh, IdMap, KnownFolder, Keep, MapEntry, NewEntry, apply_rebuild,
    known_folders, pair_folders, plan_rebuild, seed_from_catalog,
)
from mailrepl.shared.model import Cursor, UidSet, flags_text
from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.models import CatalogEntry, FolderState, Mailbox, Replica


def info(name: str, uv: int = 1, fid: str = "", nxt: int = 10, messages: int = 0) -> FolderInfo:
    return FolderInfo(name=name, fid=fid, uidvalidity=uv, uidnext=nxt, highestmodseq=5, messages=messages)


def meta(uid: int, *flags: str, guid: str | None = None) -> MessageMeta:
    return MessageMeta(uid=uid, flags=frozenset(flags), size=100 + uid, guid=guid)


# ---------------------------------------------------------------------------- pairing


def test_pairing_by_name_without_folder_ids():
    known = [KnownFolder(1, "INBOX", cursor=Cursor(1, 5, 10)), KnownFolder(2, "Old", cursor=Cursor(7, 1, 3))]
    matches, gone = pair_folders(known, [info("INBOX"), info("New")], use_fid=False)
    assert [(m.info.name, m.known.id if m.known else None) for m in matches] == [("INBOX", 1), ("New", None)]
    assert [k.id for k in gone] == [2]
    assert not matches[0].identity_changed


def test_pairing_by_folder_id_follows_a_rename_and_spots_a_recreated_folder():
    known = [KnownFolder(1, "A", fid="f1", cursor=Cursor(1, 5, 10)), KnownFolder(2, "B", fid="f2", cursor=Cursor(2, 5, 10))]
    # f1 renamed to "C"; "B" deleted and created again (new id f9, its old id no longer live)
    matches, gone = pair_folders(known, [info("C", fid="f1"), info("B", uv=2, fid="f9")], use_fid=True)
    assert [(m.info.name, m.known.id) for m in matches] == [("C", 1), ("B", 2)]
    assert gone == []
    assert [m.identity_changed for m in matches] == [False, True]


def test_pairing_never_gives_one_known_folder_to_two_live_ones():
    known = [KnownFolder(1, "A", fid="f1")]
    # the same id listed under another name, and a folder without an id under the old name
    matches, _ = pair_folders(known, [info("B", fid="f1"), info("A", fid="")], use_fid=True)
    assert [m.known.id if m.known else None for m in matches] == [1, None]


def test_identity_changes_with_uidvalidity():
    known = [KnownFolder(1, "A", cursor=Cursor(1, 5, 10))]
    matches, _ = pair_folders(known, [info("A", uv=2)], use_fid=False)
    assert matches[0].identity_changed


# ---------------------------------------------------------------------------- chunks


def test_chunks_cover_every_value_once_in_order():
    assert list(chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks([], 3)) == []
    assert sum(len(c) for c in chunks(range(1234))) == 1234
    with pytest.raises(ValueError):
        list(chunks([1], 0))


def test_flags_text_is_sorted_without_recent():
    assert flags_text({"\\Seen", "\\Recent", "$Label1", "\\Answered"}) == "$Label1 \\Answered \\Seen"


# ---------------------------------------------------------------------------- store


def _mailbox(store) -> int:
    with store.tx() as s:
        m = Mailbox(server="primary", address="alice")
        s.add(m)
        s.flush()
        return m.id


def _seed(store, mbx: int, folders: dict[str, list[tuple[int, str, str]]], cursor=Cursor(1, 5, 10)) -> dict[str, int]:
    """folders: name -> [(uid, sha, flags)]; returns name -> folder id."""
    ids = {}
    with store.tx() as s:
        st = CaptureState(s, mbx)
        for name, msgs in folders.items():
            fid = st.create_folder(info(name))
            st.advance(fid, cursor)
            st.add_entries(fid, [NewEntry(uid, f"g{sha}", sha, 10, flags) for uid, sha, flags in msgs])
            ids[name] = fid
    return ids


def _catalog(store, mbx: int) -> set[tuple[str, int, str, str]]:
    with store.read() as s:
        return {(name, c.uid, c.sha256, c.flags) for c, name, _ in CaptureState(s, mbx).catalog()}


def test_capture_state_writes_keep_cursor_pending_and_catalogue_together(store):
    mbx = _mailbox(store)
    ids = _seed(store, mbx, {"INBOX": [(1, "a", ""), (2, "b", "\\Seen")]})
    with store.tx() as s:
        st = CaptureState(s, mbx)
        first = s.scalar(select(CatalogEntry.mid).where(CatalogEntry.uid == 1))
        assert st.expunge_at(ids["INBOX"], [1, 2, 99], spare={first + 1}) == [first]  # uid 2 spared
        assert [t for _, t in st.update_flags(ids["INBOX"], {2: {"\\Seen"}})] == []  # unchanged: not reported
        assert [t for _, t in st.update_flags(ids["INBOX"], {2: {"\\Flagged"}})] == ["\\Flagged"]
        st.set_pending(ids["INBOX"], Cursor(1, 9, 20), [12, 11], {12: 5})
    with store.read() as s:
        (k,) = known_folders(s, mbx)
        work = CaptureState(s, mbx).pending_work(ids["INBOX"])
    assert k.pending and k.pending_uids == UidSet([11, 12]) and k.cursor == Cursor(1, 5, 10)
    assert work.uids == UidSet([11, 12]) and work.replace == {12: 5}
    with store.tx() as s:
        assert CaptureState(s, mbx).finish_pending(ids["INBOX"]) is False
    with store.read() as s:
        (k,) = known_folders(s, mbx)
    assert k.cursor == Cursor(1, 9, 20) and not k.pending
    assert _catalog(store, mbx) == {("INBOX", 2, "b", "\\Flagged")}


def test_reset_marks_the_folder_and_the_next_advance_ends_it(store):
    mbx = _mailbox(store)
    ids = _seed(store, mbx, {"A": [(1, "a", "")]})
    with store.tx() as s:
        CaptureState(s, mbx).reset_folder(ids["A"])
    assert _catalog(store, mbx) == set()
    with store.tx() as s:
        st = CaptureState(s, mbx)
        assert st.advance(ids["A"], Cursor(2, 1, 2)) is True
        assert st.advance(ids["A"], Cursor(2, 1, 2)) is False


def test_rebuild_from_deltas_updates_only_what_moved(store):
    """The standby view's way: deltas since the known cursors, new messages identified by hash."""
    mbx = _mailbox(store)
    _seed(store, mbx, {"INBOX": [(1, "a", ""), (2, "b", "")], "Gone": [(1, "c", "")], "Old": [(3, "d", "")]})
    with store.read() as s:
        known = known_folders(s, mbx)
    live = [info("INBOX", nxt=12), info("New", uv=3, nxt=2), info("Renamed")]
    # "Old" renamed to "Renamed": pairs by name only here, so it is gone + new
    matches, gone = pair_folders(known, live, use_fid=False)
    deltas = {
        "INBOX": FolderDelta(cursor=Cursor(1, 9, 12), vanished=(1,), changed=(meta(2, "\\Seen"),),
                             new=(meta(10), meta(11))),
        "New": FolderDelta(cursor=Cursor(3, 1, 2), new=(meta(1),)),
        "Renamed": FolderDelta(cursor=Cursor(1, 5, 10), new=(meta(3),)),
    }
    shas = {("INBOX", 10): "e", ("New", 1): "f", ("Renamed", 3): "d"}
    plan = plan_rebuild([FolderListing(m, deltas[m.info.name], reset=m.known is None) for m in matches], gone,
                        lambda folder, m: Fresh(shas[(folder, m.uid)]) if (folder, m.uid) in shas else None)
    assert [(f, m.uid) for f, m in plan.unplaced] == [("INBOX", 11)]
    with store.tx() as s:
        assert len(apply_rebuild(s, mbx, plan)) == 3
    assert _catalog(store, mbx) == {("INBOX", 2, "b", "\\Seen"), ("INBOX", 10, "e", ""), ("New", 1, "f", ""),
                                    ("Renamed", 3, "d", "")}
    with store.read() as s:
        folders = {k.name: k for k in known_folders(s, mbx)}
    assert set(folders) == {"INBOX", "New", "Renamed"}
    assert folders["INBOX"].cursor == Cursor(1, 9, 12) and folders["INBOX"].pending_uids == UidSet([11])
    assert not folders["New"].pending


def test_rebuild_from_a_full_listing_keeps_ids_moves_by_guid_and_drops_the_rest(store):
    """The failback re-base's way: every folder listed in full, messages identified by the id map."""
    mbx = _mailbox(store)
    ids = _seed(store, mbx, {"INBOX": [(1, "a", ""), (2, "b", ""), (3, "c", "")], "Trash": [(1, "x", "")]})
    with store.read() as s:
        listed = CaptureState(s, mbx).catalog()
        known = known_folders(s, mbx)
    catalogue = {c.mid: c for c, _, _ in listed}
    mid = {(n, c.uid): c.mid for c, n, _ in listed}
    # the primary now: INBOX 1 kept (new flags); INBOX 2 moved to Archive as uid 1 (found by GUID);
    # INBOX 3 and Trash gone; a message born at DR in Archive as uid 2; a late one in INBOX uid 7;
    live = [info("INBOX"), info("Archive")]
    listing = {
        "INBOX": FolderDelta(cursor=Cursor(1, 9, 8), new=(meta(1, "\\Seen", guid="ga"), meta(7, guid="late"))),
        "Archive": FolderDelta(cursor=Cursor(4, 2, 3), new=(meta(1, guid="gb"), meta(2, guid="born"))),
    }
    where = {("INBOX", 1): Keep(mid[("INBOX", 1)]), ("Archive", 2): Fresh("n", tag=77)}
    matches, gone = pair_folders(known, live, use_fid=False)
    plan = plan_rebuild([FolderListing(m, listing[m.info.name]) for m in matches], gone,
                        lambda folder, m: where.get((folder, m.uid)), catalogue=catalogue,
                        guid_claimable=set(catalogue))
    assert {p.mid: (p.folder, p.uid) for p in plan.placed} == {mid[("INBOX", 1)]: ("INBOX", 1),
                                                                mid[("INBOX", 2)]: ("Archive", 1)}
    assert sorted(plan.dropped_mids) == sorted([mid[("INBOX", 3)], mid[("Trash", 1)]])
    assert [(f, m.uid) for f, m in plan.unplaced] == [("INBOX", 7)]
    assert plan.gone == [ids["Trash"]]
    with store.tx() as s:
        (born,) = apply_rebuild(s, mbx, plan)
    assert born not in catalogue.values()
    assert _catalog(store, mbx) == {("INBOX", 1, "a", "\\Seen"), ("Archive", 1, "b", ""), ("Archive", 2, "n", "")}
    with store.read() as s:
        rows = {c.sha256: c.mid for c in s.scalars(select(CatalogEntry))}
        folders = {f.name: f for f in s.scalars(select(FolderState))}
    assert rows["a"] == mid[("INBOX", 1)] and rows["b"] == mid[("INBOX", 2)]  # ids kept
    assert set(folders) == {"INBOX", "Archive"}
    assert folders["INBOX"].pending_uids == "7" and folders["INBOX"].pending_cursor == folders["INBOX"].cursor
    assert folders["Archive"].pending_uids is None and folders["Archive"].cursor == "4:2:3"


def test_guid_claims_respect_what_may_be_claimed(store):
    mbx = _mailbox(store)
    _seed(store, mbx, {"INBOX": [(1, "a", "")]})
    with store.read() as s:
        listed = CaptureState(s, mbx).catalog()
        known = known_folders(s, mbx)
    catalogue = {c.mid: c for c, _, _ in listed}
    listing = FolderDelta(cursor=Cursor(1, 9, 8), new=(meta(5, guid="ga"),))
    matches, gone = pair_folders(known, [info("INBOX")], use_fid=False)
    plan = plan_rebuild([FolderListing(matches[0], listing)], gone, lambda f, m: None, catalogue=catalogue,
                        guid_claimable=())
    assert plan.placed == [] and [m.uid for _, m in plan.unplaced] == [5]
    assert plan.dropped_mids == list(catalogue)


# ---------------------------------------------------------------------------- id map


def test_id_map_round_trip_relocate_rename_and_seed(store):
    mbx = _mailbox(store)
    _seed(store, mbx, {"INBOX": [(1, "a", ""), (2, "b", "")], "Work/Sub": [(4, "c", "")]})
    with store.tx() as s:
        rep = Replica(source_id="dr", server="primary", address="alice", target="primary")
        s.add(rep)
        s.flush()
        rid = rep.id
        mid_late = s.scalar(select(CatalogEntry.mid).where(CatalogEntry.sha256 == "b"))
        assert seed_from_catalog(s, rid, mbx, skip={mid_late}) == 2
    with store.tx() as s:
        ids = IdMap(s, rid)
        assert {e.sha256 for e in ids.all().values()} == {"a", "c"}
        ids.put([MapEntry(900, "INBOX", 1, 30, "z"), MapEntry(901, "Work", 1, 1, "y")])
        ids.put([MapEntry(900, "INBOX", 1, 31, "z")])  # replaces, never duplicates
        ids.relocate(901, "Work/Sub", 1, 8)
        ids.rename_folder("Work", "Play")
        assert ids.mapped([900, 901, 902]) == {900, 901}
    with store.tx() as s:
        ids = IdMap(s, rid)
        assert ids.entries([900])[900].uid == 31
        assert {e.folder for e in ids.all().values()} == {"INBOX", "Play/Sub"}
        taken = ids.take_folder("Play/Sub")
        assert {e.mid for e in taken} == {901} | {e.mid for e in taken if e.sha256 == "c"}
        ids.drop([900])
        assert {e.sha256 for e in ids.all().values()} == {"a"}


def test_catalog_rows_are_values_not_live_rows(store):
    mbx = _mailbox(store)
    ids = _seed(store, mbx, {"INBOX": [(1, "a", "")]})
    with store.read() as s:
        (row,) = CaptureState(s, mbx).entries_in(ids["INBOX"])
    assert isinstance(row, CatalogRow)
    with pytest.raises(AttributeError):
        row.flags = "x"  # frozen
