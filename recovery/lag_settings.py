"""``[lag]`` of the recovery gateway's config: lagged copies (opt-in per server or mailbox).

::

    [lag]
    replay_delay = 0              # seconds a received change waits before it is applied; 0: none
    [lag.servers]                 # per primary server (as the source gateway names it), seconds
    primary = 86400
    [lag.mailboxes]               # per mailbox address, seconds (before the server's value)
    "ceo@example.org" = 1209600   # 14 days, the longest

Read here only; the gate (``mailrepl.recovery.replay_gate``) takes the typed :class:`LagSettings`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mailrepl.recovery.override_settings import read_overrides
from mailrepl.shared.config.toml_reader import Table

__all__ = ["MAX_DELAY", "LagSettings", "read_lag"]

MAX_DELAY = 14 * 86400.0


@dataclass(frozen=True, kw_only=True)
class LagSettings:
    replay_delay: float = 0.0
    servers: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    mailboxes: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def delay(self, server: str, address: str) -> float:
        return self.mailboxes.get(address.lower(), self.servers.get(server, self.replay_delay))

    @property
    def enabled(self) -> bool:
        return any(d > 0 for d in (self.replay_delay, *self.servers.values(), *self.mailboxes.values()))

    def describe(self) -> str:
        if not self.enabled:
            return "no lagged copies"
        extra = len(self.servers) + len(self.mailboxes)
        return f"lagged copies: replay delay {self.replay_delay:g}s" + (f" ({extra} overrides)" if extra else "")


def _delay(table: Table, name: str, default: float | None = None) -> float:
    return float(table._typed(name, default, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                              and math.isfinite(v) and 0 <= v <= MAX_DELAY, f"a number of seconds 0-{MAX_DELAY:g}"))


def read_lag(table: Table) -> LagSettings:
    servers, mailboxes = read_overrides(table, _delay)
    settings = LagSettings(replay_delay=_delay(table, "replay_delay", 0.0), servers=servers,
                           mailboxes=mailboxes)
    table.finish()
    return settings
