"""What the recovery gateway's console and alerts read: every replica's status, and the site
transitions recorded since the last look (with who asked: an automatic failover is its own alert)."""
from __future__ import annotations

from typing import Callable

from sqlalchemy import func, select

from mailrepl.recovery.api import replica_status
from mailrepl.shared.alerts.rules import SiteChange
from mailrepl.shared.runtime.api_common import MailboxStatus
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Replica, SiteTransition

__all__ = ["replica_statuses", "transition_feed"]


def replica_statuses(store: Store) -> Callable[[], list[MailboxStatus]]:
    def load() -> list[MailboxStatus]:
        with store.read() as s:
            return [replica_status(s, rep) for rep in s.scalars(select(Replica).order_by(Replica.server, Replica.address))]

    return load


def transition_feed(store: Store) -> Callable[[], list[SiteChange]]:
    """Site transitions newer than the last call (the first call only finds where to start)."""
    last: list[int | None] = [None]

    def feed() -> list[SiteChange]:
        with store.read() as s:
            if last[0] is None:
                last[0] = s.scalar(select(func.max(SiteTransition.id))) or 0
                return []
            rows = list(s.execute(select(SiteTransition, Replica.server, Replica.address).join(Replica)
                                  .where(SiteTransition.id > last[0]).order_by(SiteTransition.id).limit(10_000)))
        if rows:
            last[0] = rows[-1][0].id
        return [SiteChange(server, address, t.before, t.after, actor=t.actor, detail=t.detail)
                for t, server, address in rows]

    return feed
