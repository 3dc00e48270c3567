"""What the recovery gateway takes for a standby copy changed behind its back (``standby_damage``):
checked against a real SQLite state store with the id map as the replayer leaves it."""
from __future__ import annotations

import pytest

from mailrepl.recovery.standby_check import standby_damage
from mailrepl.shared.adapters.base import FolderInfo
from mailrepl.shared.store.models import IdMapEntry, Replica


def _replica_with(store, entries: list[tuple[str, int, int]]) -> int:
    with store.tx() as s:
        rep = Replica(source_id="hq", server="primary", address="alice", target="standby")
        s.add(rep)
        s.flush()
        for mid, (folder, uv, uid) in enumerate(entries, start=1):
            s.add(IdMapEntry(replica_id=rep.id, mid=mid, folder=folder, uidvalidity=uv, uid=uid, sha256=f"{mid:064x}"))
        return rep.id


def _live(name: str, uidvalidity: int, uidnext: int) -> FolderInfo:
    return FolderInfo(name, "", uidvalidity, uidnext, 1, uidnext - 1)


@pytest.mark.parametrize("live, damaged", [
    ([_live("INBOX", 7, 4), _live("Work", 9, 2)], []),                     # as the replayer left it
    ([_live("INBOX", 7, 4)], ["Work"]),                                   # a folder gone
    ([_live("INBOX", 8, 4), _live("Work", 9, 2)], ["INBOX"]),              # recreated: new UIDVALIDITY
    ([_live("INBOX", 7, 1), _live("Work", 9, 2)], ["INBOX"]),              # recreated with its old one
    ([_live("INBOX", 7, 3), _live("Work", 9, 2)], ["INBOX"]),              # UID 3 not given yet
    ([_live("INBOX", 7, 50), _live("Work", 9, 2), _live("New", 1, 1)], []),  # more mail, another folder
])
def test_damage_is_told_by_uidvalidity_and_by_uids_the_folder_has_not_given(store, live, damaged):
    rid = _replica_with(store, [("INBOX", 7, 1), ("INBOX", 7, 3), ("Work", 9, 1)])
    with store.read() as s:
        assert standby_damage(s, rid, live, view_fresh=False, use_fid=False) == damaged


def test_a_server_that_does_not_tell_uidnext_is_not_taken_for_damage(store):
    rid = _replica_with(store, [("INBOX", 7, 5)])
    with store.read() as s:
        assert standby_damage(s, rid, [_live("INBOX", 7, 0)], view_fresh=False, use_fid=False) == []
