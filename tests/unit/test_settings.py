"""Gateway settings: the examples load, defaults apply, and every mistake is one ConfigError line
naming the file and the key path."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mailrepl.gateway.settings import load_source_gateway, load_source_settings
from mailrepl.recovery.settings import load_recovery_settings
from mailrepl.shared.errors import ConfigError
from mailrepl.shared.config.settings_common import ListenAddress, parse_listen, server_password_env

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"

SOURCE = """\
[gateway]
id = "hq"
admin_token = "admin-t-Xq7Lm2Np9Rs4Tv8Wy3Zb6Cd"
plaintext = true

[peer]
url = "http://127.0.0.1:8471"
token = "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy"

[[servers]]
name = "primary"
host = "mail.example.org"
tls = "starttls"
service_user = "repl"
service_password = "pw"
users = ["alice", "bob"]
"""

RECOVERY = """\
[gateway]
id = "dr"
admin_token = "admin-t-Xq7Lm2Np9Rs4Tv8Wy3Zb6Cd"
plaintext = true

[[sources]]
id = "hq"
token = "ingest-t-Ab3Cd6Ef9Gh2Ij5Kl8Mn1Op"
servers = ["primary"]

[failover]
redirect_key = "redirect-k-Qr6St9Uv2Wx5Yz8Ab1Cd4Ef"

