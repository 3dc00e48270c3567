"""What both gateways' settings share: the listen address, the state URL, tokens, mail servers.

Configuration is read once, at the edge (``mailrepl.gateway.settings``, ``mailrepl.recovery.settings``), into
frozen dataclasses; nothing below the composition roots ever sees TOML or the environment.
Mistakes are one ``ConfigError`` line naming the file and the key (``mailrepl.shared.config.toml_reader``).

Secrets can be kept out of the file: ``MAILREPL_*`` environment variables override them at load
(see ``ENV_*`` and :func:`server_password_env`), as do systemd credentials of the same names and
``<key>_file`` keys (see ``Table.secret``). Tokens must be strong and all different.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mailrepl.shared.config.toml_reader import Table, show_value
from mailrepl.shared.errors import ConfigError

__all__ = [
    "ENV_STATE_URL",
    "ENV_ADMIN_TOKEN",
    "ENV_ENCRYPTION_KEY",
    "EncryptionSettings",
    "parse_key",
    "read_encryption",
    "read_insecure_demo",
    "refuse_reused",
    "LOG_LEVELS",
    "ListenAddress",
    "ImapServerSettings",
    "EwsServerSettings",
    "ServerSettings",
    "parse_listen",
    "server_password_env",
    "read_gateway_id",
    "read_state_url",
    "read_outbox_dir",
    "read_listen",
    "read_token",
    "read_log_level",
    "read_max_json_bytes",
    "DEFAULT_MAX_JSON_BYTES",
    "read_servers",
    "describe_server",
    "display_state_url",
]

ENV_STATE_URL = "MAILREPL_STATE_URL"
ENV_ADMIN_TOKEN = "MAILREPL_ADMIN_TOKEN"
ENV_ENCRYPTION_KEY = "MAILREPL_ENCRYPTION_KEY"
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_MAX_JSON_BYTES = 64 * 1024  # admin API request bodies (JSON)

DEFAULT_IMAP_TIMEOUT = 30.0
# Connections per IMAP server and gateway (capture or replay, standby view, cutover, verify and push
# wake-ups share them): far inside Dovecot's default `process_limit` (1024 imap processes) and a
# Cyrus `maxchild` of a few hundred. The push connections are taken from the same bound.
DEFAULT_IMAP_MAX_CONNECTIONS = 16
DEFAULT_IMAP_PUSH_CONNECTIONS = 4
DEFAULT_IMAP_AUTH = "sasl-plain"
IMAP_TLS_MODES = ("none", "starttls", "tls")
IMAP_AUTH_MODES = ("sasl-plain", "login-master")
IMAP_PORTS = {"none": 143, "starttls": 143, "tls": 993}

DEFAULT_EWS_TIMEOUT = 120.0
DEFAULT_EWS_RETRY_MAX_WAIT = 60.0
EWS_AUTH_MODES = ("basic", "ntlm", "oauth2")
EWS_ACCESS_MODES = ("impersonation", "delegate")


# ---------------------------------------------------------------------------- values


class ListenAddress(NamedTuple):
    """Where a gateway's API listens; unpacks as ``host, port`` for uvicorn."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """``"host:port"`` or ``"[v6-address]:port"`` -> ListenAddress; ValueError says what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f'expected "host:port", got {show_value(text)}')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f'expected "host:port", got {show_value(text)}')
    elif ":" in host:
        raise ValueError(f'an IPv6 address needs brackets ("[::1]:8470"), got {show_value(text)}')
    if any(c.isspace() for c in host):
        raise ValueError(f"the host must not contain spaces, got {show_value(text)}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port 1-65535 after the last colon, got {show_value(text)}")
    return ListenAddress(host, int(port_text))


def server_password_env(name: str) -> str:
    """``MAILREPL_SERVER_<NAME>_PASSWORD``: the name upper-cased, anything but letters/digits -> ``_``."""
    return "MAILREPL_SERVER_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_PASSWORD"


@dataclass(frozen=True, kw_only=True)
class ImapServerSettings:
    """One IMAP server reached with one service (master) account."""

    name: str
    kind: str = "imap"
    host: str
    port: int
    tls: str  # "none" | "starttls" | "tls"
    service_user: str
    service_password: str = field(repr=False)
    auth: str = DEFAULT_IMAP_AUTH  # "sasl-plain" (PLAIN with an authorization identity) | "login-master"
    timeout: float = DEFAULT_IMAP_TIMEOUT
    verify_tls: bool = True
    ca_file: Path | None = None
    users: tuple[str, ...] = ()  # the list and users_file merged, in order, without duplicates
    users_file: Path | None = None  # kept to say where the users came from
    max_connections: int = DEFAULT_IMAP_MAX_CONNECTIONS  # open at a time, all uses together
    push_connections: int = DEFAULT_IMAP_PUSH_CONNECTIONS  # of them: push wake-ups of the most active mailboxes


