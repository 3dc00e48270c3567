"""Back-pressure in the source gateway's status, ``/metrics`` and ``GET /api/v1/queue``.

Per mailbox (``GET /api/v1/mailboxes…``): ``queue_bytes`` and ``queue_alarm``. Gateway-wide:
``GET /api/v1/queue`` (viewer) and ``alarms`` in ``/healthz``. Metrics::

    mailrepl_source_queue_changes / _bytes                 gateway-wide copy queue (outbox held)
    mailrepl_source_queue_bound_changes / _bytes           its bound
    mailrepl_source_queue_alarm                            0 ok, 1 warning (threshold), 2 full (capture paused)
    mailrepl_source_mailbox_queue_bytes{server,address}    per mailbox
    mailrepl_source_mailbox_queue_alarm{server,address}    0 / 1 / 2, as above, against the per-mailbox bound
    mailrepl_source_disk_full                              1 while the state store's disk is full
    mailrepl_source_state_free_bytes                       free space of the state directory (SQLite)
    mailrepl_source_peer_disk_full                         1 while the recovery gateway refuses for lack of space
"""
from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Depends
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel

from mailrepl.shared.alerts.model import Alarm
from mailrepl.shared.engines.queue_gate import LEVELS, QueueGate, QueueUsage
from mailrepl.shared.errors import MailreplError
from mailrepl.shared.model import utcnow
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.authz import Authorizer

__all__ = ["mailbox_queue_fields", "QueueCollector", "alarms_router", "gateway_alarms", "AlarmsAnswer", "queue_alarm_producer"]


def mailbox_queue_fields(gate: QueueGate, usage: QueueUsage, protected: bool, site_state: str | None) -> dict:
    """``queue_bytes`` and ``queue_alarm`` of one mailbox's status, from its queue ``usage``
    (changes not yet applied at DR, bytes of their bodies)."""
    level = gate.mailbox_level(usage)
    total = gate.total()
    alarm = None
    if gate.disk_alarm:
        alarm = f"disk full: {gate.disk_alarm}"
    elif gate.gateway_level(total) == "full" and protected and site_state == "replicating":
        alarm = (f"full: the gateway-wide copy queue is at its bound ({total.changes} changes / {total.bytes} bytes, "
                 f"bound {gate.limits.max_changes} / {gate.limits.max_bytes}): capture paused")
    elif level == "full":
        alarm = (f"full: {usage.changes} changes / {usage.bytes} bytes queued, at the bound "
                 f"({gate.limits.mailbox_max_changes} / {gate.limits.mailbox_max_bytes}): capture paused")
    elif level == "warning":
        alarm = (f"warning: {usage.changes} changes / {usage.bytes} bytes queued, over "
                 f"{round(gate.limits.warn_ratio * 100)} % of the bound")
    return {"queue_bytes": usage.bytes, "queue_alarm": alarm}


def gateway_alarms(gate: QueueGate, peer_disk_full: Callable[[], str | None]) -> list[str]:
    try:
        alarms = gate.report().alarms()
    except MailreplError as exc:  # /healthz still answers
        alarms = [f"state store unreadable: {exc}"]
    if peer := peer_disk_full():
        alarms.append(f"recovery gateway disk full: {peer}")
    return alarms


class QueueAnswer(BaseModel):
    changes: int
    bytes: int
    max_changes: int
    max_bytes: int
    mailbox_max_changes: int
    mailbox_max_bytes: int
    warn_percent: int
    level: str  # ok, warning, full


class AlarmsAnswer(BaseModel):
    alarms: list[str]
    queue: QueueAnswer
    disk_full: str | None
    state_free_bytes: int | None
    min_free_bytes: int
    peer_disk_full: str | None


