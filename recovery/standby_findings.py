"""Messages the standby refused or stored altered, per mailbox, on ``/metrics``:
``mailrepl_recovery_rejected_messages{server,address}`` and
``mailrepl_recovery_altered_messages{server,address}`` (read from the state store when scraped;
one grouped query each)."""
from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from mailrepl.shared.store import Store
from mailrepl.shared.store.models import AlteredMessage, RejectedMessage, Replica

__all__ = ["StandbyFindingsCollector"]


class StandbyFindingsCollector:
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self):
        families = []
        for model, name, text in (
            (RejectedMessage, "mailrepl_recovery_rejected_messages", "Messages the standby refused to store"),
            (AlteredMessage, "mailrepl_recovery_altered_messages",
             "Messages the standby stored with other bytes than were sent"),
        ):
            family = GaugeMetricFamily(name, text, labels=["server", "address"])
            with self.store.read() as s:
                rows = s.execute(select(Replica.server, Replica.address, func.count(model.id))
                                 .join(model, model.replica_id == Replica.id)
                                 .group_by(Replica.server, Replica.address)).all()
            for server, address, count in rows:
                family.add_metric([server, address], count)
            families.append(family)
        return families

    def describe(self):
        return []
