"""Back-pressure and full disks on real Dovecot servers, both gateways as processes.

- The recovery gateway is down while mail arrives: the source's copy queue grows to its bound,
  the alarm shows in status and metrics before the bound, capture pauses at it while mail keeps
  arriving on the primary, the gateway's memory stays flat; the recovery gateway comes back:
  everything replicates, the standby equals the primary, the alarm clears.
- The recovery gateway's state and blob store on a small tmpfs that fills: batches are refused
  with 507 + Retry-After, nothing is acknowledged that is not stored, no partial blob is left;
  the tmpfs grows: ingest resumes, replay catches up, the standby equals the primary.
- The source gateway's state on a small tmpfs that fills: capture stops cleanly with the alarm;
  the tmpfs grows: capture resumes, the standby equals the primary.
"""
from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import httpx
import pytest

from mailrepl.shared.content.mime_split import blob_key
from tests.support.gateways import ADMIN_TOKEN, GatewayPair, GatewayProcess
from tests.support.mailcompare import assert_same_mailbox
from tests.support.tmpfs import small_disk

pytestmark = [pytest.mark.dovecot]

MB = 1 << 20


def msg(i: int, size: int = 2000) -> bytes:
    return (f"Subject: m{i}\r\nMessage-ID: <bp{i}@x>\r\n\r\n".encode() + b"x" * size + b"\r\n")


