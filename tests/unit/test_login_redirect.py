"""Login redirect (``GET /auth``, nginx ``auth_http``): user names matched as the server matches
them, the key required unless explicitly disabled.

A real recovery gateway app from a TOML config (its state store with replicas as cutover leaves
them); the standby is 127.0.0.1, the primary 127.0.0.2, so ``Auth-Server`` says where a login goes.
"""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import mailrepl.recovery.app
from mailrepl.recovery.settings import load_recovery_settings
from mailrepl.shared.errors import ConfigError
from mailrepl.shared.store.models import Replica

KEY = "redirect-key-Hq3Wm8Zr1Tn6Yb4Kc9Pv2Xs7"
STANDBY, PRIMARY = "127.0.0.1", "127.0.0.2"

CONFIG = """\
[gateway]
id = "dr"
state_url = "sqlite:///state.sqlite"
admin_token = "admin-token-Gd5Rf1Uj8Ek3Ol6Ia9Sw2Qz"
plaintext = true

[failover]
{failover}

[[servers]]
name = "standby"
host = "127.0.0.1"
port = 1143
tls = "none"
service_user = "repl"
service_password = "pw"

[[primaries]]
name = "primary"
host = "127.0.0.2"
port = 2143
tls = "none"
service_user = "repl"
service_password = "pw"

[[sources]]
id = "hq"
token = "ingest-token-Mb7Vn2Cx5Zl8Ka1Js4Hd9Fg"
servers = ["primary"]
"""


def gateway(tmp_path, failover: str):
    conf = tmp_path / "recovery.toml"
    conf.write_text(CONFIG.format(failover=failover))
    conf.chmod(0o600)
    gw = mailrepl.recovery.app.RecoveryGateway(load_recovery_settings(conf, {}))
    with gw.store.tx() as s:  # alice and Bob.Smith were cut over; bob replicates
        for address, state in (("alice", "active-at-dr"), ("bob", "replicating"), ("Bob.Smith", "active-at-dr")):
            s.add(Replica(source_id="hq", server="primary", address=address, target="standby", site_state=state))
    return gw, TestClient(gw.app())


def login(c: TestClient, user: str, key: str | None = KEY, protocol: str = "imap") -> dict[str, str]:
    headers = {"Auth-User": user, "Auth-Pass": "secret", "Auth-Protocol": protocol, "Auth-Method": "plain"}
    if key is not None:
        headers["X-Mailrepl-Key"] = key
    r = c.get("/auth", headers=headers)
    assert r.status_code == 200
    return {k: r.headers[k] for k in ("Auth-Status", "Auth-Server", "Auth-Port", "Auth-Wait") if k in r.headers}


def test_user_names_are_matched_case_insensitively_by_default(tmp_path):
    _, c = gateway(tmp_path, f'redirect_key = "{KEY}"')
    to_standby = {"Auth-Status": "OK", "Auth-Server": STANDBY, "Auth-Port": "1143"}
    to_primary = {"Auth-Status": "OK", "Auth-Server": PRIMARY, "Auth-Port": "2143"}
    # alice is active at DR: "ALICE" must not reach the primary (a split brain)
    for user in ("alice", "ALICE", "Alice", "ALICE*master", " alice "):
        assert login(c, user) == to_standby, user
    assert login(c, "BOB") == to_primary
    assert login(c, "bob.smith") == to_standby and login(c, "BOB.SMITH") == to_standby
    assert login(c, "nobody") == to_primary  # not replicated: the only primary


def test_case_sensitive_matching_when_configured(tmp_path):
    _, c = gateway(tmp_path, f'redirect_key = "{KEY}"\nredirect_case_sensitive = true')
    assert login(c, "alice")["Auth-Server"] == STANDBY
    assert login(c, "Bob.Smith")["Auth-Server"] == STANDBY
    # another user name to a case-sensitive server: not alice's mailbox, the primary's login
    assert login(c, "ALICE")["Auth-Server"] == PRIMARY
    assert login(c, "bob.smith")["Auth-Server"] == PRIMARY


def test_a_missing_or_wrong_key_is_refused(tmp_path):
    _, c = gateway(tmp_path, f'redirect_key = "{KEY}"')
    for key in (None, "", "wrong", KEY[:-1], KEY + "x", KEY.upper()):
        answer = login(c, "alice", key)
        assert answer["Auth-Status"].startswith("Temporary") and "Auth-Server" not in answer, key
    assert login(c, "alice")["Auth-Status"] == "OK"


def test_the_key_is_required_unless_explicitly_disabled(tmp_path):
    conf = tmp_path / "recovery.toml"
    conf.write_text(CONFIG.format(failover="auto = false"))
    conf.chmod(0o600)  # it holds secrets
    with pytest.raises(ConfigError) as exc:
        load_recovery_settings(conf, {})
    assert "failover.redirect_key: missing" in str(exc.value) and "redirect_key_required = false" in str(exc.value)
    # without a [failover] table too
    conf.write_text(CONFIG.format(failover="").replace("[failover]\n", ""))
    with pytest.raises(ConfigError, match="failover.redirect_key: missing"):
        load_recovery_settings(conf, {})
    # from the environment
    settings = load_recovery_settings(conf, {"MAILREPL_REDIRECT_KEY": KEY})
    assert settings.failover.redirect_key == KEY and KEY not in repr(settings)
    conf.write_text(CONFIG.format(failover='redirect_key = "has space"'))
    with pytest.raises(ConfigError, match="failover.redirect_key: the value contains whitespace"):
        load_recovery_settings(conf, {})
    # explicitly disabled: /auth answers without a key
    _, c = gateway(tmp_path, "redirect_key_required = false")
    assert login(c, "ALICE", None)["Auth-Server"] == STANDBY
    conf.write_text(CONFIG.format(failover="redirect_key_required = 0"))
    with pytest.raises(ConfigError, match="failover.redirect_key_required: expected"):
        load_recovery_settings(conf, {})
