"""Limits before work, on real gateway processes: hostile bodies are refused while memory stays flat.

Each probe runs against a recovery and a source gateway started as ``mailrepl … run`` processes
(the mail servers they name are not running: none is needed to refuse a request). While a probe
runs, the gateway's resident memory is sampled from ``/proc/<pid>/status``; its peak (``VmHWM``)
must stay under 300 MB, and afterwards the gateway must still answer ``/healthz`` and an
authenticated request.

The recovery gateway runs with its default limits (``max_batch_bytes`` 64 MiB,
``max_inflated_bytes`` 128 MiB); the test asserts those are the defaults, so raising them (and
the memory an ingest may use) is a decision this test would notice.
"""
from __future__ import annotations

import struct
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import zstandard

from mailrepl.shared.protocol.wire import MAGIC, MEDIA_TYPE
from tests.support.gateways import ADMIN_TOKEN, INGEST_TOKEN, GatewayProcess, free_port

MB = 1024 * 1024
RSS_LIMIT = 300 * MB


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


class RssSampler:
    """Samples a process's VmRSS every 20 ms while a probe runs; ``peak`` is the highest seen,
    or the kernel's high-water mark (VmHWM), whichever is higher."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _proc_status(self.pid, "VmRSS"))
            time.sleep(0.02)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _proc_status(self.pid, "VmHWM"))


def _zeros(total: int, chunk: int = MB) -> Iterator[bytes]:
    block = b"\0" * chunk
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield block if n == chunk else block[:n]
        sent += n


def _json_garbage(total: int) -> Iterator[bytes]:
    """A syntactically plausible JSON document of ``total`` bytes: {"addresses": ["aaaa…", …]}."""
    head, tail = b'{"addresses": [', b'"x"]}'
    item = b'"' + b"a" * 1000 + b'",'
    yield head
    left = total - len(head) - len(tail)
    while left >= len(item):
        yield item
        left -= len(item)
    yield b" " * left + tail


def _bomb(inflated: int) -> bytes:
    """A version-2 batch whose header is valid and lists one part of ``inflated`` bytes, and whose
    zstd frame holds that header followed by ``inflated`` zeros: a few hundred KB inflating to GBs."""
    header = (b'{"source":"hq","segments":[],"messages":[],"parts":[{"key":"' + b"0" * 32
              + b'","size":' + str(inflated).encode() + b"}]}")
    comp = zstandard.ZstdCompressor(level=1).compressobj()
    frame = [comp.compress(struct.pack(">I", len(header)) + header)]
    for block in _zeros(inflated, 16 * MB):
        frame.append(comp.compress(block))
    frame.append(comp.flush())
    data = b"".join(frame)
    return struct.pack(">4sBB", MAGIC, 2, 1) + struct.pack(">Q", len(data)) + data


@pytest.fixture
def gateways(tmp_path: Path):
    rport, sport, dead = free_port(), free_port(), free_port()
    server = f"""
[[servers]]
name = "{{name}}"
host = "127.0.0.1"
port = {dead}
tls = "none"
service_user = "master"
service_password = "master-secret"
users = ["alice", "bob"]
"""
    rec = tmp_path / "recovery.toml"
    rec.write_text(f"""
[gateway]
id = "dr"
state_url = "sqlite:///{tmp_path}/recovery.sqlite"
listen = "127.0.0.1:{rport}"
admin_token = "{ADMIN_TOKEN}"
plaintext = true
blob_dir = "{tmp_path}/blobs"
max_concurrent_ingests = 2

[[sources]]
id = "hq"
token = "{INGEST_TOKEN}"
servers = ["primary"]

[failover]
redirect_key = "redirect-Xn4Bv7Cm1Lk8Jh5Gf2Ds9Aq"
""" + server.replace("{name}", "standby"))
    rec.chmod(0o600)
    src = tmp_path / "source.toml"
    src.write_text(f"""
[gateway]
id = "hq"
state_url = "sqlite:///{tmp_path}/source.sqlite"
listen = "127.0.0.1:{sport}"
admin_token = "{ADMIN_TOKEN}"
poll_interval = 60
plaintext = true

