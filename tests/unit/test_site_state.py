"""The per-mailbox site state machine, the automatic failover decision, id translation and the
login redirect: pure logic (the redirect against a real SQLite state store)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mailrepl.recovery.autofailover import should_fail_over
from mailrepl.recovery.failback import translate
from mailrepl.recovery.redirect import Redirect
from mailrepl.shared.errors import ConflictError, IllegalTransition
from mailrepl.shared.model import Change, Kind
from mailrepl.shared.config.settings_common import ImapServerSettings
from mailrepl.shared.site_state import SiteState, active_site, captures_at_dr, next_state, replays_into_standby
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import Replica

S = SiteState


def test_the_whole_cycle_and_back():
    state = S.REPLICATING
    seen = []
    for action in ("cutover", "drained", "failback", "confirm", "rebased"):
        t = next_state(state, action)
        assert t.changed
        seen.append(t.after)
        state = t.after
    assert seen == [S.CUTTING_OVER, S.ACTIVE_AT_DR, S.FAILING_BACK, S.SWITCHING_BACK, S.REPLICATING]


@pytest.mark.parametrize("state,action", [
    (S.CUTTING_OVER, "cutover"), (S.ACTIVE_AT_DR, "cutover"), (S.FAILING_BACK, "failback"),
    (S.SWITCHING_BACK, "failback"), (S.SWITCHING_BACK, "confirm"), (S.REPLICATING, "rebased"),
    (S.ACTIVE_AT_DR, "abort-failback"),
])
def test_asking_again_is_a_no_op(state, action):
    t = next_state(state, action)
    assert not t.changed and t.after == state


@pytest.mark.parametrize("state,action,words", [
    (S.REPLICATING, "failback", "cut over first"),
    (S.FAILING_BACK, "cutover", "from replicating only"),
    (S.SWITCHING_BACK, "cutover", "from replicating only"),
    (S.ACTIVE_AT_DR, "confirm", "failback first"),
    (S.REPLICATING, "confirm", "failback first"),
    (S.ACTIVE_AT_DR, "rebased", "switching back"),
    (S.REPLICATING, "drained", "cutting over"),
])
def test_illegal_moves_say_why(state, action, words):
    with pytest.raises(IllegalTransition) as err:
        next_state(state, action)
    assert words in str(err.value) and state.value in str(err.value)
    assert isinstance(err.value, ConflictError)  # answered 409


def test_unknown_action_is_a_programming_error():
    with pytest.raises(ValueError):
        next_state("replicating", "teleport")


def test_who_serves_users_and_fencing():
    assert [active_site(s) for s in S] == ["primary", "dr", "dr", "dr", "primary"]
    # the standby is replayed into only while users are on the primary
    assert [replays_into_standby(s) for s in S] == [True, False, False, False, False]
    assert [captures_at_dr(s) for s in S] == [False, False, True, True, False]


T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("up,down_since,failed_over_at,after,expected", [
    (True, None, None, 999, False),  # up
    (False, T0, None, 59, False),  # not long enough
    (False, T0, None, 60, True),
    (False, T0, T0 + timedelta(seconds=61), 120, False),  # already done in this outage
    (False, T0, T0 - timedelta(days=1), 120, True),  # done in an earlier outage
])
def test_automatic_failover_decision(up, down_since, failed_over_at, after, expected):
    now = T0 + timedelta(seconds=after)
    assert should_fail_over(up=up, down_since=down_since, failed_over_at=failed_over_at, now=now,
                            outage_seconds=60) is expected


def test_reverse_changes_carry_source_ids_or_negated_dr_ids():
    alias = {10: 501}
    flags = Change(Kind.MSG_FLAGS, "INBOX", mid=10, flags=("\\Seen",))
    assert translate(flags, alias).mid == 501
    add = Change(Kind.MSG_ADD, "INBOX", mid=11, sha256="a" * 64, size=3, flags=(),
                 internaldate="2024-01-01T00:00:00+00:00")
    assert translate(add, alias).mid == -11
    rep = Change(Kind.MSG_REPLACE, "Drafts", mid=12, old_mid=10, sha256="b" * 64, size=1, flags=(),
                 internaldate="2024-01-01T00:00:00+00:00")
    out = translate(rep, alias)
    assert (out.mid, out.old_mid) == (-12, 501)
    folder = Change(Kind.FOLDER_CREATE, "New")
    assert translate(folder, alias) is folder


def _server(name: str, port: int) -> ImapServerSettings:
    return ImapServerSettings(name=name, host="127.0.0.1", port=port, tls="none", service_user="repl",
                              service_password="x")


def test_redirect_follows_the_site_state(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/r.sqlite")
    store.migrate()
    with store.tx() as s:
        s.add(Replica(source_id="hq", server="primary", address="alice", target="standby"))
    redirect = Redirect(store, {"primary": _server("primary", 1143)}, {"standby": _server("standby", 2143)},
                        lambda p: "standby")

    def port(user="alice", protocol="imap"):
        a = redirect.answer(user, protocol)
        return a.headers.get("Auth-Port") if a.ok else a.headers["Auth-Status"]

    assert port() == "1143"
    assert port("alice*repl") == "1143"  # master-user login routed like the user
    assert redirect.answer("alice", "imap").headers["Auth-Server"] == "127.0.0.1"
    for state, expected in (("cutting-over", "Mailbox is being moved, try again in a moment"),
                            ("active-at-dr", "2143"), ("failing-back", "2143"), ("switching-back", "1143"),
                            ("replicating", "1143")):
        with store.tx() as s:
            s.query(Replica).one().site_state = state
        assert port() == expected, state
    assert port("nobody") == "1143"  # not replicated: the only primary
    assert not redirect.answer("", "imap").ok
    store.dispose()
