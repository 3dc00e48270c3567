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


def test_recovery_listing_extras_for_all_at_once_equal_each_replicas(tmp_path):
    """History, the mass-delete guard and lagged copies: the listing's few queries for every
    replica answer what the per-replica lookups answer (those a mailbox's detail uses)."""
    from types import MappingProxyType

    from mailrepl.recovery.delete_guard import DeleteGuard, GuardSettings
    from mailrepl.recovery.history import HistoryKeeper
    from mailrepl.recovery.history_settings import HistorySettings
    from mailrepl.recovery.lag_settings import LagSettings
    from mailrepl.recovery.replay_gate import ReplayGate
    from mailrepl.recovery.status_extras import StatusExtras
    from mailrepl.shared.store.models import DeleteGuardState

    from mailrepl.shared.model import Change, Kind

    store = open_store(f"sqlite:///{tmp_path}/r.sqlite")
    store.migrate()
    now = utcnow()
    expunge = json.dumps(Change(kind=Kind.MSG_EXPUNGE, folder="INBOX", mid="m1").to_dict())
    with store.tx() as s:
        for i in range(30):
            rep = Replica(source_id="hq", server="a" if i % 2 else "b", address=f"u{i:03d}@x", target="standby",
                          received_seq=10, applied_seq=4)
            s.add(rep)
            s.flush()
            for seq in range(5, 11):  # waiting, some old enough to play, some not
                s.add(InboxRow(replica_id=rep.id, seq=seq, change=expunge, digest="0" * 64,
                               state="held" if i % 5 == 0 and seq > 8 else "received",
                               captured_at=now - timedelta(seconds=(11 - seq) * 40 + i)))
            if i % 7 == 0:
                s.add(DeleteGuardState(replica_id=rep.id, since=now, deletions=50, mailbox_messages=60))
    history = HistoryKeeper(store, HistorySettings(retention_days=0, servers=MappingProxyType({"a": 2.0}),
                                                   mailboxes=MappingProxyType({"u004@x": 1.0})))
    guard = DeleteGuard(store, GuardSettings(min_messages=10, share=0.5, max_messages=1000, window_seconds=300))
    lag = LagSettings(replay_delay=0.0, servers=MappingProxyType({"b": 150.0}), mailboxes=MappingProxyType({"u003@x": 90.0}))
    extras = StatusExtras(history, guard, ReplayGate(store, lag), lagged=lag.enabled)
    with store.read() as s:
        replicas = [(r.id, r.server, r.address) for r in s.scalars(select(Replica).order_by(Replica.id))]
    bulk = extras.of_all(replicas)
    each = {rid: extras.of(rid) for rid, _, _ in replicas}
    assert bulk == each
    values = list(bulk.values())
    # every kind of value is there: history kept or not, changes held or not, lagged or not
    assert {v["history_bytes"] is None for v in values} == {True, False}
    assert {v["held_deletions"] for v in values} == {None, 0, 2}  # tripped without held changes: 0
    assert {v["replay_delay_seconds"] for v in values} == {None, 90.0, 150.0}
    assert len({v["delayed_changes"] for v in values if v["delayed_changes"] is not None}) > 1
    # and the same through the listing
    listed = replica_statuses(store, extras.of_all)()
    assert {(x.address, x.history_bytes, x.held_deletions, x.replay_delay_seconds, x.delayed_changes) for x in listed} == {
        (addr, *each[rid].values()) for rid, _, addr in replicas}
    # the API's listing (serialised once, not validated again) is the same JSON as the statuses
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mailrepl.recovery.api import admin_router
    from mailrepl.shared.runtime.api_common import MailboxStatus
    from mailrepl.shared.runtime.authz import Authorizer
    from mailrepl.shared.runtime.tokens import admin_resolver

    app = FastAPI()
    app.include_router(admin_router(store, Authorizer(admin_resolver("t" * 32, None)), extras=extras.of,
                                    extras_all=extras.of_all))
    answer = TestClient(app, headers={"Authorization": "Bearer " + "t" * 32}).get("/api/v1/mailboxes")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    with store.read() as s:
        slow = [replica_status(s, rep, extras.of(rep.id))
                for rep in s.scalars(select(Replica).order_by(Replica.server, Replica.address))]
    _same([MailboxStatus.model_validate(m) for m in answer.json()["mailboxes"]], slow)
    assert set(answer.json()["mailboxes"][0]) == set(MailboxStatus.model_fields)
