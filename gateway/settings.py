"""Settings of the source gateway, read from a TOML file (the only place that reads them).

::

    [gateway]   id, state_url, listen, admin_token, poll_interval, idle_poll_max, idle_polls_per_second, workers, fetch_chunk, outbox_dir, log_level,
                tls_cert, tls_key, tls_client_ca, plaintext (the admin API; see ``tls_settings``),
                encryption_key(_file), encryption_old_key_files,
                max_json_bytes, metrics_open, docs_open,
                queue_max_changes, queue_max_bytes, mailbox_queue_max_changes, mailbox_queue_max_bytes,
                queue_warn_percent, min_free_bytes (back-pressure, see ``_read_queue``)
    [peer]      url, token, batch_max_changes, batch_max_bytes, part_threshold, timeout, retry_initial,
                retry_max, ca_file, client_cert, client_key
    [link]      optional rate cap of the gateway link: rate_mbit, live_share_percent, and
                [[link.windows]] (from, to, rate_mbit) by local time of day (see ``_read_link``)

The peer is reached with this gateway's client certificate (``client_cert``/``client_key``:
mutual TLS, the recommended mode) and/or a bearer ``token`` bound to this source at the
recovery gateway; at least one of them is required.
    [[servers]] the primary mail servers (see ``mailrepl.shared.config.settings_common``)
    [alerts]    optional: thresholds, webhook, mail (see ``mailrepl.shared.config.alerts_settings``)

``deploy/examples/source.toml`` documents every key. Every secret may also come from a
``<key>_file``, the environment or a systemd credential (``Table.secret``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from mailrepl.shared.config.settings_common import (
    ENV_ADMIN_TOKEN,
    EncryptionSettings,
    ListenAddress,
    ServerSettings,
    describe_server,
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
from mailrepl.shared.engines.queue_gate import (
    DEFAULT_MAILBOX_QUEUE_MAX_BYTES, DEFAULT_MAILBOX_QUEUE_MAX_CHANGES, DEFAULT_MIN_FREE_BYTES,
    DEFAULT_QUEUE_MAX_BYTES, DEFAULT_QUEUE_MAX_CHANGES, DEFAULT_QUEUE_WARN_RATIO, QueueLimits,
)
from mailrepl.shared.config.alerts_settings import AlertSettings, read_alerts
from mailrepl.shared.config.tls_settings import ServerTlsSettings, read_server_tls
from mailrepl.shared.config.toml_reader import Table, open_config
from mailrepl.shared.protocol.link_rate import LinkSchedule, RateWindow, parse_clock

__all__ = [
    "ENV_PEER_TOKEN",
    "DEFAULT_LISTEN",
    "SourceGatewaySettings",
    "PeerSettings",
    "LinkSettings",
    "SourceSettings",
    "load_source_settings",
    "load_source_gateway",
]

ENV_PEER_TOKEN = "MAILREPL_PEER_TOKEN"

DEFAULT_STATE_URL = "sqlite:///mailrepl-source.sqlite"
DEFAULT_LISTEN = "127.0.0.1:8470"
DEFAULT_POLL_INTERVAL = 5.0
# An idle mailbox is polled further apart after each quiet poll, up to this (push wake-ups and the
# most recently active mailboxes keep their latency; 1,000 idle mailboxes cost ~8 polls a second)
DEFAULT_IDLE_POLL_MAX = 120.0
# polls of mailboxes (each most often a login within the connection bound) started per second
# at most, by default this many per poll interval (10 a second at the default 5 s): thousands of
# protected mailboxes cost a bounded trickle when nothing changes
DEFAULT_POLLS_PER_INTERVAL = 50.0
DEFAULT_LIVE_SHARE_PERCENT = 20
DEFAULT_WORKERS = 4
DEFAULT_FETCH_CHUNK = 200
DEFAULT_BATCH_MAX_CHANGES = 2000
DEFAULT_BATCH_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_PART_THRESHOLD = 16 * 1024  # MIME part bodies from this size on travel content-addressed (see README: measured)
DEFAULT_PEER_TIMEOUT = 60.0
DEFAULT_RETRY_INITIAL = 1.0
DEFAULT_RETRY_MAX = 60.0
DEFAULT_FAILBACK_BLOB_DIR = "mailrepl-failback-blobs"
DEFAULT_OUTBOX_DIR = "mailrepl-outbox"


@dataclass(frozen=True, kw_only=True)
class SourceGatewaySettings:
    id: str
    state_url: str = field(repr=False)  # may hold a database password
    listen: ListenAddress
    admin_token: str = field(repr=False)
    tls: ServerTlsSettings = ServerTlsSettings(plaintext=True)
    poll_interval: float = DEFAULT_POLL_INTERVAL
    idle_poll_max: float = DEFAULT_IDLE_POLL_MAX  # a mailbox quiet for long is polled at most this far apart
    idle_polls_per_second: float = DEFAULT_POLLS_PER_INTERVAL / DEFAULT_POLL_INTERVAL  # polls a second, at most
    workers: int = DEFAULT_WORKERS
    fetch_chunk: int = DEFAULT_FETCH_CHUNK
    failback_blob_dir: str = DEFAULT_FAILBACK_BLOB_DIR  # parts of standby changes replayed at failback
    outbox_dir: str = DEFAULT_OUTBOX_DIR  # the outbox's bulk bodies (spool segments), part of the state
    log_level: str = "info"
    encryption: EncryptionSettings = EncryptionSettings()
    insecure_demo: bool = False  # loopback demo: secrets in a file others may read (warned at start-up)
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES  # admin API request bodies
    metrics_open: bool = False  # /metrics without a viewer token
    docs_open: bool = False  # /docs, /redoc, /openapi.json without a viewer token
    queue: QueueLimits = QueueLimits()  # bound of the copy queue, alarm threshold, free-space floor


@dataclass(frozen=True, kw_only=True)
class PeerSettings:
    """The recovery gateway this source ships its changes to."""

    url: str
    token: str | None = field(default=None, repr=False)  # None: the client certificate alone
    batch_max_changes: int = DEFAULT_BATCH_MAX_CHANGES
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    part_threshold: int = DEFAULT_PART_THRESHOLD
    timeout: float = DEFAULT_PEER_TIMEOUT
    retry_initial: float = DEFAULT_RETRY_INITIAL
    retry_max: float = DEFAULT_RETRY_MAX
    ca_file: Path | None = None  # verifies the recovery gateway (else the system's CAs)
    client_cert: Path | None = None  # this gateway's client certificate chain (mutual TLS)
    client_key: Path | None = None


@dataclass(frozen=True, kw_only=True)
class LinkSettings:
    """The rate cap of the link to the recovery gateway (no cap by default)."""

    schedule: LinkSchedule = LinkSchedule()
    live_share: float = DEFAULT_LIVE_SHARE_PERCENT / 100  # of the cap kept for live changes during a seed

    def describe(self) -> str:
        if not self.schedule.capped:
            return "link: no rate cap"
        windows = ", ".join(f"{w.start // 60:02d}:{w.start % 60:02d}-{w.end // 60:02d}:{w.end % 60:02d} "
                            f"{_mbit(w.rate)}" for w in self.schedule.windows)
        return (f"link: capped at {_mbit(self.schedule.default)}"
                + (f", windows {windows}" if windows else "")
                + f", {round(self.live_share * 100)} % kept for live changes")


def _mbit(rate: float) -> str:
    return f"{rate / 125_000:g} Mbit/s" if rate > 0 else "no cap"


@dataclass(frozen=True, kw_only=True)
class SourceSettings:
    gateway: SourceGatewaySettings
    peer: PeerSettings
    servers: tuple[ServerSettings, ...]
    link: LinkSettings = LinkSettings()
    alerts: AlertSettings = AlertSettings()  # [alerts]: thresholds, webhook, mail

    def summary(self) -> str:
        """What ``check-config`` prints: the parsed settings without secrets."""
        g, p = self.gateway, self.peer
        lines = [
            f'source gateway "{g.id}": listen {g.listen}, state {display_state_url(g.state_url)}, outbox spool {g.outbox_dir}',
            f"  poll every {g.poll_interval:g} s, {g.workers} workers, fetch {g.fetch_chunk} messages per chunk, "
            f"log level {g.log_level}"
            + (" (insecure_demo: loopback demo)" if g.insecure_demo else ""),
            f"peer {p.url}: batches up to {p.batch_max_changes} changes / {p.batch_max_bytes} bytes, "
            f"timeout {p.timeout:g} s, retry {p.retry_initial:g}-{p.retry_max:g} s"
            + (f", CA {p.ca_file}" if p.ca_file else "")
            + (f", client certificate {p.client_cert}" if p.client_cert else ""),
            f"  API: {g.tls.describe()}",
            f"  {g.encryption.describe()}",
            f"  copy queue bound {g.queue.max_changes} changes / {g.queue.max_bytes} bytes "
            f"({g.queue.mailbox_max_changes} / {g.queue.mailbox_max_bytes} per mailbox), alarm at "
            f"{round(g.queue.warn_ratio * 100)} %, free-space floor {g.queue.min_free_bytes} bytes",
            f"  {self.alerts.describe()}",
            f"  {self.link.describe()}",
        ]
        lines += [describe_server(s) for s in self.servers]
        return "\n".join(lines)


def _read_gateway(table: Table) -> SourceGatewaySettings:
    demo = read_insecure_demo(table, DEFAULT_LISTEN)  # before any secret is read
    state_url = read_state_url(table, DEFAULT_STATE_URL)
    settings = SourceGatewaySettings(
        id=read_gateway_id(table),
        state_url=state_url,
        outbox_dir=read_outbox_dir(table, state_url, DEFAULT_OUTBOX_DIR),
        listen=read_listen(table, DEFAULT_LISTEN),
        admin_token=read_token(table, "admin_token", ENV_ADMIN_TOKEN),
        tls=read_server_tls(table),
        poll_interval=table.seconds("poll_interval", DEFAULT_POLL_INTERVAL),
        idle_poll_max=table.seconds("idle_poll_max", DEFAULT_IDLE_POLL_MAX),
        idle_polls_per_second=table.number(
            "idle_polls_per_second", DEFAULT_POLLS_PER_INTERVAL / table.seconds("poll_interval", DEFAULT_POLL_INTERVAL),
            minimum=0.1),
        workers=table.integer("workers", DEFAULT_WORKERS, minimum=1),
        fetch_chunk=table.integer("fetch_chunk", DEFAULT_FETCH_CHUNK, minimum=1),
        failback_blob_dir=str(table.resolve(table.string("failback_blob_dir", DEFAULT_FAILBACK_BLOB_DIR))),
        log_level=read_log_level(table),
        encryption=read_encryption(table),
        insecure_demo=demo,
        max_json_bytes=read_max_json_bytes(table),
        metrics_open=table.boolean("metrics_open", False),
        docs_open=table.boolean("docs_open", False),
        queue=_read_queue(table),
    )
    table.finish()
    if settings.idle_poll_max < settings.poll_interval:
        raise table.error("idle_poll_max", f"must be >= poll_interval ({settings.poll_interval:g}), "
                                           f"got {settings.idle_poll_max:g}")
    return settings


def _read_link(table: Table) -> LinkSettings:
    """``[link]``: ``rate_mbit`` (0 or missing: no cap), ``live_share_percent`` (default 20) and
    ``[[link.windows]]`` with ``from``/``to`` ("HH:MM", local time; a window may run past
    midnight, "24:00" ends at midnight) and that window's ``rate_mbit`` (0: no cap then). The
    first window that holds sets the cap, else ``rate_mbit``."""
    rate = table.number("rate_mbit", 0.0)
    share = table.integer("live_share_percent", DEFAULT_LIVE_SHARE_PERCENT, minimum=0, maximum=90)
    windows = []
    for w in table.tables("windows"):
        try:
            start, end = parse_clock(w.string("from")), parse_clock(w.string("to"))
            window = RateWindow(start, end, w.number("rate_mbit") * 125_000)
        except ValueError as exc:
            raise w.error("from", str(exc)) from None
        if start == 24 * 60:
            raise w.error("from", "a window cannot start at 24:00")
        w.finish()
        windows.append(window)
    table.finish()
    return LinkSettings(schedule=LinkSchedule(default=rate * 125_000, windows=tuple(windows)), live_share=share / 100)


def _read_queue(table: Table) -> QueueLimits:
    """The copy queue's bounds (gateway-wide and per mailbox; changes and bytes of queued bodies),
    the alarm threshold in percent of a bound, and the state directory's free-space floor. A
    per-mailbox bound not given is the default, or the gateway-wide bound if that is smaller."""
    max_changes = table.integer("queue_max_changes", DEFAULT_QUEUE_MAX_CHANGES, minimum=1)
    max_bytes = table.integer("queue_max_bytes", DEFAULT_QUEUE_MAX_BYTES, minimum=1 << 20)
    per_changes = table.integer("mailbox_queue_max_changes", min(DEFAULT_MAILBOX_QUEUE_MAX_CHANGES, max_changes),
                                minimum=1)
    per_bytes = table.integer("mailbox_queue_max_bytes", min(DEFAULT_MAILBOX_QUEUE_MAX_BYTES, max_bytes),
                              minimum=1 << 20)
    if per_changes > max_changes:
        raise table.error("mailbox_queue_max_changes", f"must be <= queue_max_changes ({max_changes}), got {per_changes}")
    if per_bytes > max_bytes:
        raise table.error("mailbox_queue_max_bytes", f"must be <= queue_max_bytes ({max_bytes}), got {per_bytes}")
    percent = table.integer("queue_warn_percent", round(DEFAULT_QUEUE_WARN_RATIO * 100), minimum=1, maximum=99)
    return QueueLimits(max_changes=max_changes, max_bytes=max_bytes, mailbox_max_changes=per_changes,
                       mailbox_max_bytes=per_bytes, warn_ratio=percent / 100,
                       min_free_bytes=table.integer("min_free_bytes", DEFAULT_MIN_FREE_BYTES, minimum=0))


def _read_peer(table: Table) -> PeerSettings:
    url = table.http_url("url")
    retry_initial = table.seconds("retry_initial", DEFAULT_RETRY_INITIAL)
    retry_max = table.seconds("retry_max", DEFAULT_RETRY_MAX)
    if retry_max < retry_initial:
        raise table.error("retry_max", f"must be >= retry_initial ({retry_initial:g}), got {retry_max:g}")
    client_cert, client_key = table.file("client_cert"), table.file("client_key")
    if (client_cert is None) != (client_key is None):
        raise table.error("client_key" if client_key is None else "client_cert",
                          "missing (client_cert and client_key go together)")
    if client_cert is not None and not url.startswith("https://"):
        raise table.error("client_cert", "a client certificate needs an https:// url")
    has_token = "token" in table.keys() or ENV_PEER_TOKEN in table.environ
    settings = PeerSettings(
        url=url,
        token=read_token(table, "token", ENV_PEER_TOKEN) if has_token or client_cert is None else None,
        batch_max_changes=table.integer("batch_max_changes", DEFAULT_BATCH_MAX_CHANGES, minimum=1),
        batch_max_bytes=table.integer("batch_max_bytes", DEFAULT_BATCH_MAX_BYTES, minimum=1),
        part_threshold=table.integer("part_threshold", DEFAULT_PART_THRESHOLD, minimum=256),
        timeout=table.seconds("timeout", DEFAULT_PEER_TIMEOUT),
        retry_initial=retry_initial,
        retry_max=retry_max,
        ca_file=table.file("ca_file"),
        client_cert=client_cert,
        client_key=client_key,
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
        alerts=read_alerts(root.table("alerts", required=False)),
        link=_read_link(root.table("link", required=False)),
    )
    root.finish()
    refuse_reused(root, {"gateway.admin_token": settings.gateway.admin_token, "peer.token": settings.peer.token},
                  {f"servers.{s.name}.service_password": s.service_password for s in settings.servers})
    return settings


def load_source_gateway(path: str | Path, environ: Mapping[str, str] | None = None) -> SourceGatewaySettings:
    """Only the ``[gateway]`` table: where the admin API listens and its token.

    For admin tools on the gateway host, which must not need the mail servers' or the peer's
    secrets just to find the API.
    """
    root = open_config(path, os.environ if environ is None else environ)
    return _read_gateway(root.table("gateway"))
