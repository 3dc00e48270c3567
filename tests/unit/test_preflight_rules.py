"""Pre-flight findings from what was learnt about a server (pure)."""
from __future__ import annotations

from mailrepl.shared.engines.preflight_rules import ProbeOutcome, ServerProbe, analyse

FULL = frozenset({"CONDSTORE", "QRESYNC", "UIDPLUS", "MOVE", "MULTIAPPEND", "NOTIFY", "IDLE", "OBJECTID", "ACL"})


def levels(p: ServerProbe) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in analyse(p):
        out.setdefault(f.topic, []).append(f.level)
    return out


def test_a_server_with_everything_passes():
    p = ServerProbe("s", "imap", capabilities=FULL, rights="lrswipkxtea", skew_seconds=2.0,
                    outcomes=(ProbeOutcome("8-bit header", True),))
    assert not any(f.level in ("warning", "blocker") for f in analyse(p))


def test_missing_required_capabilities_and_rights_are_blockers():
    p = ServerProbe("s", "imap", capabilities=frozenset({"CONDSTORE", "ACL"}), rights="lr")
    found = {f.topic: f for f in analyse(p) if f.level == "blocker"}
    assert "QRESYNC" in found["capabilities"].text and "UIDPLUS" in found["capabilities"].text
    assert "i (insert)" in found["rights"].text and found["rights"].fix


def test_cyrus_debian_defaults_are_flagged_with_what_to_change():
    p = ServerProbe("c", "imap", capabilities=FULL | {"X-REPLICATION"}, separator=".", prefix="INBOX.",
                    rights="lrswipkxtecda", outcomes=(ProbeOutcome("8-bit header", True, altered="8-bit header bytes rewritten"),
                                                      ProbeOutcome("bare LF", False, reason="NO bare newlines")))
    by = {f.topic: f for f in analyse(p)}
    assert by["probe 8-bit header"].level == "blocker" and by["probe 8-bit header"].fix == "munge8bit: no in imapd.conf"
    assert by["namespace"].level == "warning" and "altnamespace: yes" in by["namespace"].fix
    assert by["probe bare LF"].level == "warning"
    assert by["probe 8-bit header"].line().startswith("c: blocker probe 8-bit header: stored altered")


def test_unreachable_server_and_clock_skew():
    (f,) = analyse(ServerProbe("x", "imap", error="connection refused"))
    assert f.level == "blocker" and f.topic == "connection"
    assert levels(ServerProbe("s", "imap", capabilities=FULL, skew_seconds=-400.0))["clock"] == ["warning"]


def test_ews_servers_get_the_probe_only():
    p = ServerProbe("e", "ews", outcomes=(ProbeOutcome("8-bit header", True),), skew_seconds=0.0)
    assert set(levels(p)) == {"probe 8-bit header", "clock"}
