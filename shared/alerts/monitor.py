"""The alert loop: every ``interval`` seconds, evaluate what holds now, send what changed.

Each round: the mailbox statuses (one snapshot) give the status alarms (``rules.py``) and, by
comparison with the previous snapshot, the site-state changes; the producers (certificates,
and whatever a later feature adds: mass-delete holds, verify differences) give theirs; the
feeds give one-off events (the recovery gateway's site transitions with who asked). An alarm is
sent once when it starts (``firing``), again when its count grows, and once when it ends
(``resolved``); an event once. The same round records each mailbox's lag for the console's
chart (the last hour, a point where it changed, at most ``HISTORY_POINTS``).
"""
from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence

from mailrepl.shared.alerts.mail import user_notice
from mailrepl.shared.alerts.model import KNOWN_KINDS, Alarm, Alert, Producer, unique
from mailrepl.shared.alerts.rules import SiteChange, Thresholds, site_changes, status_alarms
from mailrepl.shared.model import utcnow
from mailrepl.shared.runtime.background import Background

__all__ = ["AlertMonitor", "Sender", "HISTORY_SECONDS"]

log = logging.getLogger("mailrepl.alerts")

HISTORY_SECONDS = 3600.0
HISTORY_POINTS = 240

Sender = Any  # has send(alert); a mail sender also notify_user(address, subject, text)


