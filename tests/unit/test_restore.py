"""Restore jobs: the mailbox at a time written into a mailbox or an export, idempotent on re-run.

In-memory pipeline (``test_pipeline_memory``) for the history; the writers write into an
in-memory server or real files. End to end on Dovecot: tests/e2e/test_history_restore.py.
"""
from __future__ import annotations

import hashlib
import zipfile
from collections import Counter
from datetime import datetime, timedelta

import pytest
from mailrepl.recovery.history import HistoryKeeper
from mailrepl.recovery.history_settings import HistorySettings
from mailrepl.recovery.restore import RestoreRefused, RestoreRequest, RestoreService
from mailrepl.recovery.restore_plan import HistoryGap, restored_prefix
from mailrepl.recovery.restore_writers import read_export
from mailrepl.shared.model import utcnow
from mailrepl.shared.store.models import Replica, RestoreJob
from sqlalchemy import select

from tests.unit.test_history import primary_state
from tests.unit.test_pipeline_memory import Pipeline, _msg


def tricky(i: int) -> bytes:
    """Bytes an mbox must carry unchanged: From lines, quoted ones, no final newline, bare LF."""
    return (f"Subject: t{i}\r\nFrom: a{i}@example.org\r\n\r\nFrom the start\r\n>From quoted\r\n"
            f"\nFrom bare\n>>From twice\r\nend {i}").encode() + (b"\r\n" if i % 2 else b"")


@pytest.fixture
def restored(tmp_path):
    p = Pipeline(tmp_path)
    keeper = HistoryKeeper(p.dst, HistorySettings(retention_days=1, snapshot_every_changes=3))
    for i in range(6):
        p.primary.deliver("alice", _msg(i) if i % 3 else tricky(i), flags={"\\Seen"} if i % 2 else set())
    p.primary.deliver("alice", _msg(7), folder="Work")
    p.sync()
    keeper.maintain()
    at = utcnow()
    before = primary_state(p)
    p.primary.expunge("alice", "INBOX", [1, 2, 3, 4])
    p.primary.move("alice", "Work", 1, "INBOX")
    p.sync()
    keeper.maintain()
    with p.dst.read() as s:
        rid = s.scalar(select(Replica.id))
    writes = []

    def open_session(where, server, address):
        writes.append((where, server, address))
        return p.primary.open(address)

    service = RestoreService(p.dst, keeper, p.bodies, open_session, tmp_path / "exports",
                             can_write_primary=lambda server: server == "primary")
    return p, service, rid, at, before, writes


def run(service: RestoreService, rid: int, req: RestoreRequest) -> dict:
    job = service.submit(rid, req, "tester")
    service.wait(job, 30)
    st = service.status(job)
    assert st["state"] == "done", st
    assert st["progress"]["messages_done"] == st["progress"]["messages_total"]
    return st


def test_restore_into_the_mailbox_on_the_primary_under_its_time_and_again_changes_nothing(restored):
    p, service, rid, at, before, writes = restored
    st = run(service, rid, RestoreRequest(at=at))
    prefix = restored_prefix(at)
    assert st["result"]["where"] == "primary" and st["result"]["prefix"] == prefix and writes[0][0] == "primary"
    now = primary_state(p)
    assert {f[len(prefix) + 1:]: c for f, c in now.items() if f.startswith(prefix + "/")} == before
    # the job run again (as after a crash) writes nothing twice
    with p.dst.tx() as s:
        s.get(RestoreJob, st["job"]).state = "running"
    assert service.run(st["job"])["already_there"] == sum(sum(c.values()) for c in before.values())
    assert primary_state(p) == now


def test_restore_one_folder_with_filters_into_another_mailbox(restored):
    p, service, rid, at, _before, _ = restored
    st = run(service, rid, RestoreRequest(at=at, to_address="bob", folder="INBOX", subject="t3"))
    assert st["result"]["messages"] == 1 and st["result"]["filtered_out"] == 5
    got = p.primary.box("bob")["INBOX"].msgs.values()
    assert [m.body for m in got if m.body == tricky(3)] == [tricky(3)]


@pytest.mark.parametrize("fmt", ["mbox", "zip"])
def test_export_and_read_back_byte_exact(restored, fmt):
    _p, service, rid, at, before, _ = restored
    st = run(service, rid, RestoreRequest(at=at, export=fmt))
    path = service.export_file(st["job"])
    assert path.exists() and not list(path.parent.glob(".*.part"))
    if fmt == "zip":
        assert "manifest.json" in zipfile.ZipFile(path).namelist()
    back: dict[str, Counter] = {}
    for m in read_export(path):
        assert m.folder in before
        when = int(datetime.fromisoformat(m.internaldate).timestamp())
        back.setdefault(m.folder, Counter())[(hashlib.sha256(m.body).hexdigest(), frozenset(m.flags), when)] += 1
    assert back == before


def test_refused_when_history_or_the_target_is_out_of_reach(restored, tmp_path):
    p, service, rid, at, _before, _ = restored
    cannot = RestoreService(p.dst, service.keeper, p.bodies, None, tmp_path, can_write_primary=lambda s: False)
    with pytest.raises(RestoreRefused, match="primaries"):
        cannot.submit(rid, RestoreRequest(at=at))
    service.keeper.maintain(now=utcnow() + timedelta(days=3))
    with pytest.raises(HistoryGap):
        service.submit(rid, RestoreRequest(at=at, export="zip"))
