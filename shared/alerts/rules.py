"""Mailbox statuses -> alarms, and site-state changes between two snapshots (pure functions)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping

from mailrepl.shared.alerts.model import Alarm

__all__ = ["Thresholds", "status_alarms", "site_changes", "SiteChange"]


@dataclass(frozen=True)
class Thresholds:
    lag_seconds: float
    queue: int  # copy queue (source) or replay queue (recovery)


@dataclass(frozen=True)
class SiteChange:
    server: str
    address: str
    before: str
    after: str
    actor: str | None = None  # admin, auto, source; None when only the state is known
    detail: str | None = None


def _get(st: Any, name: str, default: Any = None) -> Any:
    return st.get(name, default) if isinstance(st, Mapping) else getattr(st, name, default)


def status_alarms(statuses: Iterable[Any], limits: Thresholds, now: datetime) -> list[Alarm]:
    """Alarms of mailbox statuses (``MailboxStatus`` or its JSON): lag or a queue over its
    threshold, an error, rejected messages. ``since`` is ``now``; the monitor keeps the first."""
    out: list[Alarm] = []
    for st in statuses:
        server, address = _get(st, "server"), _get(st, "address")
        mbx = dict(server=server, address=address, since=now)
        lag = _get(st, "lag_seconds") or 0.0
        if lag > limits.lag_seconds:
            out.append(Alarm("lag", "warning", f"{lag:.0f} s behind (threshold {limits.lag_seconds:g} s)", **mbx))
        for queue in ("copy_queue", "replay_queue"):
            n = _get(st, queue) or 0
            if n > limits.queue:
                name = queue.replace("_", "-")
                out.append(Alarm(name, "warning", f"{n} changes in the {name.replace('-', ' ')} "
                                                  f"(threshold {limits.queue})", **mbx))
        error = _get(st, "error")
        if _get(st, "phase") == "error" or (error and _get(st, "protected", True)):
            out.append(Alarm("mailbox-error", "critical", " ".join(str(error or "in error").split())[:300], **mbx))
        bound = _get(st, "queue_alarm")  # the copy queue near or at its bound, the state disk full
        if bound:
            out.append(Alarm("queue-bound", "warning" if str(bound).startswith("warning") else "critical",
                             " ".join(str(bound).split())[:300], **mbx))
        rejected = _get(st, "rejected") or 0
        if rejected:
            out.append(Alarm("rejected-messages", "warning",
                             f"{rejected} message{'s' if rejected != 1 else ''} rejected or altered by the standby",
                             count=rejected, **mbx))
    return out


def site_changes(before: Mapping[tuple[str, str], str | None], statuses: Iterable[Any]) -> list[SiteChange]:
    """Mailboxes whose ``site_state`` differs from ``before`` (keyed by (server, address));
    a mailbox not in ``before`` is new, not a change."""
    out = []
    for st in statuses:
        key = (_get(st, "server"), _get(st, "address"))
        now = _get(st, "site_state")
        if key in before and before[key] != now and now is not None and before[key] is not None:
            out.append(SiteChange(key[0], key[1], before[key], now))
    return out