class AlertMonitor:
    def __init__(self, *, gateway: str, role: str, statuses: Callable[[], Sequence[Any]], thresholds: Thresholds,
                 producers: Iterable[Producer] = (), feeds: Iterable[Callable[[], Iterable[SiteChange]]] = (),
                 senders: Iterable[Sender] = (), notify_users: Sender | None = None,
                 site_changes_from_status: bool = True, interval: float = 15.0) -> None:
        self.gateway, self.role = gateway, role
        self.statuses, self.thresholds = statuses, thresholds
        self.producers, self.feeds = list(producers), list(feeds)
        self.senders, self.notify_users = list(senders), notify_users
        self.site_changes_from_status = site_changes_from_status
        self.interval = interval
        self.active: dict[tuple, Alarm] = {}
        self.events_total: dict[str, int] = dict.fromkeys(KNOWN_KINDS, 0)
        self._sites: dict[tuple[str, str], str | None] | None = None
        self._history: dict[tuple[str, str], list[tuple[float, float]]] = {}
        self._lock = threading.Lock()
        self.loop = Background("alerts", self._run)

    # ------------------------------------------------------------------ loop

    def start(self) -> None:
        for s in self.senders:
            getattr(s, "start", lambda: None)()
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop(timeout=5)
        for s in self.senders:
            getattr(s, "stop", lambda: None)()

    def _run(self) -> None:
        while True:
            try:
                self.evaluate()
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                log.exception("alert evaluation failed")
            if self.loop.stopping.wait(self.interval):
                return

    # ------------------------------------------------------------------ one round

    def evaluate(self) -> list[Alert]:
        """One round; answers the alerts sent."""
        now = utcnow()
        statuses = list(self.statuses())
        alarms = status_alarms(statuses, self.thresholds, now)
        for produce in self.producers:
            try:
                alarms.extend(produce())
            except Exception:  # noqa: BLE001 - one producer failing must not silence the others
                log.exception("alarm producer failed")
        changes: list[SiteChange] = []
        sites = {(_get(st, "server"), _get(st, "address")): _get(st, "site_state") for st in statuses}
        if self.site_changes_from_status and self._sites is not None:
            changes += site_changes(self._sites, statuses)
        self._sites = sites
        for feed in self.feeds:
            try:
                changes.extend(feed())
            except Exception:  # noqa: BLE001
                log.exception("event feed failed")
        sent: list[Alert] = []
        with self._lock:
            current = {a.key: a for a in unique(alarms)}
            for key, alarm in current.items():
                before = self.active.get(key)
                if before is None:
                    sent.append(self._alert("firing", alarm))
                elif alarm.count is not None and before.count is not None and alarm.count > before.count:
                    sent.append(self._alert("firing", _since(alarm, before.since)))
                    current[key] = _since(alarm, before.since)
                else:
                    current[key] = _since(alarm, before.since)  # the first time it was seen
            for key, alarm in self.active.items():
                if key not in current:
                    sent.append(self._alert("resolved", alarm))
            self.active = current
            self._record_lags(statuses, now)
        for ch in changes:
            sent.append(self._alert("event", _change_alarm(ch, now)))
            self._notify_user(ch)
        for alert in sent:
            if alert.state != "resolved":
                self.events_total[alert.alarm.kind] = self.events_total.get(alert.alarm.kind, 0) + 1
            for s in self.senders:
                try:
                    s.send(alert)
                except Exception:  # noqa: BLE001
                    log.exception("alert sender failed")
        return sent

    def _alert(self, state: str, alarm: Alarm) -> Alert:
        log.log(logging.INFO if state == "resolved" else logging.WARNING, "alert %s %s %s: %s", state, alarm.kind,
                alarm.address or "-", alarm.message)
        return Alert(state=state, alarm=alarm, gateway=self.gateway, role=self.role, id=uuid.uuid4().hex)

    def _notify_user(self, ch: SiteChange) -> None:
        if self.notify_users is None or "@" not in ch.address:
            return
        moved = ch.after == "active-at-dr" or (ch.after == "replicating" and ch.before in ("switching-back", "failing-back"))
        notice = user_notice(ch.address, ch.after) if moved else None
        if notice is not None:
            self.notify_users.notify_user(ch.address, *notice)

    # ------------------------------------------------------------------ what the console reads

    def alarms(self) -> list[Alarm]:
        with self._lock:
            order = {"critical": 0, "warning": 1, "info": 2}
            return sorted(self.active.values(), key=lambda a: (order[a.severity], a.since, a.kind, a.address or ""))

    def lag_history(self, server: str, address: str) -> list[tuple[float, float]]:
        """(Unix time, lag seconds) where the lag changed in the last hour; the first point may be
        older (the value the hour started with), the last value holds until now."""
        with self._lock:
            return list(self._history.get((server, address), ()))

    def _record_lags(self, statuses: Sequence[Any], now: datetime) -> None:
        """Keep each mailbox's lag where it changed (a step series): an idle mailbox costs one point,
        10,000 mailboxes a few MB. Points older than the hour go, but the last of them (the value
        the hour starts with) stays."""
        t = now.timestamp()
        start = t - HISTORY_SECONDS
        seen = set()
        for st in statuses:
            key = (_get(st, "server"), _get(st, "address"))
            seen.add(key)
            lag = round(float(_get(st, "lag_seconds") or 0.0), 1)
            points = self._history.get(key)
            if points is None:
                self._history[key] = [(t, lag)]
                continue
            if points[-1][1] != lag:
                points.append((t, lag))
                if len(points) > HISTORY_POINTS:
                    del points[1:len(points) - HISTORY_POINTS + 1]
            while len(points) > 1 and points[1][0] <= start:
                del points[0]
        for key in [k for k in self._history if k not in seen]:
            del self._history[key]


def _get(st: Any, name: str) -> Any:
    return st.get(name) if isinstance(st, dict) else getattr(st, name, None)


def _since(alarm: Alarm, since: datetime) -> Alarm:
    from dataclasses import replace

    return replace(alarm, since=since)


def _change_alarm(ch: SiteChange, now: datetime) -> Alarm:
    kind = "automatic-failover" if ch.actor == "auto" else "site-state"
    who = f" (by {ch.actor})" if ch.actor else ""
    why = f": {ch.detail}" if ch.detail else ""
    return Alarm(kind, "critical" if kind == "automatic-failover" else "warning",
                 f"{ch.before} -> {ch.after}{who}{why}", now, address=ch.address, server=ch.server,
                 detail=f"{ch.before}->{ch.after}")
