"""Alarms (conditions that hold for a while) and alerts (what is sent about them).

An :class:`Alarm` is generic: a ``kind`` (``lag``, ``copy-queue``, ``replay-queue``,
``mailbox-error``, ``rejected-messages``, ``certificate-expiry``, and whatever a producer adds,
e.g. ``mass-delete-hold`` or ``verify-difference``), the mailbox it is about (None for the
gateway itself), a severity, a one-line message and since when it holds. New kinds only need a
producer: a callable answering the alarms that hold now.

An :class:`Alert` is one message sent: an alarm that starts (``firing``) or ends (``resolved``),
or a one-off ``event`` (a site-state change, an automatic failover).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable

__all__ = ["Alarm", "Alert", "Producer", "SEVERITIES", "KNOWN_KINDS"]

SEVERITIES = ("info", "warning", "critical")
# exported from the start at 0 on /metrics (a rule's increase() needs the series before the first alert)
KNOWN_KINDS = ("lag", "copy-queue", "replay-queue", "mailbox-error", "rejected-messages", "site-state",
               "automatic-failover", "certificate-expiry", "queue-bound", "disk-full", "peer-disk-full",
               "verify-difference", "mass-delete-hold")


@dataclass(frozen=True)
class Alarm:
    kind: str
    severity: str
    message: str
    since: datetime
    address: str | None = None
    server: str | None = None
    count: int | None = None  # how many (rejected messages, …): a higher count is sent again
    detail: str | None = None  # what tells two alarms of one kind and mailbox apart (a file, a folder)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    @property
    def key(self) -> tuple[str, str | None, str | None, str | None]:
        return (self.kind, self.server, self.address, self.detail)

    def to_json(self) -> dict[str, Any]:
        return dict(kind=self.kind, severity=self.severity, message=self.message, since=self.since.isoformat(),
                    address=self.address, server=self.server, count=self.count, detail=self.detail)


Producer = Callable[[], Iterable[Alarm]]


@dataclass(frozen=True)
class Alert:
    """One alert as sent: ``state`` is ``firing``, ``resolved`` or ``event``."""

    state: str
    alarm: Alarm
    gateway: str  # the gateway's id
    role: str  # source or recovery
    id: str = field(default="")

    def text(self) -> str:
        """One line for chat tools and mail subjects."""
        where = f" {self.alarm.address}" if self.alarm.address else ""
        label = {"firing": self.alarm.severity.upper(), "resolved": "RESOLVED", "event": "EVENT"}[self.state]
        return f"[mailrepl {self.role} {self.gateway}] {label} {self.alarm.kind}{where}: {self.alarm.message}"

    def to_json(self) -> dict[str, Any]:
        return dict(id=self.id, state=self.state, gateway=self.gateway, role=self.role, text=self.text(),
                    **self.alarm.to_json())


def unique(alarms: Iterable[Alarm]) -> list[Alarm]:
    """The first alarm of each key."""
    seen: dict[tuple, Alarm] = {}
    for a in alarms:
        seen.setdefault(a.key, a)
    return list(seen.values())
