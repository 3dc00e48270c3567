"""The verify comparison (pure): two listings in, the exact differences out."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mailrepl.shared.engines.verify_compare import (
    FolderSide, Listed, compare_folder, compare_mailbox, pair_folder_names, summary_digest, utc_seconds,
)
from mailrepl.shared.engines.verify_listing import message_id_of

D1 = utc_seconds(datetime(2024, 9, 3, 10, 0, tzinfo=timezone(timedelta(hours=2))))
D2 = utc_seconds(datetime(2024, 9, 4, 10, 0, tzinfo=timezone.utc))


def msg(uid: int, sha: str, flags=(), date: str = D1, mid: int | None = None, message_id: str = "") -> Listed:
    return Listed(uid=uid, sha256=sha * 64 if len(sha) == 1 else sha, flags=frozenset(flags), internaldate=date,
                  mid=mid, message_id=message_id)


def kinds(diffs) -> list[tuple[str, str]]:
    return sorted((d.kind, d.folder) for d in diffs)


def test_equal_folders_have_no_difference_whatever_the_uids_and_order():
    p = [msg(1, "a", ["\\Seen"], mid=1), msg(2, "b", mid=2), msg(3, "b")]
    s = [msg(12, "b"), msg(10, "a", ["\\Seen"], mid=1), msg(11, "b", mid=2)]
    assert compare_folder("INBOX", "INBOX", p, s) == []


def test_recent_is_not_a_flag_difference():
    assert compare_folder("INBOX", "INBOX", [msg(1, "a", ["\\Seen"])], [msg(5, "a", ["\\Seen", "\\Recent"])]) == []


def test_missing_message():
    diffs = compare_folder("INBOX", "INBOX", [msg(1, "a", mid=7, message_id="<a@x>"), msg(2, "b", mid=8)],
                           [msg(1, "b", mid=8)])
    assert len(diffs) == 1
    d = diffs[0]
    assert (d.kind, d.folder, d.standby_folder, d.sha256, d.message_id, d.mid, d.primary_uid, d.standby_uid) == (
        "missing", "INBOX", "INBOX", "a" * 64, "<a@x>", 7, 1, None)


def test_extra_and_duplicate():
    p = [msg(1, "a")]
    s = [msg(1, "a"), msg(2, "a"), msg(3, "c")]
    diffs = compare_folder("INBOX", "INBOX", p, s)
    assert kinds(diffs) == [("duplicate", "INBOX"), ("extra", "INBOX")]
    extra = next(d for d in diffs if d.kind == "extra")
    assert extra.sha256 == "c" * 64 and extra.standby_uid == 3 and extra.primary_uid is None


def test_flag_difference_names_both_sets():
    diffs = compare_folder("INBOX", "INBOX", [msg(1, "a", ["\\Seen", "$Label1"], mid=1)],
                           [msg(4, "a", ["\\Seen"], mid=1)])
    assert kinds(diffs) == [("flags", "INBOX")]
    assert "$Label1" in diffs[0].detail and diffs[0].primary_uid == 1 and diffs[0].standby_uid == 4


def test_internal_date_difference_without_ids():
    diffs = compare_folder("INBOX", "INBOX", [msg(1, "a", date=D1)], [msg(9, "a", date=D2)])
    assert kinds(diffs) == [("internal_date", "INBOX")]
    assert D1 in diffs[0].detail and D2 in diffs[0].detail


def test_same_instant_in_another_zone_is_equal():
    other = utc_seconds(datetime(2024, 9, 3, 8, 0, tzinfo=timezone.utc))
    assert other == D1
    assert compare_folder("INBOX", "INBOX", [msg(1, "a", date=D1)], [msg(1, "a", date=other)]) == []


def test_copies_pair_equal_ones_first():
    """Two copies of the same bytes, one with other flags on the standby: one flags difference,
    not two, and never a missing/extra pair."""
    p = [msg(1, "a", ["\\Seen"]), msg(2, "a", [])]
    s = [msg(7, "a", []), msg(8, "a", ["\\Flagged"])]
    diffs = compare_folder("INBOX", "INBOX", p, s)
    assert kinds(diffs) == [("flags", "INBOX")]
    assert diffs[0].primary_uid == 1 and diffs[0].standby_uid == 8


def test_same_id_other_bytes():
    diffs = compare_folder("INBOX", "INBOX", [msg(1, "a", mid=5)], [msg(3, "d", mid=5)])
    assert kinds(diffs) == [("bytes", "INBOX")]
    assert diffs[0].sha256 == "a" * 64 and diffs[0].standby_uid == 3


def test_renamed_folder_is_missing_and_extra():
    pairs, diffs = pair_folder_names([FolderSide("INBOX"), FolderSide("Work")],
                                     [FolderSide("INBOX", "INBOX"), FolderSide("Work2", "Work")])
    assert pairs == [("INBOX", "INBOX")]
    assert kinds(diffs) == [("folder_extra", "Work2"), ("folder_missing", "Work")]
    missing = next(d for d in diffs if d.kind == "folder_missing")
    assert missing.standby_folder == "Work2" and "Work2" in missing.detail


def test_folder_only_on_one_side():
    diffs = compare_mailbox({"INBOX": [msg(1, "a")], "Old": []}, {"INBOX": [msg(1, "a")], "New": []})
    assert kinds(diffs) == [("folder_extra", "New"), ("folder_missing", "Old")]


def test_a_message_moved_to_another_folder_on_the_standby():
    diffs = compare_mailbox({"INBOX": [msg(1, "a")], "Archive": []}, {"INBOX": [], "Archive": [msg(1, "a")]})
    assert kinds(diffs) == [("extra", "Archive"), ("missing", "INBOX")]


def test_summary_digest_ignores_order_and_sees_flags():
    a = summary_digest([("a" * 64, "\\Seen"), ("b" * 64, "")])
    assert a == summary_digest([("b" * 64, ""), ("a" * 64, "\\Seen")])
    assert a != summary_digest([("a" * 64, ""), ("b" * 64, "")])
    assert a != summary_digest([("a" * 64, "\\Seen")])


def test_internal_date_needs_a_zone():
    with pytest.raises(ValueError):
        utc_seconds("2024-09-03T10:00:00")


@pytest.mark.parametrize("raw, expected", [
    (b"Subject: x\r\nMessage-ID: <1@x>\r\n\r\nbody", "<1@x>"),
    (b"message-id:\r\n <2@x>\r\nX: y\r\n\r\n", "<2@x>"),
    (b"Subject: x\r\n\r\nMessage-ID: <in-body@x>\r\n", ""),
    (b"Message-ID: <3@x>\x1b[31m\r\n\r\n", "<3@x>[31m"),
    (b"", ""),
])
def test_message_id_of(raw, expected):
    assert message_id_of(raw) == expected
