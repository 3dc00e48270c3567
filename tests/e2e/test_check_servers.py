"""``mailrepl check-servers``: the pre-flight check flags Debian-default Cyrus (munge8bit, the
``INBOX.`` namespace) and passes on the recommended configuration and on Dovecot; the probe's
scratch folder is removed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.canonical_compare import adapter_for
from tests.support.gateways import GatewayPair

pytestmark = [pytest.mark.dovecot, pytest.mark.cyrus]


def check(config, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailrepl", "check-servers", "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="250"), check=False)


def folders(server, user) -> set[str]:
    session = adapter_for(server).open(user)
    try:
        return {f.name for f in session.list_folders()}
    finally:
        session.close()


@pytest.mark.parametrize("profile", ["debian-default", "recommended"])
def test_check_servers(profile, cyrus_instances, dovecot_factory, tmp_path):
    cyrus = cyrus_instances(profile)
    user = cyrus.unique_user("pre")
    standby = dovecot_factory("standby", [user])
    pair = GatewayPair(tmp_path, cyrus, standby, users=[user], source_state=f"sqlite:///{tmp_path}/s.sqlite",
                       recovery_state=f"sqlite:///{tmp_path}/r.sqlite")
    before = folders(cyrus, user)
    result = check(pair.source.config)
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("primary: ") for line in lines), result.stdout + result.stderr
    by_topic = {}
    for line in lines:
        level, rest = line.removeprefix("primary: ").split(None, 1)
        by_topic.setdefault(rest.split(":", 1)[0], []).append((level, line))
    if profile == "debian-default":
        assert result.returncode == 1
        ((level, line),) = by_topic["probe 8-bit header"]
        assert level == "blocker" and "8-bit header bytes rewritten" in line and "munge8bit: no" in line
        ((level, line),) = by_topic["namespace"]
        assert level == "warning" and "'INBOX.'" in line and "altnamespace: yes" in line
    else:
        assert result.returncode == 0, result.stdout
        assert by_topic["probe 8-bit header"] == [("ok", "primary: ok      probe 8-bit header: stored as sent")]
        assert by_topic["namespace"][0][0] == "ok"
    assert any(level == "ok" and "CONDSTORE, QRESYNC, UIDPLUS" in line for level, line in by_topic["capabilities"])
    assert by_topic["rights"][0][0] == "ok" and "clock" in by_topic
    ((level, line),) = by_topic["probe bare LF"]
    assert level == "warning" and "bare newlines" in line  # Cyrus refuses bare LF in every configuration
    assert folders(cyrus, user) == before  # the scratch folder is gone
    # the standby side: a recovery config, Dovecot, JSON
    dovecot = check(pair.recovery.config, "--json")
    assert dovecot.returncode == 0, dovecot.stdout + dovecot.stderr
    report = json.loads(dovecot.stdout)
    assert report["blockers"] == 0 and {f["server"] for f in report["findings"]} == {"standby"}
