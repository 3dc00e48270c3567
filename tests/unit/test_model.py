"""Value types: text round-trips and validation."""
from datetime import datetime, timedelta, timezone

import pytest

from mailrepl.shared.model import Change, Cursor, Kind, MailboxKey, SeqRange, UidSet, format_internaldate, parse_internaldate


@pytest.mark.parametrize("text", ["1:1:1", "1795557921:123456789012:45", "0:0:0"])
def test_cursor_round_trip(text):
    assert Cursor.parse(text).format() == text
    assert Cursor.parse(str(Cursor.parse(text))) == Cursor.parse(text)


@pytest.mark.parametrize("bad", ["", "1:2", "1:2:3:4", "a:b:c", "-1:2:3", "1:2:x"])
def test_cursor_rejects_garbage(bad):
    with pytest.raises(ValueError):
        Cursor.parse(bad)


def test_seqrange_round_trip_and_bounds():
    assert SeqRange.parse("7").format() == "7"
    r = SeqRange.parse("3-9")
    assert (r.first, r.last, len(r), list(r)[:2], 9 in r, 10 in r) == (3, 9, 7, [3, 4], True, False)
    for bad in ("0-3", "5-4", "x", "3-", "-3"):
        with pytest.raises(ValueError):
            SeqRange.parse(bad)


def test_uidset_normalises_and_round_trips():
    s = UidSet([5, 1, 2, 3, 9, 10, 3])
    assert s.format() == "1:3,5,9:10" and len(s) == 6
    assert UidSet.parse(s.format()) == s
    assert UidSet.parse("9:1").format() == "1:9"
    assert s.above(2).format() == "3,5,9:10" and s.first(4) == [1, 2, 3, 5]
    assert UidSet.parse("").format() == "" and not UidSet.parse("")
    with pytest.raises(ValueError):
        UidSet.parse("1,,2")


def test_change_round_trip_digest_and_validation():
    c = Change(Kind.MSG_ADD, "INBOX", mid=4, sha256="ab" * 32, size=10, flags=("\\Seen", "\\Recent", "$X"),
               internaldate="2024-01-02T03:04:05+01:00")
    assert c.flags == ("$X", "\\Seen")  # \Recent never travels, order is canonical
    assert Change.from_dict(c.to_dict()) == c and Change.from_dict(c.to_dict()).digest() == c.digest()
    assert c.digest() != Change(Kind.MSG_ADD, "INBOX", mid=4, sha256="ab" * 32, size=10, flags=("$X",),
                                internaldate="2024-01-02T03:04:05+01:00").digest()
    with pytest.raises(ValueError, match="needs sha256"):
        Change(Kind.MSG_ADD, "INBOX", mid=1, size=1, flags=(), internaldate="2024-01-02T03:04:05+00:00")
    with pytest.raises(ValueError, match="unknown change field"):
        Change.from_dict({"kind": "msg.expunge", "folder": "INBOX", "mid": 1, "extra": 1})
    with pytest.raises(ValueError):
        Change.from_dict({"kind": "msg.teleport", "folder": "INBOX"})


def test_internaldate_keeps_instant_and_zone():
    dt = datetime(2024, 5, 6, 7, 8, 9, 123, tzinfo=timezone(timedelta(hours=-5)))
    text = format_internaldate(dt)
    assert text == "2024-05-06T07:08:09-05:00" and parse_internaldate(text) == dt.replace(microsecond=0)
    with pytest.raises(ValueError):
        format_internaldate(datetime(2024, 1, 1))


def test_mailbox_key_round_trip():
    k = MailboxKey("primary", "alice@example.org")
    assert MailboxKey.parse(k.format()) == k
    with pytest.raises(ValueError):
        MailboxKey.parse("alice")


@pytest.mark.parametrize(
    "token",
    ["MmTSabc+/==", "H4sIAAAAAAAEAGNgYGBgBGJmBhAAAP//", "with:colon and space#hash%", "ü" * 3, "x" * 600],
)
def test_cursor_with_token_round_trips(token):
    cursor = Cursor(17, 3, 42, token)
    text = cursor.format()
    assert text.startswith("17:3:42#") and text.count("#") == 1 and ":" not in text[len("17:3:42"):]
    assert Cursor.parse(text) == cursor and Cursor.parse(text).token == token
    assert Cursor.parse("17:3:42") != cursor and Cursor.parse("17:3:42").token == ""


def test_cursor_without_token_keeps_its_text_form():
    assert Cursor(1, 2, 3).format() == "1:2:3" == Cursor(1, 2, 3, "").format()
    assert Cursor.parse("1:2:3#tok").format() == "1:2:3#tok"


@pytest.mark.parametrize("bad", ["1:2:3#", "#tok", "1:2#tok", "1:2:3:4#tok", "a:b:c#tok"])
def test_cursor_with_token_rejects_garbage(bad):
    with pytest.raises(ValueError):
        Cursor.parse(bad)


def test_a_change_is_stored_as_its_canonical_json_and_reads_back_as_rows_of_earlier_versions_do():
    import json as _json

    ch = Change(Kind.MSG_ADD, "Entwürfe/日本語 \"q\"", mid=7, sha256="a" * 64, size=12, flags=("\\Seen", "$Label"),
                internaldate="2026-12-07T03:04:05+01:00")
    text, digest = ch.encoded()
    assert digest == ch.digest() and text.encode() == ch.canonical()
    assert Change.from_dict(_json.loads(text)) == ch
    assert "Entwürfe/日本語" in text  # UTF-8 text, not escapes
    earlier = _json.dumps(ch.to_dict(), separators=(",", ":"))  # how rows were stored before
    assert earlier != text and "\\u" in earlier
    again = Change.from_dict(_json.loads(earlier))
    assert again == ch and again.encoded() == (text, digest)
