"""Settings of the recovery gateway, read from a TOML file (the only place that reads them).

::

    [gateway]   id, state_url, listen, admin_token, workers, append_batch, blob_dir, outbox_dir,
                blob_grace_seconds, standby_check_interval, standby_checks_per_second, log_level, tls_cert, tls_key, tls_client_ca, plaintext,
                encryption_key(_file), encryption_old_key_files, max_json_bytes, max_batch_bytes,
                max_inflated_bytes, max_concurrent_ingests, metrics_open, docs_open, min_free_bytes
    [[sources]] the source gateways that may send: id, certificate_cn, token, servers, mailboxes
    [[servers]] the standby mail servers (see ``mailrepl.shared.config.settings_common``)
    [routes]    optional: primary server name (as the source gateway calls it) = standby server name
    [[primaries]] optional: the primary mail servers as this site reaches them (same keys as
                [[servers]]), for the login redirect and the health checks of automatic failover
    [failover]  auto, outage_seconds, check_interval, hold_seconds, confirm, redirect_key (or
                MAILREPL_REDIRECT_KEY; required unless redirect_key_required = false),
                redirect_case_sensitive
    [alerts]    optional: thresholds, webhook, mail (see ``mailrepl.shared.config.alerts_settings``)
    [history]   optional: retention of each mailbox's history, base snapshots (see
                ``mailrepl.recovery.history_settings``)
    [guard]     optional: the mass-delete guard (see ``mailrepl.recovery.guard_settings``)
    [lag]       optional: lagged copies, replay_delay per server or mailbox (``mailrepl.recovery.lag_settings``)

Each ``[[sources]]`` table binds one source gateway ``id`` to its credential: the subject
common name of its TLS client certificate (``certificate_cn``; the certificate must be signed by
``gateway.tls_client_ca``) and/or a per-source bearer ``token`` (when TLS is terminated in front
of the gateway; ``MAILREPL_SOURCE_<ID>_TOKEN`` overrides it), and to what it may send: the
primary ``servers`` (as the source gateway names them) and optionally only these ``mailboxes``.

Without ``routes`` a single standby server receives everything. ``deploy/examples/recovery.toml``
documents every key. Every secret may also come from a ``<key>_file``, the environment or a
systemd credential (``Table.secret``).
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from mailrepl.shared.config.settings_common import (
    ENV_ADMIN_TOKEN,
    EncryptionSettings,
    ListenAddress,
    ServerSettings,
    describe_server,
    parse_listen,
    display_state_url,
    read_gateway_id,
    read_listen,
    read_log_level,
    read_max_json_bytes,
    DEFAULT_MAX_JSON_BYTES,
    read_servers,
    read_outbox_dir,
    read_state_url,
    read_encryption,
    read_insecure_demo,
    read_token,
    refuse_reused,
)
from mailrepl.shared.config.alerts_settings import AlertSettings, read_alerts
from mailrepl.recovery.guard_settings import GuardSettings, read_guard
from mailrepl.recovery.history_settings import HistorySettings, read_history
from mailrepl.recovery.lag_settings import LagSettings, read_lag
from mailrepl.shared.config.tls_settings import ServerTlsSettings, read_server_tls
from mailrepl.shared.config.toml_reader import Table, open_config, show_value
from mailrepl.shared.engines.replay_plan import DEFAULT_APPEND_BATCH

__all__ = [
    "BoundSource",
    "source_token_env",
    "ENV_REDIRECT_KEY",
    "FailoverSettings",
    "RecoveryGatewaySettings",
    "RecoverySettings",
    "load_recovery_settings",
]

ENV_BLOB_DIR = "MAILREPL_BLOB_DIR"
ENV_REDIRECT_KEY = "MAILREPL_REDIRECT_KEY"

DEFAULT_STATE_URL = "sqlite:///mailrepl-recovery.sqlite"
DEFAULT_LISTEN = "127.0.0.1:8471"
DEFAULT_WORKERS = 4
DEFAULT_BLOB_DIR = "mailrepl-blobs"
DEFAULT_OUTBOX_DIR = "mailrepl-recovery-outbox"  # standby changes on their way back at failback
DEFAULT_BLOB_GRACE = 600
DEFAULT_STANDBY_CHECK_INTERVAL = 300  # seconds between checks of an idle standby copy (see standby_check.py)
# checks of idle standby copies (each most often a login) started per second at most, by default
# this many per standby_check_interval (5 a second at the default 300 s): with more copies than
# that, each is checked less often than the interval instead of the checks taking the standby
# and the gateway
DEFAULT_CHECKS_PER_INTERVAL = 1500.0
DEFAULT_OUTAGE = 120.0
DEFAULT_CHECK_INTERVAL = 10.0
DEFAULT_HOLD = 3600.0
CONFIRM_MODES = ("manual", "auto")
DEFAULT_MIN_FREE_BYTES = 128 * 1024 * 1024  # a batch is refused (507) with less free for the state or blobs
DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024  # one ingest request as it travels (a source sends <= 32 MiB of bodies)
DEFAULT_MAX_INFLATED_BYTES = 128 * 1024 * 1024  # one batch decompressed (memory per ingest in flight)
DEFAULT_MAX_CONCURRENT_INGESTS = 4  # batches taken in at once; more are answered 429 + Retry-After


@dataclass(frozen=True, kw_only=True)
class FailoverSettings:
    auto: bool = False  # cut a primary server's mailboxes over by itself after an outage
    outage_seconds: float = DEFAULT_OUTAGE  # how long a primary must fail its probe first
    check_interval: float = DEFAULT_CHECK_INTERVAL
    hold_seconds: float = DEFAULT_HOLD  # an automatic cutover is not failed back before this
    confirm: str = "manual"  # "auto": switch back as soon as the primary has every standby change
    # nginx's auth_http_header X-Mailrepl-Key; None only with redirect_key_required = false
    redirect_key: str | None = field(default=None, repr=False)
    redirect_case_sensitive: bool = False  # match login names as a case-sensitive server would
    # a plain-HTTP listener on loopback serving only GET /auth, for nginx's auth_http (which
    # speaks no TLS) when the API itself is served over HTTPS; None: /auth on the API only
    redirect_listen: ListenAddress | None = None


@dataclass(frozen=True, kw_only=True)
class RecoveryGatewaySettings:
    id: str
    state_url: str = field(repr=False)  # may hold a database password
    listen: ListenAddress
    admin_token: str = field(repr=False)
    tls: ServerTlsSettings = ServerTlsSettings(plaintext=True)
    workers: int = DEFAULT_WORKERS
    append_batch: int = DEFAULT_APPEND_BATCH
    blob_dir: str = DEFAULT_BLOB_DIR  # content-addressed message parts (absolute after loading)
    blob_grace_seconds: int = DEFAULT_BLOB_GRACE  # GC never deletes a part younger than this
    outbox_dir: str = DEFAULT_OUTBOX_DIR  # the outbox's bulk bodies at failback (spool segments), part of the state
    # how often a standby copy with nothing to replay is checked for damage behind our back
    standby_check_interval: float = DEFAULT_STANDBY_CHECK_INTERVAL
    standby_checks_per_second: float = DEFAULT_CHECKS_PER_INTERVAL / DEFAULT_STANDBY_CHECK_INTERVAL
    log_level: str = "info"
    encryption: EncryptionSettings = EncryptionSettings()
    insecure_demo: bool = False  # loopback demo: secrets in a file others may read (warned at start-up)
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES  # admin API request bodies
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES  # an ingest request body (413 beyond)
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES  # a batch decompressed (400 beyond; streamed)
    max_concurrent_ingests: int = DEFAULT_MAX_CONCURRENT_INGESTS
    metrics_open: bool = False  # /metrics without a viewer token
    docs_open: bool = False  # /docs, /redoc, /openapi.json without a viewer token
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES  # free space floor of the state directory and blob store; 0: none


@dataclass(frozen=True, kw_only=True)
class BoundSource:
    """One source gateway that may send, how it is recognised, and what it may send."""

    id: str  # the source gateway's id (gateway.id of its config): batches must name it
    certificate_cn: str | None = None  # subject CN of its client certificate (signed by tls_client_ca)
    token: str | None = field(default=None, repr=False)  # per-source bearer token
    servers: tuple[str, ...]  # primary server names it may send
    mailboxes: tuple[str, ...] | None = None  # None: every mailbox of those servers

    def may_send(self, server: str, address: str) -> bool:
        return server in self.servers and (self.mailboxes is None or address in self.mailboxes)


def source_token_env(source_id: str) -> str:
    """``MAILREPL_SOURCE_<ID>_TOKEN``: the id upper-cased, anything but letters/digits -> ``_``."""
    return "MAILREPL_SOURCE_" + re.sub(r"[^A-Z0-9]", "_", source_id.upper()) + "_TOKEN"


@dataclass(frozen=True, kw_only=True)
class RecoverySettings:
    gateway: RecoveryGatewaySettings
    servers: tuple[ServerSettings, ...]
    sources: tuple[BoundSource, ...] = ()
    routes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    primaries: tuple[ServerSettings, ...] = ()
    failover: FailoverSettings = FailoverSettings()
    alerts: AlertSettings = AlertSettings()  # [alerts]: thresholds, webhook, mail
    history: HistorySettings = HistorySettings()  # [history]: retention, base snapshots
    guard: GuardSettings = GuardSettings()  # [guard]: the mass-delete guard
    lag: LagSettings = LagSettings()  # [lag]: lagged copies

    def summary(self) -> str:
        """What ``check-config`` prints: the parsed settings without secrets."""
        g = self.gateway
        lines = [
            f'recovery gateway "{g.id}": listen {g.listen}, state {display_state_url(g.state_url)}, outbox spool {g.outbox_dir}',
            f"  {g.workers} workers, append {g.append_batch} messages per batch, log level {g.log_level}"
            + (" (insecure_demo: loopback demo)" if g.insecure_demo else ""),
            f"  blob store {g.blob_dir} (GC grace {g.blob_grace_seconds}s), {g.encryption.describe()}",
            f"  batches refused (507) with less than {g.min_free_bytes} bytes free for the state or blobs",
            f"  API: {g.tls.describe()}",
        ]
        for src in self.sources:
            how = " and ".join(x for x in (f'certificate CN "{src.certificate_cn}"' if src.certificate_cn else "",
                                           "a token" if src.token else "") if x)
            what = ", ".join(src.mailboxes) if src.mailboxes is not None else "all mailboxes"
            lines.append(f'source "{src.id}" by {how}: servers {", ".join(src.servers)}; {what}')
        lines += [describe_server(s) for s in self.servers]
        lines += [f'route "{primary}" -> "{standby}"' for primary, standby in self.routes.items()]
        lines += ["primary " + describe_server(s).strip() for s in self.primaries]
        f = self.failover
        lines.append(f"  automatic failover {'on' if f.auto else 'off'} (outage {f.outage_seconds:g}s, "
                     f"checks every {f.check_interval:g}s, hold {f.hold_seconds:g}s), switch-back {f.confirm}")
        lines.append(f"  login redirect: key {'required' if f.redirect_key else 'NOT required'}, user names "
                     f"{'case-sensitive' if f.redirect_case_sensitive else 'case-insensitive'}; /metrics "
                     f"{'open' if g.metrics_open else 'viewer token'}, API docs {'open' if g.docs_open else 'viewer token'}")
        lines.append(f"  {self.alerts.describe()}")
        lines.append(f"  {self.history.describe()}")
        lines.append(f"  {self.guard.describe()}")
        lines.append(f"  {self.lag.describe()}")
        return "\n".join(lines)


def _read_gateway(table: Table) -> RecoveryGatewaySettings:
    if "ingest_token" in table.keys():
        raise table.error("ingest_token", "replaced by [[sources]] tables (id, certificate_cn and/or token, "
                                          "servers, mailboxes): one per source gateway, see deploy/examples/recovery.toml")
    blob_dir = table.string("blob_dir", DEFAULT_BLOB_DIR)
    check_interval = table.integer("standby_check_interval", DEFAULT_STANDBY_CHECK_INTERVAL, minimum=1, maximum=86400)
    demo = read_insecure_demo(table, DEFAULT_LISTEN)  # before any secret is read
    state_url = read_state_url(table, DEFAULT_STATE_URL)
    settings = RecoveryGatewaySettings(
        id=read_gateway_id(table),
        state_url=state_url,
        outbox_dir=read_outbox_dir(table, state_url, DEFAULT_OUTBOX_DIR),
        listen=read_listen(table, DEFAULT_LISTEN),
        admin_token=read_token(table, "admin_token", ENV_ADMIN_TOKEN),
        tls=read_server_tls(table),
        workers=table.integer("workers", DEFAULT_WORKERS, minimum=1),
        append_batch=table.integer("append_batch", DEFAULT_APPEND_BATCH, minimum=1),
        # the key is read even when the environment overrides it (else it would count as unknown)
        blob_dir=str(table.resolve(table.environ.get(ENV_BLOB_DIR) or blob_dir)),
        blob_grace_seconds=table.integer("blob_grace_seconds", DEFAULT_BLOB_GRACE, minimum=60),
        standby_check_interval=check_interval,
        standby_checks_per_second=table.number("standby_checks_per_second",
                                               DEFAULT_CHECKS_PER_INTERVAL / check_interval, minimum=0.1),
        log_level=read_log_level(table),
        encryption=read_encryption(table),
        insecure_demo=demo,
        max_json_bytes=read_max_json_bytes(table),
        max_batch_bytes=table.integer("max_batch_bytes", DEFAULT_MAX_BATCH_BYTES, minimum=1 << 20, maximum=1 << 40),
        max_inflated_bytes=table.integer("max_inflated_bytes", DEFAULT_MAX_INFLATED_BYTES, minimum=1 << 20,
                                         maximum=1 << 40),
        max_concurrent_ingests=table.integer("max_concurrent_ingests", DEFAULT_MAX_CONCURRENT_INGESTS,
                                             minimum=1, maximum=256),
        metrics_open=table.boolean("metrics_open", False),
        docs_open=table.boolean("docs_open", False),
        min_free_bytes=table.integer("min_free_bytes", DEFAULT_MIN_FREE_BYTES, minimum=0),
    )
    if settings.max_inflated_bytes < settings.max_batch_bytes:
        raise table.error("max_inflated_bytes", f"must be >= max_batch_bytes ({settings.max_batch_bytes}), "
                                                f"got {settings.max_inflated_bytes}")
    table.finish()
    return settings


def _read_routes(table: Table, servers: tuple[ServerSettings, ...]) -> Mapping[str, str]:
    names = [s.name for s in servers]
    routes = {}
    for primary in table.keys():
        standby = table.string(primary)
        if standby not in names:
            raise table.error(primary, f'unknown server "{standby}" (configured: {", ".join(names)})')
        routes[primary] = standby
    return MappingProxyType(routes)


def _read_sources(root: Table, gateway: RecoveryGatewaySettings, servers: tuple[ServerSettings, ...],
                  routes: Mapping[str, str]) -> tuple[BoundSource, ...]:
    tables = root.tables("sources")
    if not tables:
        raise root.error("sources", "missing (one [[sources]] table per source gateway that may send: "
                                    "id, certificate_cn and/or token, servers)")
    sources: list[BoundSource] = []
    tokens: dict[str, str] = {gateway.admin_token: "gateway.admin_token"}
    for table in tables:
        source_id = table.name("id")
        if any(s.id == source_id for s in sources):
            raise table.error("id", f"duplicate source id {show_value(source_id)}")
        cn = table.string("certificate_cn", None)
        env_var = source_token_env(source_id)
        token = (table.secret("token", env_var, token=True)
                 if "token" in table.keys() or env_var in table.environ else None)
        if cn is None and token is None:
            raise table.error("certificate_cn", "missing: give certificate_cn (mutual TLS) and/or token "
                                                f"(or the environment variable {env_var})")
        if cn is not None and not gateway.tls.mutual:
            raise table.error("certificate_cn", "needs gateway.tls_client_ca (client certificates are only "
                                                "asked for with mutual TLS)")
        if cn is not None and any(s.certificate_cn == cn for s in sources):
            raise table.error("certificate_cn", f"{show_value(cn)} is already bound to another source")
        if token is not None:
            if token in tokens:
                raise table.error("token", f"the same token as {tokens[token]}: every token must differ")
            tokens[token] = table.key("token")
        names = table.strings("servers")
        if not names:
            raise table.error("servers", "expected at least one primary server name")
        for i, name in enumerate(names):
            if name not in routes and len(servers) != 1:
                raise table.error(f"servers[{i}]", f"no standby server for primary server {show_value(name)} "
                                                   "(add it to [routes])")
        mailboxes = table.strings("mailboxes") if "mailboxes" in table.keys() else None
        if mailboxes is not None:
            for i, address in enumerate(mailboxes):
                if not address or any(c.isspace() or ord(c) < 32 for c in address):
                    raise table.error(f"mailboxes[{i}]", f"expected an address, got {show_value(address)}")
        table.finish()
        sources.append(BoundSource(id=source_id, certificate_cn=cn, token=token, servers=tuple(dict.fromkeys(names)),
                                   mailboxes=tuple(dict.fromkeys(mailboxes)) if mailboxes is not None else None))
    return tuple(sources)


def _read_failover(table: Table) -> FailoverSettings:
    settings = FailoverSettings(
        auto=table.boolean("auto", False),
        outage_seconds=table.seconds("outage_seconds", DEFAULT_OUTAGE),
        check_interval=table.seconds("check_interval", DEFAULT_CHECK_INTERVAL),
        hold_seconds=table.seconds("hold_seconds", DEFAULT_HOLD),
        confirm=table.choice("confirm", CONFIRM_MODES, "manual"),
        redirect_key=_read_redirect_key(table),
        redirect_case_sensitive=table.boolean("redirect_case_sensitive", False),
        redirect_listen=_read_redirect_listen(table),
    )
    table.finish()
    return settings


def _read_redirect_listen(table: Table) -> ListenAddress | None:
    """Loopback only: the listener is plain HTTP and answers who is where without a TLS peer."""
    value = table.string("redirect_listen", None)
    if value is None:
        return None
    try:
        listen = parse_listen(value)
    except ValueError as exc:
        raise table.error("redirect_listen", str(exc)) from None
    loopback = ipaddress.ip_address(listen.host).is_loopback if _is_ip(listen.host) else listen.host == "localhost"
    if not loopback:
        raise table.error("redirect_listen", f"expected a loopback address (127.0.0.1:PORT or [::1]:PORT), got "
                                             f"{show_value(value)}: the login redirect listener is plain HTTP")
    return listen


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _read_redirect_key(table: Table) -> str | None:
    """The key nginx must send to ``/auth``: required unless ``redirect_key_required = false``."""
    required = table.boolean("redirect_key_required", True)
    key = read_token(table, "redirect_key", ENV_REDIRECT_KEY, required=False)  # file, env, credential too
    if key is not None:
        return key
    if required:
        raise table.error("redirect_key", f"missing: the login redirect (/auth) needs the key nginx sends as "
                                          f"X-Mailrepl-Key (or {ENV_REDIRECT_KEY}); set "
                                          "redirect_key_required = false to serve /auth without one")
    return None


def load_recovery_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> RecoverySettings:
    """Read and validate a recovery gateway's config; raises ``ConfigError`` naming the key.

    ``environ`` (default: the process environment) supplies the ``MAILREPL_*`` overrides.
    """
    root = open_config(path, os.environ if environ is None else environ)
    gateway = _read_gateway(root.table("gateway"))
    servers = read_servers(root)
    routes = _read_routes(root.table("routes", required=False), servers)
    settings = RecoverySettings(gateway=gateway, servers=servers,
                                sources=_read_sources(root, gateway, servers, routes), routes=routes,
                                primaries=read_servers(root, "primaries", required=False),
                                failover=_read_failover(root.table("failover", required=False)),
                                alerts=read_alerts(root.table("alerts", required=False)),
                                history=read_history(root.table("history", required=False)),
                                guard=read_guard(root.table("guard", required=False)),
                                lag=read_lag(root.table("lag", required=False)))
    root.finish()
    g = settings.gateway
    refuse_reused(root, {"gateway.admin_token": g.admin_token, "failover.redirect_key": settings.failover.redirect_key,
                         **{f"sources.{s.id}.token": s.token for s in settings.sources}},
                  {f"{kind}.{s.name}.service_password": s.service_password
                   for kind, group in (("servers", settings.servers), ("primaries", settings.primaries)) for s in group})
    return settings