def with_attachment(i: int, size: int) -> bytes:
    b64 = base64.b64encode(os.urandom(size)).decode()
    body = "\r\n".join(b64[j:j + 76] for j in range(0, len(b64), 76))
    return (f"Subject: big {i}\r\nMessage-ID: <big{i}@x>\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nsee attached\r\n'
            "--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            f"{body}\r\n--b--\r\n").encode()


def eventually(pred, timeout: float = 30.0, what: str = "", logs: tuple[GatewayProcess, ...] = ()):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    tail = "".join(f"\n--- {gw.role} log ---\n{gw.log.read_text()[-3000:]}" for gw in logs)
    raise AssertionError(f"timed out: {what} (last: {last!r}){tail}")


def metrics(gw: GatewayProcess) -> dict[str, float]:
    r = httpx.get(gw.url + "/metrics", timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    r.raise_for_status()
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def console_alarm(gw: GatewayProcess, kind: str) -> dict | None:
    """The alarm of ``kind`` in the gateway's alarm list (the console's and the alerts'), if any."""
    with gw.api() as c:
        r = c.get("/api/v1/alarms")
        r.raise_for_status()
        return next((a for a in r.json() if a["kind"] == kind), None)


def alarms(gw: GatewayProcess) -> dict:
    with gw.api() as c:
        r = c.get("/api/v1/queue" if gw.role == "source" else "/api/v1/disk")
        r.raise_for_status()
        return r.json()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_queue_grows_to_its_bound_while_the_recovery_gateway_is_down(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    bound = 120
    pair = GatewayPair(tmp_path, primary, standby, users=["alice"], fetch_chunk=10,
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite",
                       source_gateway_extra=f"queue_max_changes = {bound}\nqueue_warn_percent = 50\n"
                                            "min_free_bytes = 0\n")
    label = 'mailrepl_source_mailbox_queue_alarm{address="alice",server="primary"}'
    pair.source.start()  # the recovery gateway is down (its address refuses connections)
    try:
        pair.protect("alice")
        rss = [rss_kib(pair.source.proc.pid)]
        # under the threshold: no alarm
        primary.deliver_many("alice", (msg(i) for i in range(40)))
        eventually(lambda: pair.status()["alice"]["last_captured_seq"] >= 41, what="40 captured")
        st = pair.status()["alice"]
        assert st["queue_alarm"] is None and metrics(pair.source)[label] == 0, st
        # over 50 % of the bound: the alarm shows before the bound, capture goes on
        primary.deliver_many("alice", (msg(i) for i in range(40, 80)))
        st = eventually(lambda: s if (s := pair.status()["alice"])["queue_alarm"] else None, what="warning alarm")
        assert st["queue_alarm"].startswith("warning"), st
        assert st["last_captured_seq"] < bound
        assert metrics(pair.source)[label] == 1
        rss.append(rss_kib(pair.source.proc.pid))
        # mail keeps arriving: capture stops at the bound (one chunk of overshoot at most)
        primary.deliver_many("alice", (msg(i, 20_000) for i in range(80, 400)))
        st = eventually(lambda: s if (s := pair.status()["alice"])["queue_alarm"]
                        and s["queue_alarm"].startswith("full") else None, what="queue full")
        assert "capture paused" in st["queue_alarm"]
        time.sleep(3)  # several poll intervals: nothing more is taken
        st = pair.status()["alice"]
        assert bound <= st["last_captured_seq"] <= bound + 10, st
        m = metrics(pair.source)
        assert m[label] == 2 and m["mailrepl_source_queue_alarm"] == 2
        assert m["mailrepl_source_queue_bound_changes"] == bound and m["mailrepl_source_queue_changes"] >= bound
        a = alarms(pair.source)
        assert a["queue"]["level"] == "full" and any("copy queue full" in x for x in a["alarms"]), a
        rss.append(rss_kib(pair.source.proc.pid))
        # a long outage: more mail, the gateway's memory does not follow the primary's size
        primary.deliver_many("alice", (msg(i, 20_000) for i in range(400, 1000)))
        time.sleep(2)
        rss.append(rss_kib(pair.source.proc.pid))
        print(f"source RSS (KiB) at start, warning, bound, +600 messages queued on the primary: {rss}")
        assert rss[-1] - rss[2] < 20 * 1024, rss  # paused: no growth with the primary's backlog
        assert pair.status()["alice"]["last_captured_seq"] <= bound + 10

        # the recovery gateway comes back: the queue drains, capture catches up by itself
        pair.recovery.start()
        st = pair.wait_synced(["alice"], timeout=120)
        assert st["alice"]["queue_alarm"] is None and st["alice"]["last_captured_seq"] > 1000
        assert_same_mailbox(primary, standby, "alice")
        m = metrics(pair.source)
        assert m[label] == 0 and m["mailrepl_source_queue_alarm"] == 0
        assert alarms(pair.source)["alarms"] == []
        assert "copy queue at its bound" in pair.source.log.read_text()
    finally:
        pair.stop()


def test_recovery_disk_full_refuses_batches_then_catches_up(dovecot_factory, tmp_path):
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    with small_disk(tmp_path / "rdisk", "4m") as disk:
        (tmp_path / "rdisk" / "blobs").mkdir(mode=0o700)
        (tmp_path / "blobs").symlink_to(tmp_path / "rdisk" / "blobs")  # the pair's blob_dir, on the tmpfs
        pair = GatewayPair(tmp_path, primary, standby, users=["alice"],
                           source_state=f"sqlite:///{tmp_path}/s.sqlite",
                           recovery_state=f"sqlite:///{tmp_path}/rdisk/r.sqlite",
                           recovery_gateway_extra="min_free_bytes = 0\n")  # the write itself finds the disk full
        try:
            pair.start()
            pair.protect("alice")
            primary.deliver_many("alice", (msg(i) for i in range(5)))
            pair.wait_synced(["alice"])
            # more than the tmpfs holds: 6 MiB of attachment, plus small mail behind it
            primary.deliver("alice", with_attachment(1, 6 * MB))
            primary.deliver_many("alice", (msg(i) for i in range(5, 10)))
            r = eventually(lambda: a if (a := alarms(pair.recovery))["disk_full"] else None,
                           what="disk full at the recovery gateway", logs=(pair.source, pair.recovery))
            assert r["refused_batches"] >= 1 and "No space left" in r["disk_full"], r  # the write itself failed
            assert metrics(pair.recovery)["mailrepl_recovery_disk_full"] == 1
            # the source shows the peer's reason, keeps the batch and retries
            a = eventually(lambda: a if (a := alarms(pair.source))["peer_disk_full"] else None, what="peer alarm")
            assert "disk full" in a["peer_disk_full"] and any("recovery gateway disk full" in x for x in a["alarms"])
            assert metrics(pair.source)["mailrepl_source_peer_disk_full"] == 1
            # the same conditions are alarms of the console and its alerts, on both sides
            eventually(lambda: console_alarm(pair.source, "peer-disk-full"), timeout=60, what="console alarm, source")
            eventually(lambda: console_alarm(pair.recovery, "disk-full"), timeout=60, what="console alarm, recovery")
            st = pair.status()["alice"]
            assert st["copy_queue"] > 0 and "507" in (st["error"] or ""), st
            # nothing acknowledged that is not stored; no partial blob left
            with pair.recovery.api() as c:
                received = c.get("/api/v1/mailboxes").json()["mailboxes"][0]["last_captured_seq"]
            assert st["last_captured_seq"] - st["copy_queue"] <= received
            assert list((tmp_path / "rdisk" / "blobs" / "tmp").iterdir()) == []
            for f in (tmp_path / "rdisk" / "blobs").glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*"):
                assert blob_key(f.read_bytes()) == f.name, f"partial blob {f}"

            disk.resize("64m")  # space returns
            st = pair.wait_synced(["alice"], timeout=60)
            assert st["alice"]["error"] is None
            assert_same_mailbox(primary, standby, "alice")
            eventually(lambda: alarms(pair.recovery)["disk_full"] is None, what="recovery alarm cleared")
            assert metrics(pair.recovery)["mailrepl_recovery_disk_full"] == 0
            eventually(lambda: alarms(pair.source)["peer_disk_full"] is None, what="source alarm cleared")
        finally:
            pair.stop()


@pytest.mark.parametrize("where", ["spool", "rows"])
def test_source_disk_full_stops_capture_cleanly_then_resumes(dovecot_factory, tmp_path, where):
    """The disk fills while a bulk chunk's bodies are written to a spool segment (one large
    message), or while bodies too small for the spool are written to the state database
    (``fetch_chunk = 1``, each message under the spool's threshold)."""
    primary = dovecot_factory("primary", ["alice"])
    standby = dovecot_factory("standby", ["alice"])
    with small_disk(tmp_path / "sdisk", "4m") as disk:
        pair = GatewayPair(tmp_path, primary, standby, users=["alice"],
                           source_state=f"sqlite:///{tmp_path}/sdisk/s.sqlite",
                           recovery_state=f"sqlite:///{tmp_path}/r.sqlite",
                           fetch_chunk=1 if where == "rows" else 200,
                           source_gateway_extra="min_free_bytes = 0\n")  # the write itself finds the disk full
        spool = tmp_path / "sdisk" / "s.outbox"  # beside the state file
        try:
            pair.start()
            pair.protect("alice")
            primary.deliver_many("alice", (msg(i) for i in range(5)))
            pair.wait_synced(["alice"])
            before = pair.status()["alice"]["last_captured_seq"]
            if where == "spool":
                primary.deliver("alice", with_attachment(2, 6 * MB))  # more than the tmpfs holds
            else:  # 8 x ~0.8 MB, each under SPOOL_MIN_BYTES: more than the tmpfs holds, in rows
                primary.deliver_many("alice", (with_attachment(20 + i, 600 * 1024) for i in range(8)))
            primary.deliver_many("alice", (msg(i) for i in range(5, 10)))
            st = eventually(lambda: s if ((s := pair.status()["alice"])["queue_alarm"] or "").startswith("disk full")
                            else None, what="disk full alarm", logs=(pair.source,))
            a = alarms(pair.source)
            if where == "spool":
                assert st["last_captured_seq"] == before, "nothing of the message is half-written"
                assert "outbox spool" in a["disk_full"] and "No space left on device" in a["disk_full"], a
                assert list(spool.glob("*.seg")) == [], "the segment that did not fit is removed"
            else:
                assert before <= st["last_captured_seq"] < before + 13, st  # stopped before the end
                assert "database or disk is full" in a["disk_full"], a  # SQLite's own error, translated
            assert any(x.startswith("disk full") for x in a["alarms"]), a
            assert metrics(pair.source)["mailrepl_source_disk_full"] == 1
            stopped = pair.status()["alice"]["last_captured_seq"]
            time.sleep(2)
            assert pair.status()["alice"]["last_captured_seq"] == stopped  # stays stopped, the API answers

            disk.resize("64m")  # space returns
            st = pair.wait_synced(["alice"], timeout=60)
            assert st["alice"]["last_captured_seq"] > stopped and st["alice"]["queue_alarm"] is None
            assert_same_mailbox(primary, standby, "alice")
            assert metrics(pair.source)["mailrepl_source_disk_full"] == 0
            if where == "spool":
                eventually(lambda: not list(spool.glob("*.seg")), what="segments removed once applied")
        finally:
            pair.stop()
