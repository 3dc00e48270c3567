"""The replay pass journal: when what the replayer appended may stand for a read of the folder."""
from __future__ import annotations

from mailrepl.shared.adapters.base import AppendResult, FolderInfo
from mailrepl.shared.engines.replay_journal import PassJournal
from mailrepl.shared.model import Change, Cursor, Kind


def add(mid: int, flags=()) -> Change:
    return Change(Kind.MSG_ADD, "INBOX", mid=mid, sha256=f"{mid:064x}", size=100 + mid, flags=flags,
                  internaldate="2024-01-02T03:04:05+00:00")


def info(uidnext: int, messages: int, modseq: int = 50, uidvalidity: int = 7) -> FolderInfo:
    return FolderInfo("INBOX", "", uidvalidity, uidnext, modseq, messages)


def test_chained_appends_are_the_folders_delta():
    j = PassJournal()
    j.appended("INBOX", info(10, 5), AppendResult(7, (10, 11)), [add(1, ("\\Seen",)), add(2)])
    j.appended("INBOX", info(12, 7), AppendResult(7, (12,)), [add(3)])
    d = j.delta("INBOX", Cursor(7, 40, 10), 5, info(13, 8, modseq=60))
    assert d is not None and d.cursor == Cursor(7, 60, 13) and not d.vanished and not d.changed
    assert [(m.uid, m.flags, m.size) for m in d.new] == [(10, frozenset({"\\Seen"}), 101), (11, frozenset(), 102),
                                                         (12, frozenset(), 103)]


def test_the_folder_is_read_when_the_journal_is_not_the_whole_story():
    def journal() -> PassJournal:
        j = PassJournal()
        j.appended("INBOX", info(10, 5), AppendResult(7, (10, 11)), [add(1), add(2)])
        return j

    known, after = Cursor(7, 40, 10), info(12, 7)
    assert journal().delta("INBOX", known, 5, after) is not None
    assert journal().delta("Work", known, 5, after) is None  # nothing appended there
    assert journal().delta("INBOX", Cursor(7, 40, 9), 5, after) is None  # the view is behind
    assert journal().delta("INBOX", known, 4, after) is None  # a message came behind our back
    assert journal().delta("INBOX", known, 5, info(13, 8)) is None  # appended by someone else after us
    assert journal().delta("INBOX", known, 5, info(12, 7, uidvalidity=8)) is None
    assert journal().delta("INBOX", Cursor(7, 40, 10, token="x"), 5, after) is None  # not an IMAP cursor
    assert journal().delta("INBOX", known, None, after) is None
    touched = journal()
    touched.touch(["INBOX"])  # flags stored, expunged, moved, claimed, replaced
    assert touched.delta("INBOX", known, 5, after) is None
    void = journal()
    void.void()  # a folder created, renamed, deleted or reset; a crash recovered
    assert void.delta("INBOX", known, 5, after) is None


def test_appends_that_do_not_chain_touch_the_folder():
    j = PassJournal()
    j.appended("INBOX", info(10, 5), AppendResult(7, (10, 11)), [add(1), add(2)])
    j.appended("INBOX", info(13, 8), AppendResult(7, (13,)), [add(3)])  # someone appended UID 12
    assert "INBOX" in j.touched
    j = PassJournal()
    j.appended("INBOX", info(10, 5), AppendResult(7, (10, 12)), [add(1), add(2)])  # UIDs with a hole
    assert "INBOX" in j.touched
    j = PassJournal()
    j.appended("INBOX", info(10, 5), AppendResult(7, ()), [add(1)])  # no APPENDUID
    assert "INBOX" in j.touched


def test_flags_and_expunges_join_the_appends_in_the_folders_delta():
    j = PassJournal()
    j.flags_stored("INBOX", 7, [3, 4], frozenset({"\\Flagged"}))
    j.appended("INBOX", info(10, 5), AppendResult(7, (10, 11, 12)), [add(1), add(2), add(3)])
    j.flags_stored("INBOX", 7, [11], frozenset({"\\Seen"}))  # a message of this pass
    j.expunged("INBOX", 7, [4, 12, 2])  # two old ones (one flagged before) and the last one appended
    d = j.delta("INBOX", Cursor(7, 40, 10), 5, info(13, 5, modseq=60))  # 5 + 3 appended - 3 expunged
    assert d is not None and d.cursor == Cursor(7, 60, 13)
    assert d.vanished == (2, 4) and [(m.uid, m.flags) for m in d.changed] == [(3, frozenset({"\\Flagged"}))]
    assert [(m.uid, m.flags) for m in d.new] == [(10, frozenset()), (11, frozenset({"\\Seen"}))]
    assert j.shas[("INBOX", 11)] == add(2).sha256
    assert j.delta("INBOX", Cursor(7, 40, 10), 5, info(13, 6)) is None  # one expunge did not happen
    assert j.delta("INBOX", Cursor(7, 40, 10), 5, info(14, 5)) is None  # someone appended after us


def test_flags_and_expunges_without_appends_keep_the_folders_uidnext():
    j = PassJournal()
    j.flags_stored("Work", 7, [3], frozenset())
    j.expunged("Work", 7, [5])
    d = j.delta("Work", Cursor(7, 40, 10), 5, FolderInfo("Work", "", 7, 10, 44, 4))
    assert d is not None and d.vanished == (5,) and d.changed[0].uid == 3 and not d.new
    assert j.delta("Work", Cursor(7, 40, 10), 5, FolderInfo("Work", "", 7, 11, 44, 5)) is None  # a new message
    assert j.delta("Work", Cursor(7, 40, 5), 5, FolderInfo("Work", "", 7, 5, 44, 4)) is None  # UIDs not below the view's UIDNEXT
    other = PassJournal()
    other.flags_stored("Work", 7, [3], frozenset())
    other.expunged("Work", 8, [5])  # the id map knew the folder under two UIDVALIDITYs
    assert "Work" in other.touched and other.delta("Work", Cursor(7, 40, 10), 5, FolderInfo("Work", "", 7, 10, 44, 4)) is None


def test_the_listing_before_the_pass_is_used_once_and_never_after_a_void():
    j = PassJournal(listed={"INBOX": info(10, 5)})
    assert j.listed_before("INBOX") == info(10, 5)
    assert j.listed_before("INBOX") is None  # written since: ask the server
    j = PassJournal(listed={"INBOX": info(10, 5)})
    j.void()
    assert j.listed_before("INBOX") is None
