"""The alerting conditions on ``/metrics``, for the Prometheus rules in ``deploy/prometheus/``.

::

    mailrepl_mailbox_lag_seconds{role,server,address}
    mailrepl_mailbox_queue{role,server,address,queue="copy"|"replay"}
    mailrepl_mailbox_in_error{role,server,address}                  1 while the mailbox is in error
    mailrepl_mailbox_rejected_messages{role,server,address}
    mailrepl_mailbox_site_state{role,server,address,state}          1 for the mailbox's current state
    mailrepl_alarms_active{role,kind,severity}                      alarms holding now (all kinds)
    mailrepl_alert_events_total{role,kind}                          alerts raised (site changes included)
    mailrepl_tls_certificate_expiry_timestamp_seconds{role,what,file}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mailrepl.shared.alerts.certs import certificate_expiry
from mailrepl.shared.alerts.monitor import AlertMonitor

__all__ = ["AlertCollector"]


class AlertCollector:
    def __init__(self, role: str, statuses: Callable[[], Sequence[Any]], monitor: AlertMonitor,
                 cert_files: Iterable[tuple[str, Path]] = ()) -> None:
        self.role, self.statuses, self.monitor, self.cert_files = role, statuses, monitor, tuple(cert_files)

    def collect(self):
        r = self.role
        mbx = ["role", "server", "address"]
        lag = GaugeMetricFamily("mailrepl_mailbox_lag_seconds", "Seconds the oldest unapplied change waits", labels=mbx)
        queue = GaugeMetricFamily("mailrepl_mailbox_queue", "Changes in the copy and replay queues",
                                  labels=mbx + ["queue"])
        error = GaugeMetricFamily("mailrepl_mailbox_in_error", "1 while the mailbox is in error", labels=mbx)
        rejected = GaugeMetricFamily("mailrepl_mailbox_rejected_messages", "Messages the standby rejected or altered",
                                     labels=mbx)
        site = GaugeMetricFamily("mailrepl_mailbox_site_state", "1 for the mailbox's current site state",
                                 labels=mbx + ["state"])
        for st in self.statuses():
            labels = [r, st.server, st.address]
            lag.add_metric(labels, float(st.lag_seconds or 0.0))
            if st.copy_queue is not None:
                queue.add_metric(labels + ["copy"], st.copy_queue)
            if st.replay_queue is not None:
                queue.add_metric(labels + ["replay"], st.replay_queue)
            error.add_metric(labels, 1.0 if (st.phase == "error" or (st.error and st.protected)) else 0.0)
            rejected.add_metric(labels, st.rejected)
            if st.site_state:
                site.add_metric(labels + [st.site_state], 1.0)
        yield from (lag, queue, error, rejected, site)
        active = GaugeMetricFamily("mailrepl_alarms_active", "Alarms holding now", labels=["role", "kind", "severity"])
        counts: dict[tuple[str, str], int] = {}
        for a in self.monitor.alarms():
            counts[(a.kind, a.severity)] = counts.get((a.kind, a.severity), 0) + 1
        for (kind, sev), n in sorted(counts.items()):
            active.add_metric([r, kind, sev], n)
        yield active
        events = CounterMetricFamily("mailrepl_alert_events", "Alerts raised, by kind", labels=["role", "kind"])
        for kind, n in sorted(self.monitor.events_total.items()):
            events.add_metric([r, kind], n)
        yield events
        certs = GaugeMetricFamily("mailrepl_tls_certificate_expiry_timestamp_seconds",
                                  "When a configured certificate expires (Unix time)", labels=["role", "what", "file"])
        for what, path in self.cert_files:
            end = certificate_expiry(path)
            if end is not None:
                certs.add_metric([r, what, str(path)], end.timestamp())
        yield certs