@dataclass(frozen=True, kw_only=True)
class EwsServerSettings:
    """One Exchange organisation over EWS, reached with one service account.

    ``endpoint`` is the EWS URL (``https://mail.example.org/EWS/Exchange.asmx``), or None with
    ``autodiscover = true``. ``auth``: "basic" / "ntlm" (``service_user`` may be
    ``DOMAIN\\user`` or a UPN) or "oauth2" (client credentials: ``client_id``, ``tenant_id``,
    the client secret in ``service_password``). ``access``: "impersonation" (the service account
    has the ApplicationImpersonation role) or "delegate" (full access to each mailbox).
    """

    name: str
    kind: str = "ews"
    endpoint: str | None
    autodiscover: bool = False
    auth: str = "basic"
    access: str = "impersonation"
    service_user: str
    service_password: str = field(repr=False)
    client_id: str = ""
    tenant_id: str = ""
    timeout: float = DEFAULT_EWS_TIMEOUT
    retry_max_wait: float = DEFAULT_EWS_RETRY_MAX_WAIT
    max_connections: int = 0  # 0: one per user, at least 2 and at most 16
    users: tuple[str, ...] = ()
    users_file: Path | None = None

    @property
    def connections(self) -> int:
        return self.max_connections or max(2, min(16, len(self.users)))


# Each server kind adds its settings class here (and a reader in _SERVER_READERS).
ServerSettings = ImapServerSettings | EwsServerSettings


def describe_server(server: ServerSettings) -> str:
    """One line for ``check-config``: where the server is and how it is reached, no secrets."""
    users = f"{len(server.users)} users" if server.users else "no user list"
    if server.users_file is not None:
        users += f" (incl. {server.users_file})"
    if isinstance(server, EwsServerSettings):
        where = server.endpoint or "autodiscover"
        return (f'server "{server.name}" (ews): {where}, {server.auth} as "{server.service_user}", '
                f"{server.access}, {users}")
    host = f"[{server.host}]" if ":" in server.host else server.host
    return (
        f'server "{server.name}" ({server.kind}): {host}:{server.port}, tls {server.tls}, '
        f'{server.auth} as "{server.service_user}", {users}, at most {server.max_connections} connections '
        f'({server.push_connections} for push)'
    )


def display_state_url(url: str) -> str:
    """The state URL with any password masked, for printing."""
    return make_url(url).render_as_string(hide_password=True)


# ---------------------------------------------------------------------------- shared keys


def read_gateway_id(table: Table) -> str:
    return table.name("id")


def read_outbox_dir(table: Table, state_url: str, default: str) -> str:
    """``outbox_dir``: where the outbox spool keeps bulk bodies (``body_spool``), an absolute
    path. Relative paths resolve against the config file's directory. Unset: beside a SQLite
    state file, named after it (``state.sqlite`` -> ``state.outbox``: it is part of the state and
    lives where the state lives, but a copy of ``state.sqlite*`` does not meet a directory), else
    ``default`` against the config file's directory."""
    if "outbox_dir" in table.keys():
        return str(table.resolve(table.string("outbox_dir", default)))
    database = make_url(state_url).database if state_url.startswith("sqlite") else None
    if database and database != ":memory:":
        path = Path(database).absolute()
        return str(path.with_name(f"{path.stem}.outbox"))
    return str(table.resolve(default))


def read_state_url(table: Table, default: str) -> str:
    """``state_url`` (or ``state_url_file``, ``MAILREPL_STATE_URL``, the systemd credential of
    that name): SQLite or PostgreSQL; relative SQLite paths are made absolute against the config
    file's directory, so the gateway's working directory never decides where its state lives.
    A URL with a password in the config file needs the file to be private (mode 0600)."""
    found, where = table.secret_source("state_url", ENV_STATE_URL, private=False)
    in_file = where == "value"
    if in_file or found is None:
        value, origin = table.string("state_url", default), ""
    else:
        value = found
        origin = f" (from {ENV_STATE_URL})" if ENV_STATE_URL in table.environ else f" (from the {where})"
    try:
        url = make_url(value)
        port = url.port  # a non-numeric port raises ValueError in make_url
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(port)
    except ArgumentError:
        shown = show_value(value, secret=True)  # a URL may hold a password
        raise table.error("state_url", f"expected a database URL{origin}, got {shown}") from None
    except ValueError:
        raise table.error("state_url", f"expected a port 1-65535 in the database URL{origin}") from None
    if url.password and in_file:
        table.check_private("state_url")
    backend = url.get_backend_name()
    if backend == "postgresql":
        return value
    if backend != "sqlite":
        raise table.error("state_url", f'expected a "sqlite:///..." or "postgresql+psycopg://..." URL{origin}, '
                                       f"got a {backend} URL")
    prefix, sep, rest = value.partition(":///")
    path, qmark, query = rest.partition("?")
    if not sep or not path or path == ":memory:":
        raise table.error("state_url", f'expected "sqlite:///FILE" with a file path{origin}, got {show_value(value)}')
    if not path.startswith("/"):
        path = str(table.resolve(path))
    return f"{prefix}:///{path}{qmark}{query}"


