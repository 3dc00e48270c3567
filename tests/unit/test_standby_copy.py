"""What a standby did to a message: identity for reports, known alterations (pure)."""
from __future__ import annotations

import hashlib

from mailrepl.shared.content.standby_copy import (
    HEADER_LIMIT,
    describe_change,
    identity,
    munge_8bit_headers,
    standby_forms,
)

EIGHT_BIT = (b"From: =?utf-8?q?H=C3=A4nschel?= <h@example.org>\r\nSubject: H\xc3\x84NSCHEL\r\n"
             b"Message-ID: <m1@example.org>\r\nDate: Mon, 6 May 2024 07:08:09 +0000\r\n\r\nK\xc3\xb6rper \xc3\xa4\r\n")


def test_identity_reads_message_id_subject_and_date():
    got = identity(b"Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n  folded\r\nMessage-ID:\r\n <a@b>\r\nDate: x\r\n\r\nbody\r\n")
    assert (got.message_id, got.subject, got.date) == ("<a@b>", "Grüße folded", "x")
    assert "Message-ID '<a@b>'" in got.describe()


def test_identity_is_bounded_and_never_fails():
    assert identity(b"").describe() == "no Message-ID, subject or date"
    huge = b"X-Pad: " + b"a" * (2 * HEADER_LIMIT) + b"\r\nSubject: late\r\n\r\n"
    assert identity(huge).subject is None  # beyond the limit: not read
    assert len(identity(b"Subject: " + b"z" * 5000 + b"\r\n\r\n").subject) == 300
    assert identity(b"Subject: =?bogus?q?x?=\r\n\r\n").subject
    assert identity(b"no header at all\n").message_id is None


def test_munge_rewrites_header_bytes_only():
    munged = munge_8bit_headers(EIGHT_BIT)
    assert b"HXXNSCHEL" in munged and munged.endswith(b"K\xc3\xb6rper \xc3\xa4\r\n") and len(munged) == len(EIGHT_BIT)


def test_standby_forms_name_each_known_alteration():
    forms = standby_forms(EIGHT_BIT)
    assert forms[hashlib.sha256(EIGHT_BIT).hexdigest()] == "stored as sent"
    assert forms[hashlib.sha256(munge_8bit_headers(EIGHT_BIT)).hexdigest()] == "8-bit header bytes rewritten"
    lf = b"Subject: a\n\nb\n"
    assert standby_forms(lf)[hashlib.sha256(b"Subject: a\r\n\r\nb\r\n").hexdigest()] == "bare LF stored as CRLF"
    assert len(standby_forms(b"Subject: plain\r\n\r\nascii\r\n")) == 1


def test_describe_change():
    assert describe_change(EIGHT_BIT, EIGHT_BIT) == "unchanged"
    assert describe_change(EIGHT_BIT, munge_8bit_headers(EIGHT_BIT)) == "8-bit header bytes rewritten"
    other = EIGHT_BIT.replace(b"K\xc3\xb6rper", b"Body")
    assert describe_change(EIGHT_BIT, other).startswith("body changed")
    assert describe_change(EIGHT_BIT, b"X-Added: 1\r\n" + EIGHT_BIT).startswith("header changed")
