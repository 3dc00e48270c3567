"""IMAP response parsing and command formatting, without sockets."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mailrepl.shared.adapters.imap_format import (
    Literal,
    astring,
    decode_mutf7,
    encode_mutf7,
    flag_list,
    format_imap_date,
    parse_imap_date,
    quoted,
    uid_set,
    uid_set_batches,
)
from mailrepl.shared.adapters.imap_mailbox import FolderNames
from mailrepl.shared.adapters.imap_messages import plan_chunks
from mailrepl.shared.adapters.imap_protocol import (
    ConnectionClosed,
    ResponseReader,
    expand_sequence_set,
    parse_appenduid,
    parse_copyuid,
    parse_fetch,
    parse_list,
    parse_select_state,
    parse_status,
    parse_vanished,
    restore_nul,
)
from mailrepl.shared.errors import ProtocolError
from mailrepl.shared.model import UidSet, format_internaldate, parse_internaldate


def reader(data: bytes, chunk: int = 1 << 20, bufsize: int = 64) -> ResponseReader:
    """A reader fed from ``data`` in pieces of at most ``chunk`` bytes (as recv would deliver them)."""
    pos = 0

    def recv_into(view: memoryview) -> int:
        nonlocal pos
        n = min(len(view), chunk, len(data) - pos)
        view[:n] = data[pos : pos + n]
        pos += n
        return n

    return ResponseReader(recv_into, bufsize=bufsize)


def one(data: bytes):
    return reader(data).read()


# --- framing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_literals_split_across_reads_are_reassembled(chunk):
    body = b"Subject: x\r\n\r\nA\x00B\r\n" + b"z" * 300 + b"\r\n"
    wire = (b"* 3 FETCH (UID 9 BODY[] {%d}\r\n" % len(body)) + body + b" FLAGS (\\Seen))\r\n" + b"a1 OK done\r\n"
    r = reader(wire, chunk=chunk)
    fetch = parse_fetch(r.read())
    assert (fetch.seq, fetch.uid, fetch.body, fetch.flags) == (3, 9, body, {"\\Seen"})
    done = r.read()
    assert (done.tag, done.name, done.text) == ("a1", "OK", "done")


@pytest.mark.parametrize("chunk", [5, 4096, 1 << 20])
def test_big_literal_goes_straight_into_its_own_buffer(chunk):
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    wire = b"* 1 FETCH (UID 1 BINARY[] ~{%d}\r\n" % len(body) + body + b")\r\n"
    assert parse_fetch(reader(wire, chunk=chunk).read()).binary == body


def test_a_line_longer_than_the_buffer_grows_it():
    flags = " ".join(f"$k{i}" for i in range(500))
    r = reader(f"* FLAGS ({flags})\r\n".encode(), chunk=10, bufsize=16)
    assert len(r.read().args[0]) == 500


def test_closed_connection_mid_response():
    with pytest.raises(ConnectionClosed):
        reader(b"* 1 FETCH (BODY[] {10}\r\nabc").read()
    with pytest.raises(ConnectionClosed):
        reader(b"* OK no line end").read()


def test_garbage_is_a_protocol_error():
    for bad in (b"* 1 FETCH (UID 1\r\n", b'* LIST () "/" "unterminated\r\n', b"a1 FETCH (x)\r\n", b"\r\n"):
        with pytest.raises(ProtocolError):
            one(bad)


# --- tokens and response codes ------------------------------------------------------------------


def test_nested_lists_nil_quoted_strings_and_atoms():
    r = one(b'* NAMESPACE (("" "/" "X-EXT" ("a" NIL))) NIL (("Other/" "/"))\r\n')
    assert r.name == "NAMESPACE"
    assert r.args == [[[b"", b"/", b"X-EXT", [b"a", None]]], None, [[b"Other/", b"/"]]]
    q = one(b'* STATUS "say \\"hi\\" \\\\ there" (MESSAGES 2)\r\n')
    assert parse_status(q) == ('say "hi" \\ there', {"MESSAGES": 2})


@pytest.mark.parametrize(
    "line, code, args",
    [
        (b"a1 OK [APPENDUID 38505 3955:3957] APPEND completed", "APPENDUID", ["38505", "3955:3957"]),
        (b"a1 OK [COPYUID 38505 304,319:320 3956:3958] Done", "COPYUID", ["38505", "304,319:320", "3956:3958"]),
        (b"* OK [HIGHESTMODSEQ 715194045007] Highest", "HIGHESTMODSEQ", ["715194045007"]),
        (b"* OK [UIDVALIDITY 3857529045] UIDs valid", "UIDVALIDITY", ["3857529045"]),
        (b"* OK [UIDNEXT 4392] Predicted next UID", "UIDNEXT", ["4392"]),
        (b"a1 NO [NONEXISTENT] Mailbox doesn't exist: Nope", "NONEXISTENT", []),
        (b"a1 NO [TRYCREATE] Mailbox doesn't exist: Nope", "TRYCREATE", []),
        (b"a1 NO [ALREADYEXISTS] Mailbox already exists", "ALREADYEXISTS", []),
        (b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.", "AUTHENTICATIONFAILED", []),
        (b"* OK [CLOSED] Previous mailbox closed.", "CLOSED", []),
        (b"* OK [PERMANENTFLAGS (\\Seen \\*)] Flags permitted.", "PERMANENTFLAGS", [["\\Seen", "\\*"]]),
        (b"* OK [X-ODD some (unbalanced] text", "X-ODD", ["some (unbalanced"]),
    ],
)
def test_response_codes(line, code, args):
    r = one(line + b"\r\n")
    assert (r.code, r.code_args) == (code, args)
    assert r.text and not r.text.startswith("[")


def test_capability_continuation_and_numbered_responses():
    caps = one(b"* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN QRESYNC\r\n")
    assert caps.args == ["IMAP4rev1", "LITERAL+", "AUTH=PLAIN", "QRESYNC"]
    cont = one(b"+ idling\r\n")
    assert (cont.tag, cont.text) == ("+", "idling")
    assert parse_select_state([one(b"* 17 EXISTS\r\n"), one(b"* OK [UIDVALIDITY 7] x\r\n"),
                               one(b"* OK [UIDNEXT 42] x\r\n"), one(b"* OK [HIGHESTMODSEQ 99] x\r\n")]) == (
        parse_select_state([]).__class__(7, 42, 99, 17))


def test_appenduid_and_copyuid_keep_the_message_order():
    assert parse_appenduid(["38505", "3955:3957"]) == (38505, [3955, 3956, 3957])
    assert parse_copyuid(["38505", "304,319:320", "3956:3958"]) == (38505, {304: 3956, 319: 3957, 320: 3958})
    assert expand_sequence_set("9,3:1,5") == [9, 1, 2, 3, 5]
    with pytest.raises(ProtocolError):
        parse_copyuid(["1", "1:3", "7:8"])
    with pytest.raises(ProtocolError):
        expand_sequence_set("1:*")


# --- FETCH, LIST, STATUS, VANISHED ---------------------------------------------------------------


def test_fetch_attributes():
    body = b"Subject: x\r\n\r\nnul \x00 and 8-bit \xff\r\n"
    wire = (
        b'* 12 FETCH (UID 7 FLAGS (\\Seen \\Recent $Label1) MODSEQ (715194045007) RFC822.SIZE 4242 '
        b'INTERNALDATE "02-Jan-2024 02:04:05 +0100" X-GUID 30a8282c237c066b7b26000083ecc375 '
        b"BODY[] {%d}\r\n" % len(body) + body + b" BINARY[] ~{3}\r\na\x00b EMAILID (M6d99ac3275bb4e)"
        b")\r\n"
    )
    f = parse_fetch(one(wire))
    assert (f.seq, f.uid, f.modseq, f.size) == (12, 7, 715194045007, 4242)
    assert f.flags == {"\\Seen", "$Label1"}  # \Recent is never reported
    assert f.internaldate == datetime(2024, 1, 2, 1, 4, 5, tzinfo=timezone.utc)
    assert f.internaldate.utcoffset() == timedelta(hours=1)
    assert (f.body, f.binary, f.guid) == (body, b"a\x00b", "M6d99ac3275bb4e")
    assert parse_fetch(one(b"* 1 FETCH (UID 1 BODY[] NIL)\r\n")).body == b""
    with pytest.raises(ProtocolError):
        parse_fetch(one(b"* 1 FETCH (UID)\r\n"))
    with pytest.raises(ProtocolError):
        parse_fetch(one(b'* 1 FETCH (INTERNALDATE "yesterday")\r\n'))


def test_vanished_earlier_and_plain():
    assert parse_vanished(one(b"* VANISHED (EARLIER) 41,43:116,118\r\n")) == (
        True, UidSet.from_ranges([(41, 41), (43, 116), (118, 118)]))
    assert parse_vanished(one(b"* VANISHED 405:407\r\n")) == (False, UidSet([405, 406, 407]))


def test_list_entries_in_every_spelling():
    e = parse_list(one(b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n'))
    assert (e.name, e.delimiter, e.has("\\sent"), e.has("\\Noselect")) == ("Sent", "/", True, False)
    assert parse_list(one(b'* LIST (\\Noselect) "." "Lists.dev"\r\n')).name == "Lists.dev"
    assert parse_list(one(b"* LIST () NIL {8}\r\nFlat box\r\n")).delimiter is None
    renamed = parse_list(one(b'* LIST (\\HasNoChildren) "/" {3}\r\n\xc3\xa4y ("OLDNAME" ({3}\r\n\xc3\xa4x))\r\n'))
    assert renamed.name == "äy"


def test_status_values():
    name, values = parse_status(one(
        b"* STATUS Archive (MESSAGES 3 UIDNEXT 9 UIDVALIDITY 1795587107 HIGHESTMODSEQ 12 "
        b"X-GUID 3c36ea1f207c066b7b26000083ecc375 MAILBOXID (F2212ea87-6097))\r\n"))
    assert name == "Archive"
    assert values == {"MESSAGES": 3, "UIDNEXT": 9, "UIDVALIDITY": 1795587107, "HIGHESTMODSEQ": 12,
                      "X-GUID": "3c36ea1f207c066b7b26000083ecc375", "MAILBOXID": "F2212ea87-6097"}


def test_restore_nul_uses_binary_only_where_it_differs_by_nul_alone():
    assert restore_nul(b"A\x80B\x80C", b"A\x00B\x80C") == b"A\x00B\x80C"
    # BINARY[] decoded a part: the server's BODY[] is the best there is
    assert restore_nul(b"CTE: base64\r\n\r\naGk=\x80", b"CTE: binary\r\n\r\nhi\x00") == b"CTE: base64\r\n\r\naGk=\x80"
    assert restore_nul(b"plain \x80", b"plain \x80") == b"plain \x80"


# --- formatting -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, encoded",
    [
        ("INBOX", "INBOX"),
        ("Tom & Jerry", "Tom &- Jerry"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("Entwürfe/Ünter", "Entw&APw-rfe/&ANw-nter"),
        ("&&ü&", "&-&-&APw-&-"),
        ("emoji 📬 box", "emoji &2D3c7A- box"),
        ("tab\there", "tab&AAk-here"),
    ],
)
def test_modified_utf7_round_trip(name, encoded):
    assert encode_mutf7(name) == encoded
    assert decode_mutf7(encoded) == name


def test_modified_utf7_rejects_malformed_names():
    for bad in ("&U,BTFw", "&!!-", "&AA-"):
        with pytest.raises(ValueError):
            decode_mutf7(bad)


def test_folder_names_map_to_the_server_delimiter():
    dotted = FolderNames(".")
    assert dotted.to_server("Lists/dév") == "Lists.d&AOk-v"
    assert dotted.from_server("Lists.d&AOk-v") == "Lists/dév"
    assert dotted.from_server("inbox.Sub") == "INBOX/Sub"
    assert FolderNames("/").to_server("inbox/x") == "INBOX/x"
    assert FolderNames("/").arg('Say "hi"') == b'"Say \\"hi\\""'
    assert FolderNames(None).from_server("a/b") == "a/b"


def test_quoting_and_literal_fallback():
    assert quoted('a "b" \\ c') == b'"a \\"b\\" \\\\ c"'
    assert astring("plain") == b'"plain"'
    assert astring("pässwörd") == Literal("pässwörd".encode())
    assert astring("line\r\nbreak") == Literal(b"line\r\nbreak")
    with pytest.raises(ValueError):
        quoted("nul\0")


def test_flag_lists_are_validated_before_they_reach_the_wire():
    assert flag_list(["\\seen", "$Label1", "\\Recent", "Junk", "$Label1"]) == b"($Label1 Junk \\Seen)"
    assert flag_list([]) == b"()"
    for bad in ("\\Bogus", "two words", "paren(", 'quo"te', "br]acket", "ümlaut", "star*"):
        with pytest.raises(ValueError):
            flag_list([bad])


@pytest.mark.parametrize("offset", [timedelta(hours=1), timedelta(hours=-9, minutes=-30), timedelta(0)])
def test_internaldate_round_trip(offset):
    dt = datetime(2024, 3, 9, 7, 5, 3, tzinfo=timezone(offset))
    text = format_imap_date(dt)
    assert text.startswith(b'"09-Mar-2024 07:05:03 ') and text.endswith(b'"')
    back = parse_imap_date(text[1:-1].decode())
    assert back == dt and back.utcoffset() == offset
    assert parse_internaldate(format_internaldate(back)) == dt  # and through the wire format


def test_internaldate_edge_cases():
    assert parse_imap_date(" 2-Jan-2024 03:04:05 -0000") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    odd = datetime(1900, 1, 1, 0, 0, 0, tzinfo=timezone(timedelta(minutes=19, seconds=32)))  # Amsterdam 1900
    assert format_imap_date(odd) == b'"31-Dec-1899 23:40:28 +0000"'
    with pytest.raises(ValueError):
        format_imap_date(datetime(2024, 1, 1))
    with pytest.raises(ValueError):
        parse_imap_date("02-Foo-2024 03:04:05 +0000")


def test_uid_sets_compress_and_batch_below_the_line_limit():
    assert uid_set([9, 1, 2, 3, 5, 7, 8, 3]) == "1:3,5,7:9"
    with pytest.raises(ValueError):
        uid_set([])
    scattered = list(range(1, 20000, 2))
    batches = uid_set_batches(scattered, max_chars=500)
    assert all(len(b) <= 500 for b in batches) and len(batches) > 1
    assert [u for b in batches for u in UidSet.parse(b)] == scattered
    assert uid_set_batches(range(1, 100001)) == ["1:100000"]


def test_fetch_chunks_are_bounded_by_count_and_bytes():
    uids = list(range(1, 11))
    sizes = {u: 100 for u in uids} | {4: 5000}
    assert plan_chunks(uids, sizes, max_messages=3, max_bytes=1000) == [[1, 2, 3], [4], [5, 6, 7], [8, 9, 10]]
    assert plan_chunks([], {}) == []
