"""Where secrets come from and what is refused: files and systemd credentials, private config
files, weak and reused tokens, one-line errors for hostile configs, escaped log lines."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from mailrepl.gateway.settings import load_source_settings
from mailrepl.recovery.settings import load_recovery_settings
from mailrepl.shared.config.toml_reader import token_weakness
from mailrepl.shared.errors import ConfigError
from mailrepl.shared.runtime.process import SafeFormatter, escape_controls
from tests.unit.test_settings import RECOVERY, SOURCE, edit

ADMIN = "admin-t-Xq7Lm2Np9Rs4Tv8Wy3Zb6Cd"
PEER = "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy"
OTHER = "file-token-Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8"
REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def error_of(load, path: Path, environ=None) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, environ or {})
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_secret_from_a_private_file_or_a_systemd_credential(tmp_path):
    write(tmp_path / "admin.token", OTHER + "\n")
    conf = write(tmp_path / "gw.toml", edit(SOURCE, f'admin_token = "{ADMIN}"', 'admin_token_file = "admin.token"'))
    assert load_source_settings(conf, {}).gateway.admin_token == OTHER
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "MAILREPL_PEER_TOKEN", "cred-token-Qr9St8Uv7Wx6Yz5Ab4Cd3")
    s = load_source_settings(conf, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert s.peer.token == "cred-token-Qr9St8Uv7Wx6Yz5Ab4Cd3"
    (tmp_path / "admin.token").chmod(0o644)
    assert "admin.token is readable or writable by others" in error_of(load_source_settings, conf)
    both = write(tmp_path / "both.toml", edit(SOURCE, f'admin_token = "{ADMIN}"',
                                              f'admin_token = "{ADMIN}"\nadmin_token_file = "admin.token"'))
    assert "gateway.admin_token_file: set either admin_token or admin_token_file" in error_of(load_source_settings, both)


def test_a_config_holding_a_secret_must_be_private(tmp_path):
    conf = write(tmp_path / "gw.toml", SOURCE, 0o644)
    message = error_of(load_source_settings, conf)
    assert message.startswith(f"{conf}: gateway.admin_token: this file holds a secret and is readable")
    assert f"chmod 600 {conf}" in message and ADMIN not in message
    # the same file without secrets in it (all from the environment) may be readable
    open_conf = write(tmp_path / "open.toml", SOURCE.replace(f'admin_token = "{ADMIN}"\n', "")
                      .replace(f'token = "{PEER}"\n', "").replace('service_password = "pw"\n', ""), 0o644)
    env = {"MAILREPL_ADMIN_TOKEN": OTHER, "MAILREPL_PEER_TOKEN": PEER, "MAILREPL_SERVER_PRIMARY_PASSWORD": "pw"}
    assert load_source_settings(open_conf, env).gateway.admin_token == OTHER
    # insecure_demo: allowed on loopback only
    demo = write(tmp_path / "demo.toml", edit(SOURCE, 'id = "hq"', 'id = "hq"\ninsecure_demo = true'), 0o644)
    assert load_source_settings(demo, {}).gateway.insecure_demo
    wide = write(tmp_path / "wide.toml", edit(SOURCE, 'id = "hq"', 'id = "hq"\ninsecure_demo = true\nlisten = "0.0.0.0:8470"'))
    assert "insecure_demo: only allowed with a loopback listen address" in error_of(load_source_settings, wide)


@pytest.mark.parametrize("token, problem", [
    ("short-Ab1", "9 characters, at least 24 needed"),
    ("a" * 40, "only 1 distinct characters"),
    ("abcdefghijabcdefghijabcd", "bits, at least 120 needed"),
    ("tökenÄÖÜ-Ab1Cd2Ef3Gh4Ij5Kl6", "only printable ASCII"),
])
def test_weak_tokens_are_refused_with_the_key_named(tmp_path, token, problem):
    assert problem in token_weakness(token)
    conf = write(tmp_path / "gw.toml", edit(SOURCE, f'admin_token = "{ADMIN}"', f'admin_token = "{token}"'))
    message = error_of(load_source_settings, conf)
    assert "gateway.admin_token: the value is too weak" in message and problem in message and token not in message
    assert token_weakness("0123456789abcdef" * 2) is None  # 128 bits in hex pass


def test_reused_tokens_are_refused(tmp_path):
    conf = write(tmp_path / "gw.toml", edit(SOURCE, f'token = "{PEER}"', f'token = "{ADMIN}"'))
    message = error_of(load_source_settings, conf)
    assert message.endswith("peer.token: the same value as gateway.admin_token; every token must be different")
    rec = write(tmp_path / "rec.toml", edit(RECOVERY, 'token = "ingest-t-Ab3Cd6Ef9Gh2Ij5Kl8Mn1Op"',
                                            f'token = "{ADMIN}"'))
    assert "sources[0].token: the same token as gateway.admin_token" in error_of(load_recovery_settings, rec)
    rec = write(tmp_path / "rec2.toml", edit(RECOVERY, 'redirect_key = "redirect-k-Qr6St9Uv2Wx5Yz8Ab1Cd4Ef"',
                                             f'redirect_key = "{ADMIN}"'))
    assert "failover.redirect_key: the same value as gateway.admin_token" in error_of(load_recovery_settings, rec)
    pw = write(tmp_path / "pw.toml", edit(SOURCE, 'service_password = "pw"', f'service_password = "{PEER}"'))
    assert "peer.token: the same value as servers.primary.service_password" in error_of(load_source_settings, pw)


@pytest.mark.parametrize("text, expected", [
    ("a = " + "[" * 100000 + "]" * 100000, "invalid TOML: nested too deeply"),
    (SOURCE.replace('id = "hq"', 'id = "hq"\nstate_url = "postgresql+psycopg://u:pw-Zz@db:abc/x"'),
     "gateway.state_url: expected a port 1-65535 in the database URL"),
    (SOURCE.replace('id = "hq"', 'id = "hq"\nstate_url = "postgresql+psycopg://u:pw-Zz@db:99999/x"'),
     "gateway.state_url: expected a port 1-65535 in the database URL"),
    (SOURCE.replace('id = "hq"', 'id = "hq"\nencryption_key = "c2hvcnQ="'), "gateway.encryption_key: expected 32 random bytes"),
])
def test_hostile_configs_are_one_line_errors(tmp_path, text, expected):
    conf = write(tmp_path / "gw.toml", text)
    message = error_of(load_source_settings, conf)
    assert expected in message and "pw-Zz" not in message
    result = subprocess.run([sys.executable, "-m", "mailrepl", "source", "check-config", "--config", str(conf)],
                            capture_output=True, text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and expected in result.stderr
    assert "Traceback" not in result.stderr and "pw-Zz" not in result.stderr + result.stdout


def test_encryption_keys_from_file_and_environment(tmp_path):
    key = bytes(range(32))
    write(tmp_path / "k1", key.hex())
    write(tmp_path / "old", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
    conf = write(tmp_path / "gw.toml", edit(SOURCE, 'id = "hq"',
                                            'id = "hq"\nencryption_key_file = "k1"\nencryption_old_key_files = ["old"]'))
    s = load_source_settings(conf, {})
    assert s.gateway.encryption.key == key and s.gateway.encryption.old_keys == (key,)
    assert key.hex() not in repr(s) and "at-rest encryption on" in s.summary()
    env_key = "ff" * 32
    s = load_source_settings(conf, {"MAILREPL_ENCRYPTION_KEY": env_key})
    assert s.gateway.encryption.key == bytes.fromhex(env_key)


def test_log_lines_escape_control_characters():
    assert escape_controls("a\nb\rc\x00d\x1be\u2028f\tg") == "a\\nb\\rc\\0d\\x1be\\u2028f\tg"
    record = logging.LogRecord("mailrepl.x", logging.WARNING, __file__, 1, "mailbox %s: %s",
                               ("alice\n2024-01-01 CRITICAL forged", "x\r\x00"), None)
    line = SafeFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in line and "\r" not in line and line == (
        "WARNING mailbox alice\\n2024-01-01 CRITICAL forged: x\\r\\0")


def test_text_that_reorders_or_hides_itself_is_escaped_too():
    """Bidirectional overrides and zero-width characters in an address or path would make a log
    line or audit entry read differently from what it holds: they are written as escapes."""
    assert escape_controls("alice\u202egpj.exe") == "alice\\u202egpj.exe"
    assert escape_controls("bo\u200bb\ufeff") == "bo\\u200bb\\ufeff"
    assert escape_controls("plain text, tab\tand ünïcödé") == "plain text, tab\tand ünïcödé"
