"""The fault suite's counting of differences: on snapshots (mailcompare) and on the product's verify report."""
from __future__ import annotations

from collections import Counter

import pytest

from tests.faults.checks import compare_snapshots, counts_from_verify_report

D1, D2 = "2026-12-01T10:00:00+00:00", "2025-03-04T05:06:07+00:00"
SEEN, FLAGGED = frozenset({"\\Seen"}), frozenset({"\\Flagged"})


def key(sha: str, flags=frozenset(), date=D1):
    return (sha * 8, flags, date)


def test_equal_snapshots_have_no_difference():
    snap = {"INBOX": Counter([key("a"), key("b", SEEN)]), "Archive": Counter()}
    out = compare_snapshots("u01", snap, {k: Counter(v) for k, v in snap.items()})
    assert out.equal and out.as_dict() == dict(lost=0, duplicated=0, flags=0, internal_date=0, folders=0, other=0)


def test_every_kind_of_difference_is_counted():
    primary = {
        "INBOX": Counter([key("a"), key("b", SEEN), key("c"), key("d"), key("e")]),
        "Work": Counter([key("f"), key("f")]),
        "Gone": Counter([key("g"), key("h")]),
    }
    standby = {
        "INBOX": Counter([key("a"), key("a"),  # a duplicated
                          key("b", FLAGGED),  # b: flags differ
                          key("c", date=D2),  # c: internal date differs
                          key("d", SEEN, D2),  # d: both
                          key("f"),  # f: a stale copy (the primary has it in Work): duplicated
                          key("z")]),  # z: never on the primary
        "Work": Counter([key("f")]),  # one copy of f lost
        "Extra": Counter(),
    }  # e lost; folder Gone missing (2 messages lost with it); folder Extra only on the standby
    out = compare_snapshots("u01", primary, standby)
    assert out.as_dict() == dict(lost=1 + 1 + 2, duplicated=2, flags=2, internal_date=2, folders=2, other=1)
    assert not out.equal and out.other_total == 2 + 2 + 2 + 1
    assert any("Gone" in d for d in out.details)


REPORT = {
    "equal": False,
    "mailboxes": [
        {"address": "u01", "verdict": "equal", "differences": []},
        {"address": "u02", "verdict": "different", "differences": [
            {"kind": "missing", "folder": "INBOX", "sha256": "1" * 64},
            {"kind": "missing", "folder": "Work", "sha256": "2" * 64, "count": 2},
            {"kind": "duplicate", "folder": "INBOX", "sha256": "3" * 64},
            {"kind": "extra", "folder": "Archive", "sha256": "4" * 64},  # the primary has it elsewhere
            {"kind": "extra", "folder": "Archive", "sha256": "5" * 64},  # never on the primary
            {"kind": "flags", "folder": "INBOX", "sha256": "6" * 64},
            {"kind": "internal_date", "folder": "INBOX", "sha256": "7" * 64},
            {"kind": "bytes", "folder": "INBOX", "sha256": "8" * 64},
            {"kind": "folder_missing", "folder": "Old"},
            {"kind": "folder_extra", "folder": "New"},
        ]},
        {"address": "u03", "verdict": "different", "differences": [{"kind": "something-new", "folder": "INBOX"}]},
    ],
}


def test_verify_report_maps_onto_the_same_counts():
    asked = []

    def primary_shas(address):
        asked.append(address)
        return {"4" * 64, "9" * 64}

    out = counts_from_verify_report(REPORT, primary_shas)
    assert out.as_dict() == dict(lost=3, duplicated=2, flags=1, internal_date=1, folders=2, other=1 + 1 + 1)
    assert out.mailboxes == 3 and not out.equal
    assert asked == ["u02"]  # asked once, only where an extra message needs it


def test_verify_report_without_primary_lookup_counts_extra_as_other():
    out = counts_from_verify_report(REPORT)
    assert out.duplicated == 1 and out.other == 4


def test_an_equal_report_counts_nothing_and_a_contradictory_one_is_refused():
    equal = {"equal": True, "mailboxes": [{"address": "u01", "verdict": "equal", "differences": []}]}
    assert counts_from_verify_report(equal).equal
    with pytest.raises(ValueError):
        counts_from_verify_report({"equal": True, "mailboxes": REPORT["mailboxes"]})
    with pytest.raises(ValueError):
        counts_from_verify_report({"equal": False, "mailboxes": equal["mailboxes"]})
    with pytest.raises(ValueError):
        counts_from_verify_report({"equal": True})


def test_a_mailbox_that_could_not_be_verified_is_a_difference():
    report = {"equal": False, "mailboxes": [{"address": "u01", "verdict": "error", "differences": []}]}
    assert counts_from_verify_report(report).other == 1