def read_insecure_demo(table: Table, default_listen: str) -> bool:
    """``insecure_demo = true`` (read before any secret): a loopback demo may keep its secrets in
    a file others can read. Refused unless ``listen`` is a loopback address; the gateway warns
    at start-up. Tokens must still be strong."""
    demo = table.boolean("insecure_demo", False)
    if demo:
        host = read_listen(table, default_listen).host
        if host != "localhost" and not _is_loopback(host):
            raise table.error("insecure_demo", f"only allowed with a loopback listen address, not {host}")
        table.allow_shared_secrets()
    return demo


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_listen(table: Table, default: str) -> ListenAddress:
    value = table.string("listen", default)
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise table.error("listen", str(exc)) from None


def read_token(table: Table, name: str, env_var: str, *, required: bool = True) -> str | None:
    """A bearer token we choose (strong, printable ASCII); see :meth:`Table.secret` for where
    it may come from."""
    return table.secret(name, env_var, token=True, required=required)


def refuse_reused(root: Table, tokens: Mapping[str, str | None], others: Mapping[str, str | None] = {}) -> None:
    """Every token (``{"gateway.admin_token": value, ...}``) must differ from every other token
    and from every other secret in ``others`` (service passwords): one leaked credential must
    not open a second door. The error names both keys, never the value."""
    seen: dict[str, str] = {}
    for key, value in tokens.items():
        if value is None:
            continue
        if value in seen:
            raise ConfigError(f"{root.file_name}: {key}: the same value as {seen[value]}; every token must be "
                              "different")
        seen[value] = key
    for key, value in others.items():
        if value is not None and value in seen:
            raise ConfigError(f"{root.file_name}: {seen[value]}: the same value as {key}; a token must not "
                              "be a password")


@dataclass(frozen=True)
class EncryptionSettings:
    """At-rest encryption (opt-in): the current key (None: off) and older keys still readable."""

    key: bytes | None = field(default=None, repr=False)
    old_keys: tuple[bytes, ...] = field(default=(), repr=False)

    def describe(self) -> str:
        if self.key is None:
            return "at-rest encryption off" + (f" ({len(self.old_keys)} old keys for reading)" if self.old_keys else "")
        return f"at-rest encryption on (AES-256-GCM, {len(self.old_keys)} old keys)"


def parse_key(text: str) -> bytes:
    """A 256-bit key written as 64 hex digits or base64 (standard or URL-safe); ValueError otherwise."""
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError("expected 32 random bytes as 64 hex digits or base64 "
                         '(make one with: python3 -c "import os, base64; print(base64.b64encode(os.urandom(32)).decode())")')
    return raw


def read_encryption(table: Table) -> EncryptionSettings:
    """``encryption_key`` / ``encryption_key_file`` / ``MAILREPL_ENCRYPTION_KEY`` and
    ``encryption_old_key_files`` of a ``[gateway]`` table."""
    out = []
    for key, text in [("encryption_key", table.secret("encryption_key", ENV_ENCRYPTION_KEY, required=False))] + [
            (f"encryption_old_key_files[{i}]", t) for i, t in enumerate(table.secret_files("encryption_old_key_files"))]:
        if text is None:
            out.append(None)
            continue
        try:
            out.append(parse_key(text))
        except ValueError as exc:
            raise table.error(key, str(exc)) from None
    return EncryptionSettings(key=out[0], old_keys=tuple(k for k in out[1:] if k is not None))


def read_log_level(table: Table) -> str:
    return table.choice("log_level", LOG_LEVELS, "info")


def read_max_json_bytes(table: Table) -> int:
    """``max_json_bytes``: the largest admin API request body (a longer one is refused, 413)."""
    return table.integer("max_json_bytes", DEFAULT_MAX_JSON_BYTES, minimum=1024, maximum=1 << 30)


# ---------------------------------------------------------------------------- servers


