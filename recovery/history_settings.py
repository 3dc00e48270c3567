"""``[history]`` of the recovery gateway's config: how long each mailbox's history is kept.

::

    [history]
    retention_days = 14            # 0 (the default): no history; the applied changes are kept as before
    snapshot_every_changes = 5000  # a base snapshot after this many applied changes ...
    snapshot_every_hours = 24      # ... or this long after the last one, whichever comes first
    check_interval = 600           # seconds between runs of snapshots and pruning
    export_dir = "mailrepl-restores"  # where restore exports are written (relative: to the config)

    [history.servers]              # per primary server (as the source gateway names it), in days
    primary = 30

    [history.mailboxes]            # per mailbox address, in days (before the server's value)
    "ceo@example.org" = 90

Read here only (``mailrepl.recovery.settings`` calls :func:`read_history`); the history keeper
(``mailrepl.recovery.history``) takes the typed :class:`HistorySettings`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mailrepl.recovery.override_settings import read_overrides
from mailrepl.shared.config.toml_reader import Table

__all__ = ["DAY", "MAX_RETENTION_DAYS", "HistorySettings", "read_history"]

DAY = 86400.0
MAX_RETENTION_DAYS = 3650
DEFAULT_SNAPSHOT_CHANGES = 5000
DEFAULT_SNAPSHOT_HOURS = 24.0
DEFAULT_CHECK_INTERVAL = 600.0
DEFAULT_EXPORT_DIR = "mailrepl-restores"


@dataclass(frozen=True, kw_only=True)
class HistorySettings:
    retention_days: float = 0.0  # 0: off
    snapshot_every_changes: int = DEFAULT_SNAPSHOT_CHANGES
    snapshot_every_hours: float = DEFAULT_SNAPSHOT_HOURS
    check_interval: float = DEFAULT_CHECK_INTERVAL
    servers: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    mailboxes: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    export_dir: str = DEFAULT_EXPORT_DIR  # absolute after loading

    def retention_seconds(self, server: str, address: str) -> float:
        """The mailbox's retention: its own, else its primary server's, else the default; 0: none."""
        days = self.mailboxes.get(address.lower(), self.servers.get(server, self.retention_days))
        return days * DAY

    @property
    def enabled(self) -> bool:
        return any(d > 0 for d in (self.retention_days, *self.servers.values(), *self.mailboxes.values()))

    def describe(self) -> str:
        if not self.enabled:
            return "history off"
        extra = len(self.servers) + len(self.mailboxes)
        return (f"history kept {self.retention_days:g} days" + (f" ({extra} overrides)" if extra else "")
                + f", a base snapshot every {self.snapshot_every_changes} changes or {self.snapshot_every_hours:g} h")


def _days(table: Table, name: str, default: float | None = None) -> float:
    value = table._typed(name, default, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                         and math.isfinite(v) and 0 <= v <= MAX_RETENTION_DAYS,
                         f"a number of days 0-{MAX_RETENTION_DAYS}")
    return float(value)


def read_history(table: Table) -> HistorySettings:
    servers, mailboxes = read_overrides(table, _days)
    settings = HistorySettings(
        retention_days=_days(table, "retention_days", 0.0),
        snapshot_every_changes=table.integer("snapshot_every_changes", DEFAULT_SNAPSHOT_CHANGES, minimum=1),
        snapshot_every_hours=table.seconds("snapshot_every_hours", DEFAULT_SNAPSHOT_HOURS),
        check_interval=table.seconds("check_interval", DEFAULT_CHECK_INTERVAL),
        servers=servers, mailboxes=mailboxes,
        export_dir=str(table.resolve(table.string("export_dir", DEFAULT_EXPORT_DIR))),
    )
    table.finish()
    return settings
