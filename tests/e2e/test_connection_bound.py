"""Connections to each mail server stay within the configured bound, whatever the number of
protected mailboxes, and a server that refuses connections slows the gateways down instead of
putting mailboxes in error. Real Dovecot instances; connections counted by the server itself
(``doveadm who``), sampled all through seeding and live changes."""
from __future__ import annotations

import threading
from typing import Self

import httpx
import pytest

from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.net import eventually

pytestmark = [pytest.mark.dovecot]


def message(user: str, i: int) -> bytes:
    return (f"From: a@example.org\r\nTo: {user}@example.org\r\nSubject: m{i}\r\n"
            f"Message-ID: <{user}.{i}@example.org>\r\nDate: Sun, 6 Dec 2026 10:00:00 +0000\r\n\r\nbody {i}\r\n").encode()


def imap_sessions(server) -> int:
    """Logged-in IMAP sessions on ``server`` now, as Dovecot counts them."""
    lines = server.doveadm("who", "-1").splitlines()[1:]
    return sum(1 for line in lines if line.split()[1:2] == ["imap"])


class Sampler:
    """Counts each server's IMAP sessions every 0.1 s in the background; keeps the peak."""

    def __init__(self, **servers) -> None:
        self.servers = servers
        self.peak = {name: 0 for name in servers}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name, server in self.servers.items():
                self.peak[name] = max(self.peak[name], imap_sessions(server))
            self.samples += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def health(url: str) -> dict:
    return httpx.get(url + "/healthz", timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()


def protect_server(pair: GatewayPair) -> None:
    with pair.source.api() as c:
        r = c.put("/api/v1/servers/primary/protection", json={"enabled": True})
        assert r.status_code == 200, r.text


def test_connections_stay_within_the_bound_with_many_mailboxes(dovecot_factory, tmp_path):
    users = [f"u{i:02d}" for i in range(50)]
    primary = dovecot_factory("primary", users)
    standby = dovecot_factory("standby", users)
    for u in users:
        primary.deliver(u, message(u, 0))
    limit = 6
    pair = GatewayPair(tmp_path, primary, standby, users=users, source_state=f"sqlite:///{tmp_path}/s.sqlite",
                       recovery_state=f"sqlite:///{tmp_path}/r.sqlite", poll_interval=0.5,
                       server_extra=f"max_connections = {limit}\npush_connections = 2\n")
    pair.start()
    try:
        with Sampler(primary=primary, standby=standby) as sampler:
            protect_server(pair)
            pair.wait_synced(users, timeout=240)
            for u in users[::5]:  # live changes after the seed, with push and polling at work
                primary.deliver(u, message(u, 1))
            st = pair.wait_synced(users, timeout=120)
        assert all(st[u]["phase"] == "replicating" and st[u]["error"] is None for u in users)
        assert all(st[u]["last_captured_seq"] >= 2 for u in users[::5])
        assert sampler.samples > 10
        # 50 mailboxes, replication done through at most `limit` sessions per server (and per gateway)
        assert 0 < sampler.peak["primary"] <= limit, sampler.peak
        assert 0 < sampler.peak["standby"] <= limit, sampler.peak
        src, rec = health(pair.source.url), health(pair.recovery.url)
        assert src["connections"]["primary"]["limit"] == limit and src["connections"]["primary"]["open"] <= limit
        assert rec["connections"]["standby"]["open"] <= limit
        assert src["connections"]["primary"]["opened"] >= 1
        # 50 mailboxes through 6 connections: idle ones were closed to open others, and it shows
        evicted = src["connections"]["primary"]["evicted"]
        assert evicted >= 1, src["connections"]
        metrics = httpx.get(pair.source.url + "/metrics", timeout=10,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
        line = next(x for x in metrics.splitlines()
                    if x.startswith('mailrepl_source_server_connections_evicted_total{server="primary"}'))
        assert float(line.rsplit(" ", 1)[1]) >= evicted
    finally:
        pair.stop()


def test_a_server_refusing_connections_slows_the_gateway_instead_of_errors(dovecot_factory, tmp_path):
    users = [f"r{i:02d}" for i in range(10)]
    primary = dovecot_factory("primary", users, imap_process_limit=4)  # drops a 5th session
    standby = dovecot_factory("standby", users)
    for u in users:
        primary.deliver(u, message(u, 0))
    pair = GatewayPair(tmp_path, primary, standby, users=users, source_state=f"sqlite:///{tmp_path}/s.sqlite",
                       recovery_state=f"sqlite:///{tmp_path}/r.sqlite", poll_interval=0.5,
                       server_extra="max_connections = 10\npush_connections = 2\ntimeout = 3\n")
    pair.start()
    errors: list[tuple[str, str]] = []
    done = threading.Event()

    def watch_errors() -> None:
        while not done.wait(0.3):
            try:
                st = pair.status()
            except httpx.HTTPError:
                continue
            errors.extend((a, m["error"]) for a, m in st.items() if m["phase"] == "error" or m["error"])

    watcher = threading.Thread(target=watch_errors, daemon=True)
    watcher.start()
    try:
        protect_server(pair)
        pair.wait_synced(users, timeout=240)
        primary.deliver(users[3], message(users[3], 1))
        st = pair.wait_synced(users, timeout=120)
        done.set()
        watcher.join()
        pool = eventually(lambda: (c := health(pair.source.url)["connections"]["primary"])["refused"] and c,
                          timeout=5, what="a refusal counted")
        assert not errors, errors[:5]
        assert all(st[u]["phase"] == "replicating" for u in users)
        # it met the server's limit, and lowered its own to what the server took and backed off
        assert pool["refused"] >= 1, pool
        assert "process_limit (4) reached" in primary.log_path.read_text()
        assert "refused a new connection" in pair.source.log.read_text()
    finally:
        done.set()
        pair.stop()
