"""The one-query status listings the console and the alerts read are the per-mailbox statuses
the API answers, value for value (source: ``Registry._status``; recovery: ``replica_status``)."""
from __future__ import annotations

import json
import time
from datetime import timedelta

from sqlalchemy import select

from mailrepl.gateway.queue_status import mailbox_queue_fields
from mailrepl.gateway.registry import Registry
from mailrepl.recovery.alert_sources import replica_statuses
from mailrepl.recovery.api import replica_status
from mailrepl.shared.engines.queue_gate import QueueGate, QueueLimits
from mailrepl.shared.model import utcnow
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import InboxRow, Mailbox, OutboxRow, RejectedMessage, Replica


def _same(fast, slow, elapsed: float = 0.0):
    """Equal statuses; a lag may differ by the time it took to list them (``elapsed``) and a second."""
    a, b = [x.model_dump() for x in fast], [x.model_dump() for x in slow]
    for x, y in zip(a, b):
        assert abs(x.pop("lag_seconds") - y.pop("lag_seconds")) < 1.0 + elapsed
    assert a == b


def test_source_listing_matches_each_status(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite")
    store.migrate()
    with store.tx() as s:
        for i in range(60):
            s.add(Mailbox(server="a" if i % 2 else "b", address=f"u{i:03d}", protected=i % 3 != 0,
                          phase=("seeding", "replicating", "idle")[i % 3], active_site="dr" if i % 11 == 0 else "primary",
                          last_seq=i, acked_seq=i // 2, applied_seq=i // 3, error="boom" if i % 13 == 0 else None,
                          ship_error="gap" if i % 17 == 0 else None, site_state="active-at-dr" if i % 11 == 0 else "replicating",
                          rejected=json.dumps([{"seq": 1, "folder": "INBOX", "reason": "x"}] * (i % 4)) if i % 5 else None,
                          captured_bytes=i * 100, shipped_raw_bytes=i * 90, shipped_payload_bytes=i * 80,
                          shipped_wire_bytes=i * 30))
        s.flush()
        for m in s.scalars(select(Mailbox)):
            if m.applied_seq < m.last_seq and m.id % 2:
                s.add(OutboxRow(mailbox_id=m.id, seq=m.applied_seq + 1, change="{}", digest="0" * 64,
                                size=m.id * 1000, created_at=utcnow() - timedelta(seconds=m.id * 7)))
    reg = Registry(store, {"a": None, "b": None}, shipper_error=lambda: "peer unreachable")
    started = time.monotonic()
    fast = reg.list_status()
    with store.read() as s:
        slow = [reg._status(s, m) for m in s.scalars(select(Mailbox).order_by(Mailbox.server, Mailbox.address))]
    elapsed = time.monotonic() - started
    assert len(fast) == 60 and any(x.lag_seconds > 10 for x in fast) and any(x.error == "peer unreachable" for x in fast)
    _same(fast, slow, elapsed)

    # with back-pressure: the queue's bytes and its alarm, the same both ways
    gate = QueueGate(store, QueueLimits(max_changes=10_000, max_bytes=1 << 30, mailbox_max_changes=40,
                                        mailbox_max_bytes=40_000, min_free_bytes=0), cache_seconds=0)
    reg = Registry(store, {"a": None, "b": None}, shipper_error=lambda: "peer unreachable",
                   queue_fields=lambda usage, protected, site: mailbox_queue_fields(gate, usage, protected, site))
    started = time.monotonic()
    fast = reg.list_status()
    with store.read() as s:
        slow = [reg._status(s, m) for m in s.scalars(select(Mailbox).order_by(Mailbox.server, Mailbox.address))]
    elapsed = time.monotonic() - started
    alarms = [x.queue_alarm for x in fast if x.queue_alarm]
    assert any(a.startswith("warning") for a in alarms) and any(a.startswith("full") for a in alarms), alarms
    assert any(x.queue_bytes for x in fast)
    _same(fast, slow, elapsed)


def test_recovery_listing_matches_each_status(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/r.sqlite")
    store.migrate()
    with store.tx() as s:
        for i in range(40):
            rep = Replica(source_id="hq", server="primary", address=f"u{i:03d}", target="standby", received_seq=i,
                          applied_seq=i // 2, error="boom" if i % 7 == 0 else None,
                          site_state=("replicating", "active-at-dr", "failing-back")[i % 3])
            s.add(rep)
            s.flush()
            for k in range(i % 3):
                s.add(RejectedMessage(replica_id=rep.id, seq=k + 1, folder="INBOX", reason="too big"))
            if rep.applied_seq < rep.received_seq:
                s.add(InboxRow(replica_id=rep.id, seq=rep.applied_seq + 1, change="{}", digest="0" * 64,
                               captured_at=utcnow() - timedelta(seconds=i * 5)))
    fast = replica_statuses(store)()
    with store.read() as s:
        slow = [replica_status(s, rep) for rep in s.scalars(select(Replica).order_by(Replica.server, Replica.address))]
    assert len(fast) == 40 and any(x.rejected == 2 for x in fast)
    _same(fast, slow)
