"""What the recovery gateway's console and alerts read: every replica's status (in one query,
the same values as ``recovery.api.replica_status``), and the site transitions recorded since the
last look (with who asked: an automatic failover is its own alert)."""
from __future__ import annotations

from typing import Callable

from sqlalchemy import case, func, select

from mailrepl.shared.alerts.rules import SiteChange
from mailrepl.shared.model import utcnow
from mailrepl.shared.runtime.api_common import MailboxStatus
from mailrepl.shared.site_state import active_site
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import AlteredMessage, InboxRow, RejectedMessage, Replica, SiteTransition

__all__ = ["replica_statuses", "transition_feed"]


def replica_statuses(store: Store, extras: Callable[[list[tuple[int, str, str]]], dict[int, dict]] | None = None
                     ) -> Callable[[], list[MailboxStatus]]:
    """Every replica's status in one query (10,000 mailboxes: not 20,000 more queries); ``extras``:
    more fields of every replica listed (history, lag, guard), asked once for all of them with
    (id, server, address) of each, answering the fields by replica id."""
    r = Replica
    oldest = (select(InboxRow.captured_at).where(InboxRow.replica_id == r.id, InboxRow.seq == r.applied_seq + 1)
              .correlate(r).scalar_subquery())
    rejected = (select(func.count(RejectedMessage.id)).where(RejectedMessage.replica_id == r.id)
                .correlate(r).scalar_subquery())
    altered = (select(func.count(AlteredMessage.id)).where(AlteredMessage.replica_id == r.id)
               .correlate(r).scalar_subquery())
    query = (select(r.id, r.server, r.address, r.received_seq, r.applied_seq, r.error, r.site_state,
                    case((r.applied_seq < r.received_seq, oldest), else_=None), rejected, altered)
             .order_by(r.server, r.address))

    def load() -> list[MailboxStatus]:
        with store.read() as s:
            rows = s.execute(query).all()
        now = utcnow()
        more = extras([(row[0], row[1], row[2]) for row in rows]) if extras is not None else {}
        out = []
        for rid, server, address, received, applied, error, site_state, since, n_rejected, n_altered in rows:
            # as replica_status: a captured_at without a time zone counts as no lag
            lag = max(0.0, (now - since).total_seconds()) if since is not None and since.tzinfo else 0.0
            out.append(MailboxStatus.model_construct(  # our own typed columns: not validated again
                address=address, server=server, protected=True, phase="error" if error else "replicating",
                active_site=active_site(site_state), copy_queue=None, replay_queue=received - applied,
                lag_seconds=round(lag, 3), last_captured_seq=received, last_applied_seq=applied, error=error,
                rejected=n_rejected or 0, altered=n_altered or 0, site_state=site_state,
                **more.get(rid, {})))
        return out

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
