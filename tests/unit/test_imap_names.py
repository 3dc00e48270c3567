"""Canonical folder names <-> server names across namespaces and separators (pure)."""
from __future__ import annotations

import pytest

from mailrepl.shared.adapters.imap_mailbox import personal_namespace
from mailrepl.shared.adapters.imap_names import CYRUS_REFUSED, FolderNames, FolderNameUnrepresentable
from mailrepl.shared.adapters.imap_protocol import parse_response

NAMES = ["INBOX", "Archive", "Release v1.2", "a/b/c/d/e/f", 'Say "hi" & \\ more', "Entwürfe/Ünter",
         "Tom & Jerry", "100% done", "INBOX/child", "dots.and/slash∕inside", "x" * 200]

SERVERS = {
    "dovecot": FolderNames("/"),
    "cyrus-recommended": FolderNames("/", "", CYRUS_REFUSED),
    "cyrus-debian": FolderNames(".", "INBOX.", CYRUS_REFUSED),
    "dotted-no-prefix": FolderNames(".", ""),
}


@pytest.mark.parametrize("server", sorted(SERVERS))
@pytest.mark.parametrize("name", NAMES)
def test_every_name_round_trips_and_keeps_its_levels(server, name):
    names = SERVERS[server]
    raw = names.to_server(name)
    assert raw.isascii()
    assert names.from_server(raw) == name
    if name != "INBOX":
        levels = raw[len(names.prefix):].split(names.delimiter)
        assert len(levels) == name.count("/") + 1  # never split, never merged


def test_separator_in_a_level_is_escaped_not_swapped():
    debian = SERVERS["cyrus-debian"]
    raw = debian.to_server("Release v1.2")
    assert raw.startswith("INBOX.") and raw.count(".") == 1  # the prefix's dot only
    assert debian.from_server("INBOX.Release v1&ICQ-2") == "Release v1.2"


def test_prefix_applied_and_stripped_and_foreign_names_ignored():
    debian = SERVERS["cyrus-debian"]
    assert debian.to_server("Archive") == "INBOX.Archive"
    assert debian.to_server("Lists/dév") == "INBOX.Lists.d&AOk-v"
    assert debian.from_server("INBOX.Lists.d&AOk-v") == "Lists/dév"
    assert debian.from_server("inbox.Sent") == "Sent"
    assert debian.from_server("INBOX") == "INBOX"
    assert debian.from_server("user.bob.Sent") is None
    assert debian.from_server("shared folder") is None


def test_a_slash_inside_a_dotted_servers_level_stays_one_level():
    dotted = SERVERS["cyrus-debian"]
    assert dotted.from_server("INBOX.a/b.c") == "a\u2215b/c"
    assert dotted.to_server("a\u2215b/c") == "INBOX.a&IhU-b.c"  # Cyrus refuses "/" in a dotted name


def test_a_name_that_would_read_back_differently_is_refused():
    with pytest.raises(FolderNameUnrepresentable) as refused:
        SERVERS["cyrus-debian"].to_server("v1\u20242")
    assert not refused.value.retryable
    assert SERVERS["dovecot"].from_server(SERVERS["dovecot"].to_server("v1\u20242")) == "v1\u20242"


def test_unchanged_behaviour_without_namespace():
    assert FolderNames("/").to_server("inbox/x") == "INBOX/x"
    assert FolderNames(".").from_server("inbox.Sub") == "INBOX/Sub"
    assert FolderNames(None).from_server("a/b") == "a/b"


def test_personal_namespace_from_the_namespace_response():
    debian = parse_response([b'* NAMESPACE (("INBOX." ".")) (("user." ".")) (("" "."))'], [])
    modern = parse_response([b'* NAMESPACE (("" "/")) (("Other Users/" "/")) NIL'], [])
    none = parse_response([b"* NAMESPACE NIL NIL NIL"], [])
    assert personal_namespace([debian]) == (".", "INBOX.")
    assert personal_namespace([modern]) == ("/", "")
    assert personal_namespace([none]) is None


def test_characters_cyrus_refuses_are_written_as_look_alikes_and_read_back():
    odd = 'Say "hi" \\ 100% ^up'
    for names in (SERVERS["cyrus-debian"], SERVERS["cyrus-recommended"]):
        raw = names.to_server(odd)
        assert not set('"\\%^') & set(raw.removeprefix(names.prefix))
        assert names.from_server(raw) == odd
        with pytest.raises(FolderNameUnrepresentable):
            names.to_server("full\uff02width")
    assert SERVERS["dovecot"].to_server(odd) == odd
