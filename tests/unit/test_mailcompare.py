"""The mailbox oracle's pure parts: FETCH parsing, names, dates, and the difference report."""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from tests.support.dovecot import lmtp_recipient, render_config
from tests.support.mailcompare import (canonical_folder_name, corpus_files, describe_difference,
                                       internaldate_to_utc, parse_fetch)


def h(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def test_parse_fetch_any_item_order_and_recent_dropped():
    data = [
        (b'1 (FLAGS (\\Seen \\Recent $Label1) INTERNALDATE "03-Sep-2024 10:00:00 +0200" BODY[] {5}', b"hello"),
        b")",
        (b'2 (INTERNALDATE " 4-Sep-2024 00:30:00 -0100" BODY[] {3}', b"a\0b"),
        b" FLAGS ())",
        b"3 (FLAGS (\\Deleted))",  # unsolicited flag update: no body, not a message of this fetch
    ]
    assert parse_fetch(data) == [
        (h(b"hello"), frozenset({"\\Seen", "$Label1"}), "2024-09-03T08:00:00+00:00"),
        (h(b"a\0b"), frozenset(), "2024-09-04T01:30:00+00:00"),
    ]


def test_internaldate_is_locale_free_and_utc():
    assert internaldate_to_utc("31-Dec-2023 23:59:59 -0130") == "2024-01-01T01:29:59+00:00"
    with pytest.raises(AssertionError):
        internaldate_to_utc("yesterday")


def test_folder_names_are_canonical():
    assert canonical_folder_name(b"Entw&APw-rfe.Alt", ".") == "Entwürfe/Alt"
    assert canonical_folder_name(b"inbox", "/") == "INBOX"
    assert canonical_folder_name(b"Inbox.Sub", ".") == "INBOX/Sub"
    assert canonical_folder_name(b"R&-D", None) == "R&D"


def test_difference_report_names_folders_and_messages():
    seen = (h(b"1"), frozenset({"\\Seen"}), "2024-09-03T08:00:00+00:00")
    unseen = (h(b"1"), frozenset(), "2024-09-03T08:00:00+00:00")
    other = (h(b"2"), frozenset(), "2024-09-03T08:00:00+00:00")
    third = (h(b"3"), frozenset(), "2024-09-03T08:00:00+00:00")
    a = {"INBOX": Counter([seen, other, third]), "Lists/dev": Counter([other])}
    b = {"INBOX": Counter([unseen, other, other]), "Junk": Counter()}
    assert describe_difference(a, dict(a)) == ""
    report = describe_difference(a, b, "primary", "standby")
    assert "folder 'Lists/dev': only on primary (1 message)" in report
    assert "folder 'Junk': only on standby (0 messages)" in report
    assert "folder 'INBOX': 3 on primary, 3 on standby" in report
    assert f"{h(b'1')[:12]}: primary flags={{\\Seen}} date=2024-09-03T08:00:00+00:00 / standby flags={{}}" in report
    assert f"{h(b'2')[:12]} flags={{}} date=2024-09-03T08:00:00+00:00: duplicated on standby (2 copies, 1 on primary)" \
        in report
    assert f"{h(b'3')[:12]} flags={{}} date=2024-09-03T08:00:00+00:00: missing on standby" in report


def test_corpus_location_is_overridable_and_must_not_be_empty(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.eml").write_bytes(b"Subject: x\r\n\r\n")
    (tmp_path / "notes.txt").write_text("not mail")
    monkeypatch.setenv("MAILREPL_CORPUS", str(tmp_path))
    assert corpus_files() == [tmp_path / "a" / "x.eml"]
    monkeypatch.setenv("MAILREPL_CORPUS", str(tmp_path / "a" / "missing"))
    with pytest.raises(FileNotFoundError, match="MAILREPL_CORPUS"):
        corpus_files()


def test_template_rendering_refuses_unknown_placeholders():
    assert render_config("port = @PORT@ # @PORT@", {"PORT": "1"}) == "port = 1 # 1"
    with pytest.raises(ValueError, match="HOST"):
        render_config("a = @HOST@", {})


def test_lmtp_recipient_quotes_folders_that_are_not_atoms():
    assert lmtp_recipient("alice", None) == "alice@localhost"
    assert lmtp_recipient("alice", "Lists/dev") == "alice+Lists/dev@localhost"
    assert lmtp_recipient("alice", 'My "Folder"') == '"alice+My \\"Folder\\""@localhost'
    with pytest.raises(ValueError):
        lmtp_recipient("alice", "Entwürfe")