def _read_users_file(table: Table, path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise table.error("users_file", f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    users = []
    for number, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if any(c.isspace() for c in entry):
            raise table.error("users_file", f"{path} line {number}: expected one address, got {show_value(entry)}")
        users.append(entry)
    return users


def _read_users(table: Table) -> tuple[tuple[str, ...], Path | None]:
    users = list(table.strings("users", []))
    for i, user in enumerate(users):
        if not user or any(c.isspace() for c in user):
            raise table.error(f"users[{i}]", f"expected an address without spaces, got {show_value(user)}")
    users_file = table.file("users_file")
    if users_file is not None:
        users += _read_users_file(table, users_file)
    return tuple(dict.fromkeys(users)), users_file


def _read_imap_server(table: Table, name: str) -> ImapServerSettings:
    tls = table.choice("tls", IMAP_TLS_MODES)
    users, users_file = _read_users(table)
    max_connections = table.integer("max_connections", DEFAULT_IMAP_MAX_CONNECTIONS, minimum=2, maximum=4096)
    push_connections = table.integer("push_connections", min(DEFAULT_IMAP_PUSH_CONNECTIONS, max_connections // 2),
                                     minimum=0)
    if push_connections > max_connections // 2:
        raise table.error("push_connections", f"must be at most half of max_connections ({max_connections // 2}): "
                                              f"the others are needed to capture and replay, got {push_connections}")
    return ImapServerSettings(
        name=name,
        kind="imap",
        host=table.string("host"),
        port=table.integer("port", IMAP_PORTS[tls], minimum=1, maximum=65535),
        tls=tls,
        service_user=table.string("service_user"),
        service_password=table.secret("service_password", server_password_env(name)),
        auth=table.choice("auth", IMAP_AUTH_MODES, DEFAULT_IMAP_AUTH),
        timeout=table.seconds("timeout", DEFAULT_IMAP_TIMEOUT),
        verify_tls=table.boolean("verify_tls", True),
        ca_file=table.file("ca_file"),
        users=users,
        users_file=users_file,
        max_connections=max_connections,
        push_connections=push_connections,
    )


def _read_ews_server(table: Table, name: str) -> EwsServerSettings:
    autodiscover = table.boolean("autodiscover", False)
    endpoint = table.http_url("endpoint") if "endpoint" in table.keys() else None
    if endpoint is None and not autodiscover:
        raise table.error("endpoint", "missing (give the EWS URL, or set autodiscover = true)")
    if endpoint is not None and autodiscover:
        raise table.error("autodiscover", "set either endpoint or autodiscover = true, not both")
    auth = table.choice("auth", EWS_AUTH_MODES, "basic")
    client_id = table.string("client_id", "")
    tenant_id = table.string("tenant_id", "")
    if auth == "oauth2":
        for key, value in (("client_id", client_id), ("tenant_id", tenant_id)):
            if not value:
                raise table.error(key, 'missing (auth = "oauth2" needs client_id and tenant_id)')
    users, users_file = _read_users(table)
    return EwsServerSettings(
        name=name,
        endpoint=endpoint,
        autodiscover=autodiscover,
        auth=auth,
        access=table.choice("access", EWS_ACCESS_MODES, "impersonation"),
        service_user=table.string("service_user"),
        service_password=table.secret("service_password", server_password_env(name)),
        client_id=client_id,
        tenant_id=tenant_id,
        timeout=table.seconds("timeout", DEFAULT_EWS_TIMEOUT),
        retry_max_wait=table.seconds("retry_max_wait", DEFAULT_EWS_RETRY_MAX_WAIT),
        max_connections=table.integer("max_connections", 0, minimum=0, maximum=256),
        users=users,
        users_file=users_file,
    )


_SERVER_READERS: dict[str, Callable[[Table, str], ServerSettings]] = {
    "imap": _read_imap_server,
    "ews": _read_ews_server,
}


def read_servers(root: Table, key: str = "servers", *, required: bool = True) -> tuple[ServerSettings, ...]:
    """The ``[[servers]]`` array (or another array of server tables named ``key``): at least one
    unless not ``required``, unique names, distinct password variables."""
    tables = root.tables(key)
    if not tables and required:
        raise root.error(key, f"missing (at least one [[{key}]] table is required)")
    servers: list[ServerSettings] = []
    env_owner: dict[str, str] = {}
    for table in tables:
        name = table.name("name")
        if any(s.name == name for s in servers):
            raise table.error("name", f"duplicate server name {show_value(name)}")
        env_var = server_password_env(name)
        if env_var in env_owner:
            raise table.error("name", f"{show_value(name)} and {show_value(env_owner[env_var])} would share "
                                      f"the environment variable {env_var}; rename one")
        env_owner[env_var] = name
        kind = table.string("kind", "imap")
        reader = _SERVER_READERS.get(kind)
        if reader is None:
            supported = ", ".join(json.dumps(k) for k in _SERVER_READERS)
            raise table.error("kind", f"unsupported server kind {show_value(kind)} (supported: {supported})")
        servers.append(reader(table, name))
        table.finish()
    return tuple(servers)
