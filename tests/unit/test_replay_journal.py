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
