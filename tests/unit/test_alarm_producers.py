"""The back-pressure and verify conditions reach the console's alarm list and the alerts: the
per-mailbox queue alarm of a status, the gateway-wide copy queue bound, the state store's and the
recovery gateway's full disks, and a last verify that did not find the copies equal."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from mailrepl.gateway.queue_status import queue_alarm_producer
from mailrepl.gateway.verify_api import verify_alarm_producer
from mailrepl.recovery.disk_guard import DiskGuard, disk_alarm_producer
from mailrepl.shared.alerts.model import KNOWN_KINDS
from mailrepl.shared.alerts.rules import Thresholds, status_alarms
from mailrepl.shared.engines.queue_gate import QueueGate, QueueLimits
from mailrepl.shared.errors import DiskFull
from mailrepl.shared.runtime.api_common import MailboxStatus
from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import Mailbox, VerifyResult

MB = 1 << 20


def _store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    return store


def _status(address: str, queue_alarm: str | None) -> MailboxStatus:
    return MailboxStatus(address=address, server="primary", protected=True, phase="replicating",
                         active_site="primary", copy_queue=0, replay_queue=0, lag_seconds=0.0,
                         last_captured_seq=1, last_applied_seq=1, error=None, rejected=0,
                         site_state="replicating", queue_alarm=queue_alarm)


def test_a_mailbox_queue_alarm_is_a_queue_bound_alarm_of_its_severity():
    now = datetime.now(timezone.utc)
    alarms = status_alarms([_status("alice", "warning: 90 changes / 0 bytes queued, over 80 % of the bound"),
                            _status("bob", "full: 100 changes / 0 bytes queued, at the bound: capture paused"),
                            _status("carol", None)], Thresholds(lag_seconds=300, queue=1000), now)
    got = {(a.kind, a.address, a.severity) for a in alarms}
    assert got == {("queue-bound", "alice", "warning"), ("queue-bound", "bob", "critical")}
    assert {"queue-bound", "disk-full", "peer-disk-full", "verify-difference"} <= set(KNOWN_KINDS)


def test_the_gateway_wide_bound_and_full_disks_are_alarms(tmp_path):
    store = _store(tmp_path)
    with store.tx() as s:
        s.add(Mailbox(server="primary", address="alice", protected=True, site_state="replicating",
                      last_seq=10, applied_seq=0))
    limits = QueueLimits(max_changes=10, max_bytes=10 * MB, mailbox_max_changes=10, mailbox_max_bytes=10 * MB,
                         min_free_bytes=0)
    gate = QueueGate(store, limits, cache_seconds=0)
    peer: list[str | None] = [None]
    produce = queue_alarm_producer(gate, lambda: peer[0])
    [bound] = produce()
    assert (bound.kind, bound.severity, bound.address) == ("queue-bound", "critical", None)
    assert "10 changes" in bound.message and "capture paused" in bound.message

    with store.tx() as s:  # applied down to 8 of a bound of 10: over the 80 % threshold only
        s.query(Mailbox).update({Mailbox.applied_seq: 2})
    gate.disk_full(DiskFull("database or disk is full"))
    peer[0] = "disk full at the recovery gateway: no space left on device"
    got = {a.kind: a for a in produce()}
    assert set(got) == {"queue-bound", "disk-full", "peer-disk-full"}
    assert got["queue-bound"].severity == "warning"
    assert "database or disk is full" in got["disk-full"].message
    assert got["peer-disk-full"].message.startswith("disk full at the recovery gateway")

    with store.tx() as s:
        s.query(Mailbox).update({Mailbox.applied_seq: 10})
    gate.disk_ok()
    peer[0] = None
    assert produce() == []


def test_the_recovery_gateways_full_disk_is_an_alarm_until_a_batch_is_stored():
    guard = DiskGuard({}, 0)
    produce = disk_alarm_producer(guard)
    assert produce() == []
    guard.refused_for(DiskFull("[Errno 28] No space left on device"))
    [alarm] = produce()
    assert (alarm.kind, alarm.severity) == ("disk-full", "critical")
    assert "No space left on device" in alarm.message
    guard.stored()
    assert produce() == []


def test_a_verify_that_found_differences_is_an_alarm_of_its_mailbox(tmp_path):
    store = _store(tmp_path)
    with store.tx() as s:
        a = Mailbox(server="primary", address="alice", protected=True)
        b = Mailbox(server="primary", address="bob", protected=True)
        s.add_all([a, b])
        s.flush()
        s.add(VerifyResult(mailbox_id=a.id, job="j1", verdict="different",
                           kinds=json.dumps({"missing": 2, "flags": 1}), report="{}"))
        s.add(VerifyResult(mailbox_id=b.id, job="j1", verdict="equal", kinds="{}", report="{}"))
    [alarm] = verify_alarm_producer(store)()
    assert (alarm.kind, alarm.address, alarm.severity, alarm.count) == ("verify-difference", "alice", "critical", 3)
    assert "missing 2" in alarm.message and "flags 1" in alarm.message
    assert alarm.since.tzinfo is not None
