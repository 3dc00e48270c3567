"""Automatic failover (opt-in): probe each primary server; after an outage longer than the
configured time, cut over that server's replicated mailboxes; never cut back by itself.

Anti-flapping: the outage must last ``outage_seconds`` without one good probe; one automatic
cutover per outage (a server must be seen up again before another); an automatic cutover holds
at least ``hold_seconds`` before a failback is accepted (``mailrepl.recovery.failback``). Every probe
result is kept in ``server_health`` and every automatic action in the mailboxes' transition
history (actor ``auto``) and the log.

The same loop switches failing-back mailboxes back by themselves when ``confirm = "auto"``.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Callable, Mapping

from sqlalchemy import select

from mailrepl.shared.adapters.base import Adapter
from mailrepl.shared.runtime.background import Background
from mailrepl.shared.errors import MailreplError
from mailrepl.shared.model import utcnow
from mailrepl.shared.site_state import SiteState
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Replica, ServerHealth

__all__ = ["FailoverMonitor", "should_fail_over"]

log = logging.getLogger("mailrepl.autofailover")


def should_fail_over(*, up: bool, down_since: datetime | None, failed_over_at: datetime | None, now: datetime,
                     outage_seconds: float) -> bool:
    """Pure decision: a server down for longer than ``outage_seconds``, not yet failed over in
    this outage."""
    if up or down_since is None:
        return False
    if failed_over_at is not None and failed_over_at >= down_since:
        return False
    return now - down_since >= timedelta(seconds=outage_seconds)


class FailoverMonitor:
    def __init__(self, store: Store, primaries: Mapping[str, Adapter], *,
                 cutover_server: Callable[[str], list[dict]], confirm_caught_up: Callable[[], None] | None,
                 auto: bool, outage_seconds: float, check_interval: float) -> None:
        self.store = store
        self.primaries = primaries
        self.cutover_server = cutover_server
        self.confirm_caught_up = confirm_caught_up
        self.auto = auto
        self.outage_seconds = outage_seconds
        self.check_interval = check_interval
        self._background = Background("failover-monitor", self._loop)
        self._stop = self._background.stopping

    def start(self) -> None:
        if not (self.auto and self.primaries) and self.confirm_caught_up is None:
            return
        self._background.start()

    def stop(self) -> None:
        self._background.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.check_interval if self.auto else 1.0):
            try:
                if self.auto:
                    self.check_once()
                if self.confirm_caught_up is not None:
                    self.confirm_caught_up()
            except Exception:  # noqa: BLE001 - next round tries again
                log.exception("failover monitor round failed")

    def check_once(self, now: datetime | None = None) -> list[str]:
        """Probe every primary; returns the servers cut over in this round."""
        acted = []
        for name, adapter in self.primaries.items():
            error = None
            try:
                adapter.check()
            except MailreplError as exc:
                error = str(exc) or exc.__class__.__name__
            at = now or utcnow()
            with self.store.tx() as s:
                h = s.get(ServerHealth, name) or ServerHealth(server=name, up=True)
                s.add(h)
                if error is None:
                    if not h.up:
                        log.info("primary server %s is up again", name)
                    h.up, h.down_since, h.last_error = True, None, None
                else:
                    if h.up:
                        log.warning("primary server %s failed its health check: %s", name, error)
                        h.down_since = at
                    h.up, h.last_error = False, error
                h.last_check = at
                decide = should_fail_over(up=h.up, down_since=_aware(h.down_since), failed_over_at=_aware(h.failed_over_at),
                                          now=at, outage_seconds=self.outage_seconds)
                if decide:
                    h.failed_over_at = at
            if decide:
                log.warning("primary server %s down for more than %gs: automatic cutover of its mailboxes",
                            name, self.outage_seconds)
                with self.store.read() as s:
                    waiting = s.scalar(select(Replica.id).where(Replica.server == name,
                                                                Replica.site_state == SiteState.REPLICATING.value).limit(1))
                if waiting is not None:
                    results = self.cutover_server(name)
                    log.warning("automatic cutover of %s: %d mailbox(es), %d error(s)", name, len(results),
                                sum(1 for r in results if r.get("status") != "ok"))
                acted.append(name)
        return acted

    def health(self) -> list[dict]:
        with self.store.read() as s:
            return [dict(server=h.server, up=h.up, down_since=_iso(h.down_since), last_check=_iso(h.last_check),
                         last_error=h.last_error, failed_over_at=_iso(h.failed_over_at))
                    for h in s.scalars(select(ServerHealth).order_by(ServerHealth.server))]


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=utcnow().tzinfo)


def _iso(dt: datetime | None) -> str | None:
    return _aware(dt).isoformat() if dt is not None else None
