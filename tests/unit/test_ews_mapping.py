"""IMAP flags and folder names <-> Exchange item and folder properties (no server needed)."""
from __future__ import annotations

import pytest

from mailrepl.shared.adapters.ews_mapping import (
    MSGFLAG_READ,
    MSGFLAG_UNSENT,
    category_to_keyword,
    flags_to_state,
    folder_fid,
    folder_uidvalidity,
    name_to_segment,
    segment_to_name,
    state_to_flags,
)


@pytest.mark.parametrize("flags", [
    set(), {"\\Seen"}, {"\\Flagged"}, {"\\Answered"}, {"\\Draft"},
    {"\\Seen", "\\Flagged", "\\Answered", "\\Draft", "$Label1", "$Work"}, {"Project", "$Forwarded"},
])
def test_flags_round_trip_through_item_state(flags):
    st = flags_to_state(flags)
    back = state_to_flags(st.is_read, st.flag_status, st.last_verb, st.message_flags, st.categories)
    assert back == frozenset(flags)


def test_item_state_values():
    st = flags_to_state({"\\Seen", "\\Flagged", "\\Answered", "\\Draft", "$b", "$a", "\\Deleted", "\\Recent"})
    assert (st.is_read, st.flag_status, st.last_verb) == (True, 2, 102)
    assert st.message_flags == MSGFLAG_READ | MSGFLAG_UNSENT
    assert st.categories == ("$a", "$b")  # system flags never become categories; \Deleted is dropped
    plain = flags_to_state(set())
    assert (plain.is_read, plain.flag_status, plain.last_verb, plain.message_flags, plain.categories) == (
        False, None, None, 0, ())


def test_exchange_states_that_have_no_flag():
    assert state_to_flags(None, 1, 104, MSGFLAG_READ, None) == frozenset()  # complete, forwarded, read bit only
    assert state_to_flags(False, 0, 103, 0, []) == {"\\Answered"}  # reply all


@pytest.mark.parametrize("category, keyword", [
    ("Project", "Project"), ("Red category", "Red_category"), ('a(b)"c\\d]', "a_b__c_d_"),
    ("  spaced  ", "spaced"), ("   ", None), ("Grün", "Grün"),
])
def test_categories_become_valid_imap_keywords(category, keyword):
    assert category_to_keyword(category) == keyword


def test_folder_identity_is_stable_and_distinct():
    a, b = "AAMkADQ1" + "x" * 100, "AAMkADQ2" + "x" * 100
    assert folder_uidvalidity(a) == folder_uidvalidity(a) and folder_uidvalidity(a) != folder_uidvalidity(b)
    assert 0 < folder_uidvalidity(a) < 2**31
    assert len(folder_fid(a)) == 40 and folder_fid(a) != folder_fid(b)


def test_slash_in_display_names():
    assert segment_to_name("a/b") == "a\u2215b" and name_to_segment("a\u2215b") == "a/b"
