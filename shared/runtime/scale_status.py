"""What the connection pools and the link's rate cap show: in ``/healthz`` and on ``/metrics``.

``/healthz``: ``connections`` (per server: limit, allowed now, open, in use, opened, refused,
waits, evicted) and, on the source gateway, ``link`` (the cap in force in bit/s, the live share, bytes
sent through it as seed and as live changes, seconds senders waited, what the seed leaves for
live changes now in bit/s). Metrics:
``mailrepl_<role>_server_connections{server,state="open"|"in_use"|"limit"|"allowed"}``,
``mailrepl_<role>_server_connections_refused_total{server}``,
``mailrepl_<role>_server_connections_evicted_total{server}`` (idle connections closed to open one
for another mailbox: a login each; growing steadily, the bound is too small), and on the source
``mailrepl_source_link_rate_cap_bits`` (0: no cap), ``mailrepl_source_link_bytes_total{traffic}``,
``mailrepl_source_link_wait_seconds_total``, ``mailrepl_source_push_wakeups_total{result}``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict

from mailrepl.shared.protocol.link_rate import LinkRateCap
from mailrepl.shared.runtime.connection_pool import PooledAdapter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["ScaleCollector", "connection_status", "link_status"]


def connection_status(adapters: Iterable[object]) -> dict[str, dict]:
    """Per pooled server: its pool's counters."""
    return {a.name: {k: v for k, v in asdict(a.stats()).items() if k != "server"}
            for a in adapters if isinstance(a, PooledAdapter)}


def link_status(cap: LinkRateCap | None) -> dict | None:
    if cap is None:
        return None
    st = cap.stats()
    return {"rate_cap_bits": round(st.rate * 8), "live_share": st.live_share, "bulk_bytes": st.bulk_bytes,
            "live_bytes": st.live_bytes, "waited_seconds": st.waited_seconds,
            "live_reserved_bits": round(st.live_reserved * 8)}


class ScaleCollector:
    def __init__(self, role: str, adapters: Iterable[object], cap: LinkRateCap | None = None,
                 pushes: object | None = None) -> None:
        self.role = role
        self.adapters = list(adapters)
        self.cap = cap
        self.pushes = pushes  # .woken, .ignored: server-side push wake-ups received

    def collect(self):
        conns = GaugeMetricFamily(f"mailrepl_{self.role}_server_connections",
                                  "Connections to a mail server: open, in use, the configured limit, the limit now",
                                  labels=["server", "state"])
        refused = CounterMetricFamily(f"mailrepl_{self.role}_server_connections_refused",
                                      "New connections a mail server refused or dropped while others were open",
                                      labels=["server"])
        evicted = CounterMetricFamily(f"mailrepl_{self.role}_server_connections_evicted",
                                      "Idle connections of a mailbox closed to open one for another (a login each)",
                                      labels=["server"])
        for a in self.adapters:
            if not isinstance(a, PooledAdapter):
                continue
            st = a.stats()
            for state in ("open", "in_use", "limit", "allowed"):
                conns.add_metric([st.server, state], getattr(st, state))
            refused.add_metric([st.server], st.refused)
            evicted.add_metric([st.server], st.evicted)
        yield conns
        yield refused
        yield evicted
        if self.pushes is not None:
            pushed = CounterMetricFamily(f"mailrepl_{self.role}_push_wakeups",
                                         "Server-side push wake-ups received, by whether a protected mailbox was woken",
                                         labels=["result"])
            pushed.add_metric(["woken"], self.pushes.woken)
            pushed.add_metric(["ignored"], self.pushes.ignored)
            yield pushed
        if self.cap is None:
            return
        st = self.cap.stats()
        rate = GaugeMetricFamily(f"mailrepl_{self.role}_link_rate_cap_bits", "Rate cap of the gateway link now (0: none)")
        rate.add_metric([], st.rate * 8)
        yield rate
        sent = CounterMetricFamily(f"mailrepl_{self.role}_link_bytes", "Bytes sent through the link's rate cap",
                                   labels=["traffic"])
        sent.add_metric(["seed"], st.bulk_bytes)
        sent.add_metric(["live"], st.live_bytes)
        yield sent
        waited = CounterMetricFamily(f"mailrepl_{self.role}_link_wait_seconds", "Seconds batches waited for the cap")
        waited.add_metric([], st.waited_seconds)
        yield waited
