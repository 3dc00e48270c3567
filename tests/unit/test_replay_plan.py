"""The pure replay planner: grouping without reordering."""
import pytest

from mailrepl.shared.model import Change, Kind
from mailrepl.shared.engines.replay import plan


def add(mid, folder="INBOX", size=10):
    return Change(Kind.MSG_ADD, folder, mid=mid, sha256=f"{mid:064x}", size=size, flags=(),
                  internaldate="2024-01-01T00:00:00+00:00")


def test_consecutive_adds_to_one_folder_become_one_group_in_order():
    changes = list(enumerate([add(1), add(2), add(3, "Sent"), add(4, "Sent"), Change(Kind.MSG_EXPUNGE, "Sent", mid=3),
                              Change(Kind.MSG_EXPUNGE, "Sent", mid=4), add(5)], start=1))
    groups = plan(changes)
    assert [(g.kind, g.folder, [s for s, _ in g.items]) for g in groups] == [
        (Kind.MSG_ADD, "INBOX", [1, 2]), (Kind.MSG_ADD, "Sent", [3, 4]),
        (Kind.MSG_EXPUNGE, "Sent", [5, 6]), (Kind.MSG_ADD, "INBOX", [7]),
    ]
    flat = [seq for g in groups for seq, _ in g.items]
    assert flat == sorted(flat)


def test_batch_limits_split_groups():
    changes = list(enumerate([add(i, size=40) for i in range(1, 8)], start=1))
    assert [len(g.items) for g in plan(changes, append_batch=3)] == [3, 3, 1]
    assert [len(g.items) for g in plan(changes, append_bytes=100)] == [2, 2, 2, 1]


def test_flags_group_only_with_identical_flag_sets_and_folder_ops_stand_alone():
    f = lambda mid, fl: Change(Kind.MSG_FLAGS, "INBOX", mid=mid, flags=fl)
    changes = list(enumerate([f(1, ("\\Seen",)), f(2, ("\\Seen",)), f(3, ()), Change(Kind.FOLDER_CREATE, "A"),
                              Change(Kind.FOLDER_CREATE, "B")], start=10))
    assert [len(g.items) for g in plan(changes)] == [2, 1, 1, 1]


def test_non_contiguous_input_is_refused():
    with pytest.raises(ValueError, match="not contiguous"):
        plan([(1, add(1)), (3, add(2))])
