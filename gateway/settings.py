"""Settings of the source gateway, read from a TOML file (the only place that reads them).

::

    [gateway]   id, state_url, listen, admin_token, poll_interval, workers, fetch_chunk, log_level,
                metrics_open, docs_open
    [peer]      url, token, batch_max_changes, batch_max_bytes, part_threshold, timeout, retry_initial,
                retry_max, ca_file
    [[servers]] the primary mail servers (see ``mailrepl.shared.config.settings_common``)

``deploy/examples/source.toml`` documents every key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
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
    "ENV_PEER_TOKEN",
    "DEFAULT_LISTEN",
    "SourceGatewaySettings",
    "PeerSettings",
    "SourceSettings",
    "load_source_settings",
    "load_source_gateway",
]

ENV_PEER_TOKEN = "MAILREPL_PEER_TOKEN"

DEFAULT_STATE_URL = "sqlite:///mailrepl-source.sqlite"
DEFAULT_LISTEN = "127.0.0.1:8470"
DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_WORKERS = 4
DEFAULT_FETCH_CHUNK = 200
DEFAULT_BATCH_MAX_CHANGES = 2000
DEFAULT_BATCH_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_PART_THRESHOLD = 16 * 1024  # MIME part bodies from this size on travel content-addressed (see README: measured)
DEFAULT_PEER_TIMEOUT = 60.0
DEFAULT_RETRY_INITIAL = 1.0
DEFAULT_RETRY_MAX = 60.0
DEFAULT_FAILBACK_BLOB_DIR = "mailrepl-failback-blobs"


@dataclass(frozen=True, kw_only=True)
class SourceGatewaySettings:
    id: str
    state_url: str = field(repr=False)  # may hold a database password
    listen: ListenAddress
    admin_token: str = field(repr=False)
    poll_interval: float = DEFAULT_POLL_INTERVAL
    workers: int = DEFAULT_WORKERS
    fetch_chunk: int = DEFAULT_FETCH_CHUNK
    failback_blob_dir: str = DEFAULT_FAILBACK_BLOB_DIR  # parts of standby changes replayed at failback
    log_level: str = "info"
    metrics_open: bool = False  # /metrics without a viewer token
    docs_open: bool = False  # /docs, /redoc, /openapi.json without a viewer token


@dataclass(frozen=True, kw_only=True)
class PeerSettings:
    """The recovery gateway this source ships its changes to."""

    url: str
    token: str = field(repr=False)
    batch_max_changes: int = DEFAULT_BATCH_MAX_CHANGES
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    part_threshold: int = DEFAULT_PART_THRESHOLD
    timeout: float = DEFAULT_PEER_TIMEOUT
    retry_initial: float = DEFAULT_RETRY_INITIAL
    retry_max: float = DEFAULT_RETRY_MAX
    ca_file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class SourceSettings:
    gateway: SourceGatewaySettings
    peer: PeerSettings
    servers: tuple[ServerSettings, ...]

    def summary(self) -> str:
        """What ``check-config`` prints: the parsed settings without secrets."""
        g, p = self.gateway, self.peer
        lines = [
            f'source gateway "{g.id}": listen {g.listen}, state {display_state_url(g.state_url)}',
            f"  poll every {g.poll_interval:g} s, {g.workers} workers, fetch {g.fetch_chunk} messages per chunk, "
            f"log level {g.log_level}",
            f"peer {p.url}: batches up to {p.batch_max_changes} changes / {p.batch_max_bytes} bytes, "
            f"timeout {p.timeout:g} s, retry {p.retry_initial:g}-{p.retry_max:g} s"
            + (f", CA {p.ca_file}" if p.ca_file else ""),
        ]
        lines += [describe_server(s) for s in self.servers]
        return "\n".join(lines)


def _read_gateway(table: Table) -> SourceGatewaySettings:
    settings = SourceGatewaySettings(
        id=read_gateway_id(table),
        state_url=read_state_url(table, DEFAULT_STATE_URL),
        listen=read_listen(table, DEFAULT_LISTEN),
        admin_token=read_token(table, "admin_token", ENV_ADMIN_TOKEN),
        poll_interval=table.seconds("poll_interval", DEFAULT_POLL_INTERVAL),
        workers=table.integer("workers", DEFAULT_WORKERS, minimum=1),
        fetch_chunk=table.integer("fetch_chunk", DEFAULT_FETCH_CHUNK, minimum=1),
        failback_blob_dir=str(table.resolve(table.string("failback_blob_dir", DEFAULT_FAILBACK_BLOB_DIR))),
        log_level=read_log_level(table),
        metrics_open=table.boolean("metrics_open", False),
        docs_open=table.boolean("docs_open", False),
    )
    table.finish()
    return settings


def _read_peer(table: Table) -> PeerSettings:
    url = table.http_url("url")
    retry_initial = table.seconds("retry_initial", DEFAULT_RETRY_INITIAL)
    retry_max = table.seconds("retry_max", DEFAULT_RETRY_MAX)
    if retry_max < retry_initial:
        raise table.error("retry_max", f"must be >= retry_initial ({retry_initial:g}), got {retry_max:g}")
    settings = PeerSettings(
        url=url,
        token=read_token(table, "token", ENV_PEER_TOKEN),
        batch_max_changes=table.integer("batch_max_changes", DEFAULT_BATCH_MAX_CHANGES, minimum=1),
        batch_max_bytes=table.integer("batch_max_bytes", DEFAULT_BATCH_MAX_BYTES, minimum=1),
        part_threshold=table.integer("part_threshold", DEFAULT_PART_THRESHOLD, minimum=256),
        timeout=table.seconds("timeout", DEFAULT_PEER_TIMEOUT),
        retry_initial=retry_initial,
        retry_max=retry_max,
        ca_file=table.file("ca_file"),
    )
    table.finish()
    return settings


def load_source_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> SourceSettings:
    """Read and validate a source gateway's config; raises ``ConfigError`` naming the key.

    ``environ`` (default: the process environment) supplies the ``MAILREPL_*`` overrides.
    """
    root = open_config(path, os.environ if environ is None else environ)
    settings = SourceSettings(
        gateway=_read_gateway(root.table("gateway")),
        peer=_read_peer(root.table("peer")),
        servers=read_servers(root),
    )
    root.finish()
    return settings


def load_source_gateway(path: str | Path, environ: Mapping[str, str] | None = None) -> SourceGatewaySettings:
    """Only the ``[gateway]`` table: where the admin API listens and its token.

    For admin tools on the gateway host, which must not need the mail servers' or the peer's
    secrets just to find the API.
    """
    root = open_config(path, os.environ if environ is None else environ)
    return _read_gateway(root.table("gateway"))