[peer]
url = "http://127.0.0.1:{rport}"
token = "{INGEST_TOKEN}"
""" + server.replace("{name}", "primary"))
    src.chmod(0o600)
    recovery = GatewayProcess("recovery", rec, rport, tmp_path / "recovery.log")
    source = GatewayProcess("source", src, sport, tmp_path / "source.log")
    recovery.start()
    source.start()
    try:
        yield recovery, source
    finally:
        source.stop()
        recovery.stop()


def _still_serves(gw: GatewayProcess) -> None:
    assert httpx.get(gw.url + "/healthz", timeout=10).status_code == 200
    with gw.api() as c:
        r = c.get("/api/v1/mailboxes")
    assert r.status_code == 200, r.text
    # nothing the refused requests carried was applied: no mailbox protected, none replicated
    assert not any(m["protected"] for m in r.json()["mailboxes"]) if gw.role == "source" else r.json()["mailboxes"] == []


def _post(url: str, method: str, content, headers: dict) -> httpx.Response:
    with httpx.Client(timeout=120) as c:
        return c.request(method, url, content=content, headers=headers)


def test_unauthenticated_200mb_bodies_are_refused_before_they_are_read(gateways):
    recovery, source = gateways
    targets = [(recovery, "POST", "/api/v1/cutover"), (source, "PUT", "/api/v1/mailboxes/alice/protection")]
    for gw, method, path in targets:
        for with_length in (True, False):
            headers = {"Content-Type": "application/json"}
            if with_length:
                headers["Content-Length"] = str(200 * MB)
            with RssSampler(gw.proc.pid) as rss:
                r = _post(gw.url + path, method, _json_garbage(200 * MB), headers)
            assert r.status_code == 401, (path, with_length, r.status_code, r.text[:200])
            assert r.headers["www-authenticate"] == "Bearer"
            assert rss.peak < RSS_LIMIT, f"{gw.role} {path}: peak RSS {rss.peak / MB:.0f} MB"
        _still_serves(gw)
    # authenticated, the admin JSON cap (64 KiB by default) refuses the same body
    for gw, method, path in targets:
        with RssSampler(gw.proc.pid) as rss:
            r = _post(gw.url + path, method, _json_garbage(200 * MB),
                      {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 413, r.text[:200]
        assert rss.peak < RSS_LIMIT
        _still_serves(gw)


def test_a_600mb_ingest_is_refused_with_and_without_content_length(gateways):
    recovery, _ = gateways
    auth = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": MEDIA_TYPE}
    for headers in ({**auth, "Content-Length": str(600 * MB)}, auth):
        started = time.monotonic()
        with RssSampler(recovery.proc.pid) as rss:
            r = _post(recovery.url + "/api/v1/ingest/batches", "POST", _zeros(600 * MB), headers)
        assert r.status_code == 413, r.text[:200]
        assert "larger than" in r.json()["detail"]
        assert rss.peak < RSS_LIMIT, f"peak RSS {rss.peak / MB:.0f} MB"
        assert time.monotonic() - started < 60
    _still_serves(recovery)


def test_the_probes_run_at_the_default_limits():
    from mailrepl.recovery.settings import DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_INFLATED_BYTES

    assert (DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_INFLATED_BYTES) == (64 * MB, 128 * MB)


def test_a_zstd_bomb_is_refused_at_the_inflate_limit(gateways):
    recovery, _ = gateways
    bomb = _bomb(4 * 1024 * MB)  # 4 GiB of zeros behind a valid header
    assert len(bomb) < 2 * MB
    with RssSampler(recovery.proc.pid) as rss:
        r = _post(recovery.url + "/api/v1/ingest/batches", "POST", bomb,
                  {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": MEDIA_TYPE})
    assert r.status_code == 400, r.text[:200]
    assert "inflates beyond" in r.json()["detail"]
    assert rss.peak < RSS_LIMIT, f"peak RSS {rss.peak / MB:.0f} MB"
    _still_serves(recovery)


def test_concurrent_ingests_beyond_the_bound_are_told_to_come_back(gateways):
    recovery, _ = gateways
    auth = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": MEDIA_TYPE}
    release = threading.Event()
    results: list[int] = []
    sending = threading.Semaphore(0)

    def slow_body() -> Iterator[bytes]:
        sending.release()  # the request's headers are on their way
        yield b"MRPL"
        release.wait(30)
        yield b"\x02\x00"

    def hold() -> None:  # a batch whose body trickles in occupies an ingest slot
        results.append(_post(recovery.url + "/api/v1/ingest/batches", "POST", slow_body(), auth).status_code)

    holders: list[threading.Thread] = []

    def start_holder() -> None:
        t = threading.Thread(target=hold)
        t.start()
        holders.append(t)
        assert sending.acquire(timeout=60)

    for _ in range(2):  # max_concurrent_ingests = 2
        start_holder()
    try:
        deadline = time.monotonic() + 60
        while True:
            r = _post(recovery.url + "/api/v1/ingest/batches", "POST", b"MRPL\x02\x00", auth)
            if r.status_code == 429 or time.monotonic() > deadline:
                break
            # the gateway checks credentials concurrently, so a probe may take a slot before a
            # slow request that was sent earlier is counted: that one is then told to come back
            # (429) and another takes its place
            for _ in range(results.count(429) - (len(holders) - 2)):
                start_holder()
            time.sleep(0.05)
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["retry-after"]) <= 60
    finally:
        release.set()
        for t in holders:
            t.join(30)
    # the two that held the slots were taken in (and refused as too short); any other was told to come back
    assert sorted(results) == [400, 400] + [429] * (len(holders) - 2)
    r = _post(recovery.url + "/api/v1/ingest/batches", "POST", b"MRPL\x02\x00", auth)
    assert r.status_code == 400  # slots free again