[[servers]]
name = "standby"
host = "standby.example.org"
tls = "tls"
service_user = "repl"
service_password = "pw"
"""


def write(tmp_path: Path, text: str, name: str = "gw.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)  # it holds secrets
    return path


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def config_error(load, path: Path, environ=None) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, environ or {})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


# ---------------------------------------------------------------------------- examples, defaults


def test_example_source_config_loads():
    s = load_source_settings(EXAMPLES / "source.toml", {})
    assert s.gateway.id == "hq"
    assert s.gateway.listen == ("127.0.0.1", 8470)
    assert s.gateway.state_url == f"sqlite:///{EXAMPLES / 'mailrepl-source.sqlite'}"
    assert s.gateway.admin_token == "demo-admin-Qm2xV7pL4sK8nR3tW6yZ1cB"
    assert (s.peer.url, s.peer.token) == ("http://127.0.0.1:8471", "demo-source-Hf5Jk9Lw3Np7Rt2Vx8Zb4Cd")
    [primary] = s.servers
    assert (primary.name, primary.kind, primary.host, primary.port, primary.tls) == (
        "primary", "imap", "127.0.0.1", 10143, "none")
    assert (primary.service_user, primary.service_password, primary.auth) == ("repl", "secret", "sasl-plain")
    assert primary.users == ("alice", "bob", "carol", "dave")


def test_example_recovery_config_loads_and_pairs_with_the_source():
    r = load_recovery_settings(EXAMPLES / "recovery.toml", {})
    s = load_source_settings(EXAMPLES / "source.toml", {})
    assert r.gateway.listen == ("127.0.0.1", 8471)
    assert s.peer.url == f"http://{r.gateway.listen}"
    [bound] = r.sources
    assert (s.peer.token, s.gateway.id) == (bound.token, bound.id)
    [standby] = r.servers
    assert (standby.name, standby.port, standby.tls) == ("standby", 11143, "none")
    assert dict(r.routes) == {"primary": "standby"}


def test_defaults(tmp_path):
    path = write(tmp_path, SOURCE)
    s = load_source_settings(path, {})
    g, p, [srv] = s.gateway, s.peer, s.servers
    assert g.listen == ListenAddress("127.0.0.1", 8470)
    assert g.state_url == f"sqlite:///{tmp_path / 'mailrepl-source.sqlite'}"
    assert (g.poll_interval, g.workers, g.fetch_chunk, g.log_level) == (5.0, 4, 200, "info")
    assert (p.batch_max_changes, p.batch_max_bytes) == (2000, 8 * 1024 * 1024)
    assert (p.timeout, p.retry_initial, p.retry_max, p.ca_file) == (60.0, 1.0, 60.0, None)
    assert (srv.kind, srv.port, srv.auth, srv.timeout, srv.verify_tls, srv.ca_file) == (
        "imap", 143, "sasl-plain", 30.0, True, None)

    r = load_recovery_settings(write(tmp_path, RECOVERY, "r.toml"), {})
    assert r.gateway.listen == ("127.0.0.1", 8471)
    assert r.gateway.state_url == f"sqlite:///{tmp_path / 'mailrepl-recovery.sqlite'}"
    assert (r.gateway.workers, r.gateway.append_batch, r.gateway.log_level) == (4, 400, "info")
    assert r.servers[0].port == 993  # implicit TLS
    assert dict(r.routes) == {}


def test_settings_are_frozen_and_keep_secrets_out_of_repr(tmp_path):
    s = load_source_settings(write(tmp_path, SOURCE), {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.gateway.workers = 8  # type: ignore[misc]
    text = repr(s)
    assert "admin-t-Xq7Lm2Np9Rs4Tv8Wy3Zb6Cd" not in text and "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy" not in text and "pw" not in text
    assert "primary" in text


def test_integers_are_accepted_for_seconds(tmp_path):
    s = load_source_settings(write(tmp_path, edit(SOURCE, 'id = "hq"', 'id = "hq"\npoll_interval = 2')), {})
    assert s.gateway.poll_interval == 2.0 and isinstance(s.gateway.poll_interval, float)


# ---------------------------------------------------------------------------- errors

SOURCE_ERRORS = [
    # (old, new, expected message after "FILE: ")
    ('id = "hq"', 'id = "hq"\nlisten_port = 1', 'gateway.listen_port: unknown key (did you mean "listen"?)'),
    ('[peer]', '[extra]\nx = 1\n\n[peer]', "extra: unknown key"),
    ('host = "mail.example.org"', 'hostname = "mail.example.org"', "servers[0].host: missing"),
    ('host = "mail.example.org"', 'host = "mail.example.org"\nverfy_tls = false',
     'servers[0].verfy_tls: unknown key (did you mean "verify_tls"?)'),
    ('id = "hq"\n', "", "gateway.id: missing"),
    ('id = "hq"', 'id = "h q"', "gateway.id: expected a name of letters, digits, '.', '_', '-', got \"h q\""),
    ('url = "http://127.0.0.1:8471"\n', "", "peer.url: missing"),
    ('url = "http://127.0.0.1:8471"', 'url = "ftp://x"', 'peer.url: expected an "http://" or "https://" URL, got "ftp://x"'),
    ('tls = "starttls"', 'tls = "starttls"\nport = "abc"', 'servers[0].port: expected an integer 1-65535, got "abc"'),
    ('tls = "starttls"', 'tls = "starttls"\nport = 70000', "servers[0].port: expected an integer 1-65535, got 70000"),
    ('id = "hq"', 'id = "hq"\nworkers = 0', "gateway.workers: expected an integer >= 1, got 0"),
    ('id = "hq"', 'id = "hq"\nworkers = 2.5', "gateway.workers: expected an integer >= 1, got 2.5"),
    ('id = "hq"', 'id = "hq"\nfetch_chunk = true', "gateway.fetch_chunk: expected an integer >= 1, got true"),
    ('id = "hq"', 'id = "hq"\npoll_interval = -1', "gateway.poll_interval: expected a number of seconds > 0, got -1"),
    ('id = "hq"', 'id = "hq"\npoll_interval = "5s"',
     'gateway.poll_interval: expected a number of seconds > 0, got "5s"'),
    ('id = "hq"', 'id = "hq"\nlog_level = "verbose"',
     'gateway.log_level: expected one of "debug", "info", "warning", "error", got "verbose"'),
    ('id = "hq"', 'id = "hq"\nlisten = "localhost"', 'gateway.listen: expected "host:port", got "localhost"'),
    ('id = "hq"', 'id = "hq"\nlisten = "::1:8470"', "gateway.listen: an IPv6 address needs brackets"),
    ('id = "hq"', 'id = "hq"\nlisten = "127.0.0.1:0"', "gateway.listen: expected a port 1-65535"),
    ('id = "hq"', 'id = "hq"\nlisten = 8470', "gateway.listen: expected a string, got 8470"),
    ('id = "hq"', 'id = "hq"\nstate_url = "mysql://db/x"',
     'gateway.state_url: expected a "sqlite:///..." or "postgresql+psycopg://..." URL, got a mysql URL'),
    ('id = "hq"', 'id = "hq"\nstate_url = "not a url"', "gateway.state_url: expected a database URL, got a string"),
    ('id = "hq"', 'id = "hq"\nstate_url = "sqlite:///:memory:"', 'gateway.state_url: expected "sqlite:///FILE"'),
    ('token = "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy"', 'token = "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy"\nretry_initial = 10\nretry_max = 5',
     "peer.retry_max: must be >= retry_initial (10), got 5"),
    ('tls = "starttls"', 'tls = "ssl"', 'servers[0].tls: expected one of "none", "starttls", "tls", got "ssl"'),
    ('tls = "starttls"', 'tls = "starttls"\nauth = "xoauth2"',
     'servers[0].auth: expected one of "sasl-plain", "login-master", got "xoauth2"'),
    ('tls = "starttls"', 'tls = "starttls"\nverify_tls = "yes"',
     'servers[0].verify_tls: expected true or false, got "yes"'),
    ('tls = "starttls"', 'tls = "starttls"\ntimeout = 0',
     "servers[0].timeout: expected a number of seconds > 0, got 0"),
    ('name = "primary"', 'name = "primary"\nkind = "graph"',
     'servers[0].kind: unsupported server kind "graph" (supported: "imap", "ews")'),
    ('users = ["alice", "bob"]', 'users = "alice"', 'servers[0].users: expected an array of strings, got "alice"'),
    ('users = ["alice", "bob"]', 'users = ["alice", 7]', "servers[0].users[1]: expected a string, got 7"),
    ('users = ["alice", "bob"]', 'users = ["alice", "b ob"]',
     'servers[0].users[1]: expected an address without spaces, got "b ob"'),
    ('users = ["alice", "bob"]', 'users_file = "nope.txt"', "servers[0].users_file: no such file: "),
    ('tls = "starttls"', 'tls = "starttls"\nca_file = "ca.pem"', "servers[0].ca_file: no such file: "),
    ('token = "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy"', 'token = "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy"\nca_file = "ca.pem"', "peer.ca_file: no such file: "),
    ('admin_token = "admin-t-Xq7Lm2Np9Rs4Tv8Wy3Zb6Cd"', 'admin_token = ""', "gateway.admin_token: the value is empty"),
    ('admin_token = "admin-t-Xq7Lm2Np9Rs4Tv8Wy3Zb6Cd"', 'admin_token = "two words"', "gateway.admin_token: the value contains whitespace"),
    ('admin_token = "admin-t-Xq7Lm2Np9Rs4Tv8Wy3Zb6Cd"', "admin_token = 12345",
     "gateway.admin_token: expected a string, got a number"),  # a secret is never echoed
    ('admin_token = "admin-t-Xq7Lm2Np9Rs4Tv8Wy3Zb6Cd"\n', "",
     "gateway.admin_token: missing (set it here or in the environment variable MAILREPL_ADMIN_TOKEN)"),
    ('token = "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy"\n', "", "peer.token: missing (set it here or in the environment variable MAILREPL_PEER_TOKEN)"),
    ('service_password = "pw"\n', "",
     "servers[0].service_password: missing (set it here or in the environment variable "
     "MAILREPL_SERVER_PRIMARY_PASSWORD)"),
]


@pytest.mark.parametrize("old, new, expected", SOURCE_ERRORS, ids=[e[2].split(":")[0] for e in SOURCE_ERRORS])
def test_source_errors_name_the_key(tmp_path, old, new, expected):
    path = write(tmp_path, edit(SOURCE, old, new))
    assert config_error(load_source_settings, path).startswith(expected)


def test_missing_sections(tmp_path):
    no_peer = SOURCE.split("[peer]")[0] + "[[servers]]" + SOURCE.split("[[servers]]")[1]
    assert config_error(load_source_settings, write(tmp_path, no_peer)) == "peer: missing"
    no_servers = SOURCE.split("[[servers]]")[0]
    assert config_error(load_source_settings, write(tmp_path, no_servers)) == (
        "servers: missing (at least one [[servers]] table is required)")
    assert config_error(load_source_settings, write(tmp_path, 'gateway = "x"\n')) == (
        'gateway: expected a table, got "x"')


def test_duplicate_server_names(tmp_path):
    path = write(tmp_path, SOURCE + SOURCE[SOURCE.index("[[servers]]"):])
    assert config_error(load_source_settings, path) == 'servers[1].name: duplicate server name "primary"'


def test_server_names_sharing_a_password_variable(tmp_path):
    second = SOURCE[SOURCE.index("[[servers]]"):].replace('"primary"', '"a.b"')
    path = write(tmp_path, SOURCE.replace('"primary"', '"a-b"') + second)
    assert config_error(load_source_settings, path) == (
        'servers[1].name: "a.b" and "a-b" would share the environment variable '
        "MAILREPL_SERVER_A_B_PASSWORD; rename one")


def test_invalid_toml_and_missing_file(tmp_path):
    path = write(tmp_path, SOURCE + "oops\n")
    assert config_error(load_source_settings, path).startswith("invalid TOML: ")
    missing = tmp_path / "absent.toml"
    assert config_error(load_source_settings, missing) == "no such configuration file"


def test_recovery_errors_name_the_key(tmp_path):
    path = write(tmp_path, edit(RECOVERY, 'token = "ingest-t-Ab3Cd6Ef9Gh2Ij5Kl8Mn1Op"\n', ""))
    assert config_error(load_recovery_settings, path) == (
        "sources[0].certificate_cn: missing: give certificate_cn (mutual TLS) and/or token "
        "(or the environment variable MAILREPL_SOURCE_HQ_TOKEN)")
    path = write(tmp_path, edit(RECOVERY, 'id = "dr"', 'id = "dr"\npoll_interval = 1'))
    assert config_error(load_recovery_settings, path) == "gateway.poll_interval: unknown key"
    path = write(tmp_path, edit(RECOVERY, 'id = "dr"', 'id = "dr"\nappend_batch = 0'))
    assert config_error(load_recovery_settings, path) == "gateway.append_batch: expected an integer >= 1, got 0"


# ---------------------------------------------------------------------------- environment


def test_secrets_from_the_environment(tmp_path):
    text = SOURCE
    for line in ('admin_token = "admin-t-Xq7Lm2Np9Rs4Tv8Wy3Zb6Cd"\n', 'token = "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy"\n', 'service_password = "pw"\n'):
        text = edit(text, line, "")
    env = {"MAILREPL_ADMIN_TOKEN": "env-admin-Pq4Rs7Tu0Vw3Xy6Za9Bc2De", "MAILREPL_PEER_TOKEN": "env-peer-Fg5Hi8Jk1Lm4No7Pq0Rs3Tu",
           "MAILREPL_SERVER_PRIMARY_PASSWORD": "env-pw"}
    s = load_source_settings(write(tmp_path, text), env)
    assert (s.gateway.admin_token, s.peer.token, s.servers[0].service_password) == ("env-admin-Pq4Rs7Tu0Vw3Xy6Za9Bc2De", "env-peer-Fg5Hi8Jk1Lm4No7Pq0Rs3Tu", "env-pw")


def test_environment_overrides_the_file(tmp_path):
    env = {"MAILREPL_ADMIN_TOKEN": "env-admin-Pq4Rs7Tu0Vw3Xy6Za9Bc2De", "MAILREPL_SERVER_PRIMARY_PASSWORD": "env-pw"}
    s = load_source_settings(write(tmp_path, SOURCE), env)
    assert (s.gateway.admin_token, s.peer.token, s.servers[0].service_password) == ("env-admin-Pq4Rs7Tu0Vw3Xy6Za9Bc2De", "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy", "env-pw")

    r = load_recovery_settings(write(tmp_path, RECOVERY, "r.toml"),
                               {"MAILREPL_SOURCE_HQ_TOKEN": "env-ingest-Vw6Xy9Za2Bc5De8Fg1Hi4Jk", "MAILREPL_SERVER_STANDBY_PASSWORD": "spw"})
    assert (r.sources[0].token, r.servers[0].service_password) == ("env-ingest-Vw6Xy9Za2Bc5De8Fg1Hi4Jk", "spw")


def test_empty_environment_secret_is_an_error(tmp_path):
    path = write(tmp_path, SOURCE)
    assert config_error(load_source_settings, path, {"MAILREPL_PEER_TOKEN": ""}) == (
        "peer.token: the environment variable MAILREPL_PEER_TOKEN is empty")


def test_password_variable_name():
    assert server_password_env("primary") == "MAILREPL_SERVER_PRIMARY_PASSWORD"
    assert server_password_env("dr-site.2") == "MAILREPL_SERVER_DR_SITE_2_PASSWORD"


def test_state_url_from_the_environment(tmp_path):
    path = write(tmp_path, SOURCE, "conf/gw.toml")
    s = load_source_settings(path, {"MAILREPL_STATE_URL": "postgresql+psycopg://u:p@db/mailrepl"})
    assert s.gateway.state_url == "postgresql+psycopg://u:p@db/mailrepl"
    s = load_source_settings(path, {"MAILREPL_STATE_URL": "sqlite:///state/s.sqlite"})
    assert s.gateway.state_url == f"sqlite:///{tmp_path / 'conf' / 'state' / 's.sqlite'}"
    assert config_error(load_source_settings, path, {"MAILREPL_STATE_URL": "redis://x"}).startswith(
        'gateway.state_url: expected a "sqlite:///..." or "postgresql+psycopg://..." URL (from MAILREPL_STATE_URL)')


# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize("url, expected", [
    ("sqlite:///state/s.sqlite", "sqlite:///{dir}/state/s.sqlite"),
    ("sqlite:///s.sqlite?timeout=5", "sqlite:///{dir}/s.sqlite?timeout=5"),
    ("sqlite:////var/lib/mailrepl/s.sqlite", "sqlite:////var/lib/mailrepl/s.sqlite"),
    ("postgresql+psycopg://mailrepl:pw@db.example.org:5432/src", "postgresql+psycopg://mailrepl:pw@db.example.org:5432/src"),
])
def test_state_url_resolves_relative_sqlite_paths_against_the_config_dir(tmp_path, monkeypatch, url, expected):
    path = write(tmp_path, edit(SOURCE, 'id = "hq"', f'id = "hq"\nstate_url = "{url}"'), "etc/gw.toml")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    assert load_source_settings(path, {}).gateway.state_url == expected.format(dir=tmp_path / "etc")


@pytest.mark.parametrize("keys, expected", [
    ('state_url = "sqlite:///state/s.sqlite?timeout=5"', "{dir}/state/s.outbox"),  # beside the state file
    ('state_url = "sqlite:////var/lib/mailrepl/s.sqlite"', "/var/lib/mailrepl/s.outbox"),
    ('state_url = "postgresql+psycopg://u@db/src"', "{dir}/mailrepl-outbox"),  # no file: beside the config
    ('state_url = "postgresql+psycopg://u@db/src"\noutbox_dir = "/srv/spool"', "/srv/spool"),
    ('outbox_dir = "spool"', "{dir}/spool"),
])
def test_the_outbox_spool_lives_with_the_state_unless_set(tmp_path, monkeypatch, keys, expected):
    path = write(tmp_path, edit(SOURCE, 'id = "hq"', f'id = "hq"\n{keys}'), "etc/gw.toml")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    assert load_source_settings(path, {}).gateway.outbox_dir == expected.format(dir=tmp_path / "etc")
    recovery = write(tmp_path, edit(RECOVERY, 'id = "dr"', f'id = "dr"\n{keys}'), "etc/dr.toml")
    assert load_recovery_settings(recovery, {}).gateway.outbox_dir == expected.format(dir=tmp_path / "etc") \
        .replace("mailrepl-outbox", "mailrepl-recovery-outbox")


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8470", ("127.0.0.1", 8470)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("gw.example.org:65535", ("gw.example.org", 65535)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::]:8471", ("::", 8471)),
])
def test_parse_listen(text, expected):
    listen = parse_listen(text)
    host, port = listen  # unpacks as uvicorn needs it
    assert (host, port) == expected
    assert str(listen) == text


@pytest.mark.parametrize(
    "text", ["8470", ":8470", "[::1]", "[]:80", "::1:80", "host:", "host:x", "host:65536", "a b:1"])
def test_parse_listen_rejects(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def test_ipv6_listen_in_a_config(tmp_path):
    path = write(tmp_path, edit(SOURCE, 'id = "hq"', 'id = "hq"\nlisten = "[::1]:9000"'))
    assert load_source_settings(path, {}).gateway.listen == ("::1", 9000)


def test_users_file_is_merged(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "users.txt").write_text(
        "# protected users\ncarol\n\n  bob   # already listed\ndave@example.org\n")
    text = edit(SOURCE, 'users = ["alice", "bob"]', 'users = ["alice", "bob"]\nusers_file = "lists/users.txt"')
    path = write(tmp_path, text)
    srv = load_source_settings(path, {}).servers[0]
    assert srv.users == ("alice", "bob", "carol", "dave@example.org")
    assert srv.users_file == tmp_path / "lists" / "users.txt"


def test_users_file_alone_and_bad_lines(tmp_path):
    (tmp_path / "users.txt").write_text("alice\n")
    path = write(tmp_path, edit(SOURCE, 'users = ["alice", "bob"]', 'users_file = "users.txt"'))
    assert load_source_settings(path, {}).servers[0].users == ("alice",)
    (tmp_path / "users.txt").write_text("alice\nbob carol\n")
    assert config_error(load_source_settings, path) == (
        f'servers[0].users_file: {tmp_path / "users.txt"} line 2: expected one address, got "bob carol"')


def test_ca_files_resolve_against_the_config_dir(tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    text = edit(SOURCE, 'token = "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy"', 'token = "peer-t-Gh5Jk8Lm1Nq4Rs7Tu0Vw3Xy"\nca_file = "ca.pem"')
    text = edit(text, 'tls = "starttls"', 'tls = "starttls"\nca_file = "ca.pem"')
    s = load_source_settings(write(tmp_path, text), {})
    assert s.peer.ca_file == tmp_path / "ca.pem"
    assert s.servers[0].ca_file == tmp_path / "ca.pem"


# ---------------------------------------------------------------------------- routes


def test_routes(tmp_path):
    text = edit(RECOVERY, 'servers = ["primary"]', 'servers = ["hq-mail", "branch"]')
    text += RECOVERY[RECOVERY.index("[[servers]]"):].replace('"standby"', '"standby2"')
    r = load_recovery_settings(write(tmp_path, text + '\n[routes]\nhq-mail = "standby"\nbranch = "standby2"\n'), {})
    assert dict(r.routes) == {"hq-mail": "standby", "branch": "standby2"}
    with pytest.raises(TypeError):
        r.routes["x"] = "standby"  # type: ignore[index]


def test_route_to_an_unknown_server(tmp_path):
    path = write(tmp_path, RECOVERY + '\n[routes]\nprimary = "nope"\n')
    assert config_error(load_recovery_settings, path) == 'routes.primary: unknown server "nope" (configured: standby)'
    path = write(tmp_path, RECOVERY + "\n[routes]\nprimary = 3\n")
    assert config_error(load_recovery_settings, path) == "routes.primary: expected a string, got 3"


# ---------------------------------------------------------------------------- admin tools


def test_gateway_table_alone_needs_no_server_secrets(tmp_path):
    text = edit(SOURCE, 'service_password = "pw"\n', "")
    g = load_source_gateway(write(tmp_path, text), {})
    assert (g.listen, g.admin_token) == (("127.0.0.1", 8470), "admin-t-Xq7Lm2Np9Rs4Tv8Wy3Zb6Cd")


def test_failover_settings_default_off_and_read_strictly(tmp_path):
    r = load_recovery_settings(write(tmp_path, RECOVERY, "r.toml"), {})
    assert r.failover.auto is False and r.failover.confirm == "manual" and r.primaries == ()
    primary = RECOVERY.split("[[servers]]", 1)[1].replace('name = "standby"', 'name = "primary"')
    text = edit(RECOVERY, "[failover]\n", '[failover]\nauto = true\noutage_seconds = 5\nconfirm = "auto"\n') \
        + "\n[[primaries]]" + primary
    r = load_recovery_settings(write(tmp_path, text, "r2.toml"), {})
    assert r.failover.auto is True and r.failover.outage_seconds == 5.0 and r.failover.confirm == "auto"
    assert [p.name for p in r.primaries] == ["primary"]
    bad = write(tmp_path, edit(RECOVERY, "[failover]\n", '[failover]\nconfirm = "sometimes"\n'), "r3.toml")
    assert config_error(load_recovery_settings, bad).startswith("failover.confirm: expected one of")
    bad = write(tmp_path, edit(RECOVERY, "[failover]\n", "[failover]\nautomatic = true\n"), "r4.toml")
    assert config_error(load_recovery_settings, bad) == 'failover.automatic: unknown key (did you mean "auto"?)'


def test_blob_dir_from_the_environment_overrides_the_files_key(tmp_path):
    from mailrepl.recovery.settings import ENV_BLOB_DIR

    example = load_recovery_settings(EXAMPLES / "recovery.toml", {})
    assert example.gateway.blob_dir == str((EXAMPLES / "mailrepl-blobs").resolve())
    # the example sets blob_dir; the environment wins and the key is still a known one
    r = load_recovery_settings(EXAMPLES / "recovery.toml", {ENV_BLOB_DIR: str(tmp_path / "parts")})
    assert r.gateway.blob_dir == str(tmp_path / "parts")


def test_history_settings_default_off_override_per_server_and_mailbox(tmp_path):
    r = load_recovery_settings(write(tmp_path, RECOVERY, "r.toml"), {})
    assert not r.history.enabled and r.history.retention_seconds("primary", "alice@example.org") == 0
    text = RECOVERY + ('\n[history]\nretention_days = 14\nsnapshot_every_changes = 100\n'
                       '[history.servers]\nprimary = 30\n[history.mailboxes]\n"CEO@example.org" = 0.5\n')
    r = load_recovery_settings(write(tmp_path, text, "r2.toml"), {})
    h = r.history
    assert h.enabled and h.snapshot_every_changes == 100
    assert h.retention_seconds("other", "bob@example.org") == 14 * 86400
    assert h.retention_seconds("primary", "bob@example.org") == 30 * 86400
    assert h.retention_seconds("primary", "ceo@example.org") == 43200
    assert "history kept 14 days" in r.summary()
    bad = write(tmp_path, RECOVERY + "\n[history]\nretention_days = -1\n", "r3.toml")
    assert config_error(load_recovery_settings, bad).startswith("history.retention_days: expected a number of days")
    bad = write(tmp_path, RECOVERY + "\n[history]\nretention = 3\n", "r4.toml")
    assert "history.retention: unknown key" in config_error(load_recovery_settings, bad)
    bad = write(tmp_path, RECOVERY + '\n[history.mailboxes]\n"not an address" = 3\n', "r5.toml")
    assert "expected a mailbox address" in config_error(load_recovery_settings, bad)


def test_lag_and_guard_settings(tmp_path):
    r = load_recovery_settings(write(tmp_path, RECOVERY, "r.toml"), {})
    assert not r.lag.enabled and r.guard.enabled and r.guard.min_messages == 250
    assert not r.guard.trips(249, 300) and r.guard.trips(250, 800) and not r.guard.trips(250, 900)
    assert r.guard.trips(10_000, 10**7) and r.guard.is_trash("Archive/TRASH") and not r.guard.is_trash("Trashy")
    text = RECOVERY + ('\n[lag]\nreplay_delay = 60\n[lag.mailboxes]\n"Boss@example.org" = 1209600\n'
                       '[guard]\nmin_messages = 5\nshare_percent = 50\nwindow_minutes = 1\ntrash_folders = ["Bin"]\n')
    r = load_recovery_settings(write(tmp_path, text, "r2.toml"), {})
    assert r.lag.delay("primary", "x@example.org") == 60 and r.lag.delay("primary", "boss@example.org") == 1209600
    assert r.guard.window_seconds == 60 and r.guard.is_trash("Bin") and not r.guard.is_trash("Trash")
    assert "replay delay 60s" in r.summary() and "mass-delete guard" in r.summary()
    bad = write(tmp_path, RECOVERY + "\n[lag]\nreplay_delay = 1300000\n", "r3.toml")
    assert config_error(load_recovery_settings, bad).startswith("lag.replay_delay: expected a number of seconds")
    bad = write(tmp_path, RECOVERY + "\n[guard]\nshare_percent = 120\n", "r4.toml")
    assert config_error(load_recovery_settings, bad).startswith("guard.share_percent: expected an integer 0-100")


def test_scale_settings_connections_idle_poll_and_link_cap(tmp_path):
    example = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "source.toml"
    base = example.read_text()
    s = load_source_settings(example)
    srv = s.servers[0]
    assert (srv.max_connections, srv.push_connections) == (16, 4)
    assert s.gateway.idle_poll_max == 120.0 and not s.link.schedule.capped
    text = base.replace("max_connections = 16", "max_connections = 6").replace("push_connections = 4",
                                                                               "push_connections = 3")
    text = text.replace("# [link]\n# rate_mbit = 20\n# live_share_percent = 20\n# [[link.windows]]\n"
                        '# from = "19:00"\n# to = "07:00"\n# rate_mbit = 0\n',
                        '[link]\nrate_mbit = 20\nlive_share_percent = 30\n[[link.windows]]\nfrom = "19:00"\n'
                        'to = "07:00"\nrate_mbit = 0\n')
    s = load_source_settings(write(tmp_path, text))
    assert (s.servers[0].max_connections, s.servers[0].push_connections) == (6, 3)
    assert s.link.schedule.default == 2_500_000 and s.link.live_share == 0.3
    (w,) = s.link.schedule.windows
    assert (w.start, w.end, w.rate) == (19 * 60, 7 * 60, 0.0)
    assert "20 Mbit/s" in s.summary() and "at most 6 connections" in s.summary()
    with pytest.raises(ConfigError, match="push_connections"):
        load_source_settings(write(tmp_path, text.replace("push_connections = 3", "push_connections = 4")))
    with pytest.raises(ConfigError, match="link.windows"):
        load_source_settings(write(tmp_path, text.replace('from = "19:00"', 'from = "25:00"')))
    with pytest.raises(ConfigError, match="idle_poll_max"):
        load_source_settings(write(tmp_path, base.replace("idle_poll_max = 120.0", "idle_poll_max = 1.0")))


def test_poll_and_check_budgets_default_to_a_share_of_their_interval(tmp_path):
    """Quiet polls and standby checks are held to a rate: by default 50 polls per poll interval
    and 1,500 checks per check interval, so that a shorter interval does not silently hit a
    budget made for the default; set explicitly, the rate is taken as given."""
    source = (EXAMPLES / "source.toml").read_text().replace("idle_polls_per_second = 10.0\n", "")
    assert load_source_settings(write(tmp_path, source)).gateway.idle_polls_per_second == 10.0
    faster = source.replace("poll_interval = 5.0", "poll_interval = 0.5")
    assert load_source_settings(write(tmp_path, faster)).gateway.idle_polls_per_second == 100.0
    explicit = faster.replace("idle_poll_max = 120.0", "idle_poll_max = 120.0\nidle_polls_per_second = 2.5")
    assert load_source_settings(write(tmp_path, explicit)).gateway.idle_polls_per_second == 2.5
    with pytest.raises(ConfigError, match="idle_polls_per_second"):
        load_source_settings(write(tmp_path, explicit.replace("idle_polls_per_second = 2.5",
                                                              "idle_polls_per_second = 0")))

    recovery = (EXAMPLES / "recovery.toml").read_text().replace("standby_checks_per_second = 5.0\n", "")
    assert load_recovery_settings(write(tmp_path, recovery, "r.toml"), {}).gateway.standby_checks_per_second == 5.0
    often = recovery.replace("standby_check_interval = 300", "standby_check_interval = 5")
    assert load_recovery_settings(write(tmp_path, often, "r.toml"), {}).gateway.standby_checks_per_second == 300.0
    explicit = often.replace("standby_check_interval = 5", "standby_check_interval = 5\nstandby_checks_per_second = 1")
    assert load_recovery_settings(write(tmp_path, explicit, "r.toml"), {}).gateway.standby_checks_per_second == 1.0