def alarms_router(gate: QueueGate, authz: Authorizer, peer_disk_full: Callable[[], str | None]) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["admin"], responses=ERROR_RESPONSES)

    @r.get("/queue", response_model=AlarmsAnswer, dependencies=[Depends(authz.require("viewer"))])
    def alarms() -> AlarmsAnswer:
        """Gateway-wide back-pressure: the copy queue against its bound, the disk, the peer's disk."""
        rep = gate.report(fresh=True)
        lim = rep.limits
        peer = peer_disk_full()
        return AlarmsAnswer(
            alarms=rep.alarms() + ([f"recovery gateway disk full: {peer}"] if peer else []),
            queue=QueueAnswer(changes=rep.usage.changes, bytes=rep.usage.bytes, max_changes=lim.max_changes,
                              max_bytes=lim.max_bytes, mailbox_max_changes=lim.mailbox_max_changes,
                              mailbox_max_bytes=lim.mailbox_max_bytes, warn_percent=round(lim.warn_ratio * 100),
                              level=rep.level),
            disk_full=rep.disk_full, state_free_bytes=rep.free_bytes, min_free_bytes=lim.min_free_bytes,
            peer_disk_full=peer,
        )

    return r


class QueueCollector:
    """The metrics above, read when ``/metrics`` is scraped."""

    def __init__(self, gate: QueueGate, mailboxes: Callable[[], list], peer_disk_full: Callable[[], str | None]) -> None:
        self.gate = gate
        self.mailboxes = mailboxes  # the registry's status list (queue_bytes, queue_alarm per mailbox)
        self.peer_disk_full = peer_disk_full

    def collect(self):
        rep = self.gate.report()
        lim = rep.limits
        for name, doc, value in (
            ("queue_changes", "Changes in the copy queue (captured, not yet applied at DR)", rep.usage.changes),
            ("queue_bytes", "Bytes of message bodies in the copy queue", rep.usage.bytes),
            ("queue_bound_changes", "Bound of the copy queue in changes", lim.max_changes),
            ("queue_bound_bytes", "Bound of the copy queue in bytes", lim.max_bytes),
            ("queue_alarm", "Copy queue alarm: 0 ok, 1 over the warning threshold, 2 at the bound (capture paused)",
             LEVELS.index(rep.level)),
            ("disk_full", "1 while the state store's disk is full (capture stopped)", int(rep.disk_full is not None)),
            ("peer_disk_full", "1 while the recovery gateway refuses batches for lack of space",
             int(self.peer_disk_full() is not None)),
        ):
            yield GaugeMetricFamily(f"mailrepl_source_{name}", doc, value=value)
        if rep.free_bytes is not None:
            yield GaugeMetricFamily("mailrepl_source_state_free_bytes", "Free space of the state directory",
                                    value=rep.free_bytes)
        per_bytes = GaugeMetricFamily("mailrepl_source_mailbox_queue_bytes", "Bytes of bodies queued per mailbox",
                                      labels=["server", "address"])
        per_alarm = GaugeMetricFamily("mailrepl_source_mailbox_queue_alarm",
                                      "Per-mailbox copy queue alarm: 0 ok, 1 warning, 2 full (capture paused)",
                                      labels=["server", "address"])
        for st in self.mailboxes():
            per_bytes.add_metric([st.server, st.address], st.queue_bytes or 0)
            alarm = st.queue_alarm or ""
            per_alarm.add_metric([st.server, st.address], 2 if alarm.startswith("full") else
                                 1 if alarm.startswith("warning") else 0)
        yield per_bytes
        yield per_alarm


def queue_alarm_producer(gate: QueueGate, peer_disk_full: Callable[[], str | None]) -> Callable[[], list[Alarm]]:
    """The gateway-wide back-pressure conditions as console/alert alarms: ``queue-bound`` (the
    copy queue over its warning threshold or at its bound), ``disk-full`` (the state store),
    ``peer-disk-full`` (the recovery gateway refusing batches)."""

    def produce() -> list[Alarm]:
        now = utcnow()
        rep = gate.report()
        out = []
        if rep.level != "ok":
            out.append(Alarm("queue-bound", "critical" if rep.level == "full" else "warning",
                             f"copy queue {rep.level}: {rep.usage.changes} changes / {rep.usage.bytes} bytes "
                             f"(bound {rep.limits.max_changes} / {rep.limits.max_bytes})"
                             + (": capture paused" if rep.level == "full" else ""), since=now))
        if rep.disk_full:
            out.append(Alarm("disk-full", "critical", f"state store: {rep.disk_full}"[:300], since=now))
        if peer := peer_disk_full():
            out.append(Alarm("peer-disk-full", "critical", peer[:300], since=now))
        return out

    return produce
