"""The point-in-time fold and the restore plan (pure): a catalogue after any change, by time."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from mailrepl.recovery.restore_plan import (
    Catalogue,
    Filter,
    HistoryGap,
    fold,
    plan,
    restored_prefix,
)
from mailrepl.shared.model import Change, Kind

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
SHA = [f"{i:064x}" for i in range(20)]


def add(mid, folder="INBOX", flags=(), date="2026-11-30T08:00:00+00:00"):
    return Change(Kind.MSG_ADD, folder, mid=mid, sha256=SHA[mid], size=100 + mid, flags=flags, internaldate=date)


def rows(*changes, start=1, step=60):
    return [(start + i, ch, T0 + timedelta(seconds=step * i)) for i, ch in enumerate(changes)]


def state(cat: Catalogue) -> dict:
    return {m.mid: (m.folder, m.sha256, m.flags, m.internaldate) for m in cat.messages.values()}


HISTORY = rows(
    Change(Kind.FOLDER_CREATE, "Work", special_use=()),                    # 1  10:00
    add(1), add(2, flags=("\\Seen",)), add(3, "Work"),                      # 2-4
    Change(Kind.MSG_FLAGS, "INBOX", mid=1, flags=("\\Flagged",)),          # 5  10:04
    Change(Kind.MSG_MOVE, "INBOX", mid=2, new_folder="Work", flags=("\\Seen",)),  # 6
    Change(Kind.FOLDER_CREATE, "Work/2025"), add(4, "Work/2025"),           # 7-8
    Change(Kind.FOLDER_RENAME, "Work", new_folder="Projects"),             # 9  10:08
    Change(Kind.MSG_EXPUNGE, "INBOX", mid=1),                              # 10
    Change(Kind.MSG_REPLACE, "Projects", mid=5, old_mid=3, sha256=SHA[5], size=5, flags=("\\Draft",),
           internaldate="2026-12-01T10:09:00+00:00"),                     # 11
    Change(Kind.FOLDER_RESET, "Projects/2025"), add(6, "Projects/2025"),    # 12-13
    Change(Kind.FOLDER_RESET_DONE, "Projects/2025"),                       # 14
    Change(Kind.FOLDER_DELETE, "Projects/2025"),                           # 15 10:14
)


def test_fold_gives_the_mailbox_after_each_change_by_time():
    at4 = fold(Catalogue(), HISTORY, until=T0 + timedelta(minutes=3, seconds=30))
    assert at4.seq == 4
    assert state(at4) == {1: ("INBOX", SHA[1], (), "2026-11-30T08:00:00+00:00"),
                          2: ("INBOX", SHA[2], ("\\Seen",), "2026-11-30T08:00:00+00:00"),
                          3: ("Work", SHA[3], (), "2026-11-30T08:00:00+00:00")}
    at8 = fold(Catalogue(), HISTORY, until=T0 + timedelta(minutes=7))
    assert state(at8)[1][2] == ("\\Flagged",) and state(at8)[2][0] == "Work"
    assert set(at8.folders) == {"INBOX", "Work", "Work/2025"}
    at9 = fold(Catalogue(), HISTORY, until=T0 + timedelta(minutes=8))
    assert set(at9.folders) == {"INBOX", "Projects", "Projects/2025"}, "children follow a rename"
    assert {m.folder for m in at9.messages.values()} == {"INBOX", "Projects", "Projects/2025"}
    assert at9.renames == [(9, "Work", "Projects")]
    at11 = fold(Catalogue(), HISTORY, until=T0 + timedelta(minutes=10))
    assert 1 not in at11.messages and 3 not in at11.messages and at11.messages[5].flags == ("\\Draft",)
    at14 = fold(Catalogue(), HISTORY, until=T0 + timedelta(minutes=13))
    assert [m.mid for m in at14.in_folder("Projects/2025")] == [6], "a reset keeps only the re-added"
    end = fold(Catalogue(), HISTORY)
    assert "Projects/2025" not in end.folders and 6 not in end.messages and end.seq == 15
    assert end.at == T0 + timedelta(minutes=14)


def test_fold_from_a_snapshot_equals_fold_from_the_start_and_snapshots_round_trip():
    middle = fold(Catalogue(), HISTORY[:8])
    again = Catalogue.decode(middle.encode())
    assert state(again) == state(middle) and again.folders == middle.folders and again.seq == 8
    assert again.at == middle.at
    for minutes in (0, 5, 9, 11, 20):
        until = T0 + timedelta(minutes=minutes, seconds=1)
        if minutes >= 7:
            assert state(fold(again, HISTORY, until=until)) == state(fold(Catalogue(), HISTORY, until=until))


def test_a_missing_change_is_a_gap_never_skipped():
    with pytest.raises(HistoryGap):
        fold(Catalogue(), HISTORY[:3] + HISTORY[4:])


def test_plan_puts_a_restore_under_its_prefix_with_parents_and_filters():
    cat = fold(Catalogue(), HISTORY, until=T0 + timedelta(minutes=8, seconds=30))
    prefix = restored_prefix(T0 + timedelta(minutes=8, seconds=30))
    assert prefix == "Restored/2026-12-01 10:08:30"
    p = plan(cat, T0, prefix=prefix)
    names = [f for f, _ in p.folders]
    assert names[:2] == ["Restored", prefix]
    assert set(names[2:]) == {prefix + "/INBOX", prefix + "/Projects", prefix + "/Projects/2025"}
    assert names.index(prefix + "/Projects") < names.index(prefix + "/Projects/2025")
    assert sorted(f for f, _ in p.items) == sorted(prefix + "/" + m.folder for m in cat.messages.values())
    only = plan(cat, T0, flt=Filter(folder="Projects"))
    assert {f for f, _ in only.items} == {"Projects", "Projects/2025"}
    assert [f for f, _ in only.folders] == ["Projects", "Projects/2025"]
    dated = fold(Catalogue(), rows(add(1, date="2026-01-01T00:00:00+00:00"), add(2, date="2026-06-01T00:00:00+00:00")))
    p = plan(dated, T0, flt=Filter(since=datetime(2026, 3, 1, tzinfo=UTC)))
    assert [m.mid for _, m in p.items] == [2]
    # an earlier restore is not restored again into a new prefix
    nested = fold(Catalogue(), rows(add(1, folder="Restored/x/INBOX"), add(2)))
    assert [m.mid for _, m in plan(nested, T0, prefix="Restored/y").items] == [2]


def test_sender_and_subject_filters_read_the_header():
    raw = (b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\nSubject: =?utf-8?q?Quartals=C3=BCbersicht?=\r\n"
           b"\r\nFrom: nobody@else\r\n")
    assert Filter(sender="jorg@example").matches_headers(raw)
    assert Filter(sender="jörg").matches_headers(raw)
    assert not Filter(sender="nobody@else").matches_headers(raw), "the body is not the header"
    assert Filter(subject="übersicht").matches_headers(raw)
    assert not Filter(subject="invoice").matches_headers(raw)
    assert Filter().matches_headers(b"\xff\xfe not a header")
