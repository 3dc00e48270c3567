"""Settings of the recovery gateway, read from a TOML file (the only place that reads them).

::

    [gateway]   id, state_url, listen, admin_token, ingest_token, workers, append_batch, blob_dir,
                blob_grace_seconds, log_level, metrics_open, docs_open
    [[servers]] the standby mail servers (see ``mailrepl.shared.config.settings_common``)
    [routes]    optional: primary server name (as the source gateway calls it) = standby server name
    [[primaries]] optional: the primary mail servers as this site reaches them (same keys as
                [[servers]]), for the login redirect and the health checks of automatic failover
    [failover]  auto, outage_seconds, check_interval, hold_seconds, confirm, redirect_key (or
                MAILREPL_REDIRECT_KEY; required unless redirect_key_required = false),
                redirect_case_sensitive

Without ``routes`` a single standby server receives everything. ``deploy/examples/recovery.toml``
documents every key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from mailrepl.shared.config.settings_common import (
    ENV_ADMIN_TOKEN,
    ListenAddress,
    ServerSettings,
    describe_server,
    display_state_url,
    read_gateway_id,
    read_listen,
    read_log_level,
    read_servers,
    read_state_url,
    read_token,
)
from mailrepl.shared.config.toml_reader import Table, open_config

__all__ = [
    "ENV_INGEST_TOKEN",
    "ENV_REDIRECT_KEY",
    "FailoverSettings",
    "RecoveryGatewaySettings",
    "RecoverySettings",
    "load_recovery_settings",
]

ENV_INGEST_TOKEN = "MAILREPL_INGEST_TOKEN"
ENV_BLOB_DIR = "MAILREPL_BLOB_DIR"
ENV_REDIRECT_KEY = "MAILREPL_REDIRECT_KEY"

DEFAULT_STATE_URL = "sqlite:///mailrepl-recovery.sqlite"
DEFAULT_LISTEN = "127.0.0.1:8471"
DEFAULT_WORKERS = 4
DEFAULT_APPEND_BATCH = 100
DEFAULT_BLOB_DIR = "mailrepl-blobs"
DEFAULT_BLOB_GRACE = 600
DEFAULT_OUTAGE = 120.0
DEFAULT_CHECK_INTERVAL = 10.0
DEFAULT_HOLD = 3600.0
CONFIRM_MODES = ("manual", "auto")


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


@dataclass(frozen=True, kw_only=True)
class RecoveryGatewaySettings:
    id: str
    state_url: str = field(repr=False)  # may hold a database password
    listen: ListenAddress
    admin_token: str = field(repr=False)
    ingest_token: str = field(repr=False)
    workers: int = DEFAULT_WORKERS
    append_batch: int = DEFAULT_APPEND_BATCH
    blob_dir: str = DEFAULT_BLOB_DIR  # content-addressed message parts (absolute after loading)
    blob_grace_seconds: int = DEFAULT_BLOB_GRACE  # GC never deletes a part younger than this
    log_level: str = "info"
    metrics_open: bool = False  # /metrics without a viewer token
    docs_open: bool = False  # /docs, /redoc, /openapi.json without a viewer token


@dataclass(frozen=True, kw_only=True)
class RecoverySettings:
    gateway: RecoveryGatewaySettings
    servers: tuple[ServerSettings, ...]
    routes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    primaries: tuple[ServerSettings, ...] = ()
    failover: FailoverSettings = FailoverSettings()

    def summary(self) -> str:
        """What ``check-config`` prints: the parsed settings without secrets."""
        g = self.gateway
        lines = [
            f'recovery gateway "{g.id}": listen {g.listen}, state {display_state_url(g.state_url)}',
            f"  {g.workers} workers, append {g.append_batch} messages per batch, log level {g.log_level}",
            f"  blob store {g.blob_dir} (GC grace {g.blob_grace_seconds}s)",
        ]
        lines += [describe_server(s) for s in self.servers]
        lines += [f'route "{primary}" -> "{standby}"' for primary, standby in self.routes.items()]
        lines += ["primary " + describe_server(s).strip() for s in self.primaries]
        f = self.failover
        lines.append(f"  automatic failover {'on' if f.auto else 'off'} (outage {f.outage_seconds:g}s, "
                     f"checks every {f.check_interval:g}s, hold {f.hold_seconds:g}s), switch-back {f.confirm}")
        lines.append(f"  login redirect: key {'required' if f.redirect_key else 'NOT required'}, user names "
                     f"{'case-sensitive' if f.redirect_case_sensitive else 'case-insensitive'}; /metrics "
                     f"{'open' if g.metrics_open else 'viewer token'}, API docs {'open' if g.docs_open else 'viewer token'}")
        return "\n".join(lines)


def _read_gateway(table: Table) -> RecoveryGatewaySettings:
    blob_dir = table.string("blob_dir", DEFAULT_BLOB_DIR)
    settings = RecoveryGatewaySettings(
        id=read_gateway_id(table),
        state_url=read_state_url(table, DEFAULT_STATE_URL),
        listen=read_listen(table, DEFAULT_LISTEN),
        admin_token=read_token(table, "admin_token", ENV_ADMIN_TOKEN),
        ingest_token=read_token(table, "ingest_token", ENV_INGEST_TOKEN),
        workers=table.integer("workers", DEFAULT_WORKERS, minimum=1),
        append_batch=table.integer("append_batch", DEFAULT_APPEND_BATCH, minimum=1),
        # the key is read even when the environment overrides it (else it would count as unknown)
        blob_dir=str(table.resolve(table.environ.get(ENV_BLOB_DIR) or blob_dir)),
        blob_grace_seconds=table.integer("blob_grace_seconds", DEFAULT_BLOB_GRACE, minimum=60),
        log_level=read_log_level(table),
        metrics_open=table.boolean("metrics_open", False),
        docs_open=table.boolean("docs_open", False),
    )
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


def _read_failover(table: Table) -> FailoverSettings:
    settings = FailoverSettings(
        auto=table.boolean("auto", False),
        outage_seconds=table.seconds("outage_seconds", DEFAULT_OUTAGE),
        check_interval=table.seconds("check_interval", DEFAULT_CHECK_INTERVAL),
        hold_seconds=table.seconds("hold_seconds", DEFAULT_HOLD),
        confirm=table.choice("confirm", CONFIRM_MODES, "manual"),
        redirect_key=_read_redirect_key(table),
        redirect_case_sensitive=table.boolean("redirect_case_sensitive", False),
    )
    table.finish()
    return settings


def _read_redirect_key(table: Table) -> str | None:
    """The key nginx must send to ``/auth``: required unless ``redirect_key_required = false``."""
    required = table.boolean("redirect_key_required", True)
    if "redirect_key" in table.keys() or ENV_REDIRECT_KEY in table.environ:
        return table.secret("redirect_key", ENV_REDIRECT_KEY, token=True)
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
    settings = RecoverySettings(gateway=gateway, servers=servers,
                                routes=_read_routes(root.table("routes", required=False), servers),
                                primaries=read_servers(root, "primaries", required=False),
                                failover=_read_failover(root.table("failover", required=False)))
    root.finish()
    return settings
