"""The gateway link's rate cap on loopback: a seed is held to the cap (bytes counted as they are
let through, sampled while it runs), and a change to another protected mailbox reaches the
standby while the seed is still being throttled; that one small change holds back from the seed
only what it used, not the whole share kept for live changes."""
from __future__ import annotations

import base64
import os
import time

import httpx
import pytest
from mailrepl.shared.protocol.link_rate import BURST_SECONDS, FRAMING, LIVE_HEADROOM, LIVE_HOLD_SECONDS

from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.net import eventually

pytestmark = [pytest.mark.dovecot]

CAP_MBIT = 2  # 250,000 bytes/s


def bulky(i: int) -> bytes:
    body = base64.encodebytes(os.urandom(36_000)).replace(b"\n", b"\r\n")  # incompressible-ish, ~48 KB
    return (f"From: a@example.org\r\nTo: seed@example.org\r\nSubject: s{i}\r\nMessage-ID: <s{i}@example.org>\r\n"
            f"Date: Sun, 6 Dec 2026 10:00:00 +0000\r\n\r\n").encode() + body


def small(i: int) -> bytes:
    return (f"From: a@example.org\r\nTo: live@example.org\r\nSubject: l{i}\r\nMessage-ID: <l{i}@example.org>\r\n"
            f"Date: Sun, 6 Dec 2026 10:00:00 +0000\r\n\r\nlive {i}\r\n").encode()


def link(url: str) -> dict:
    return httpx.get(url + "/healthz", timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["link"]


def test_seed_held_to_the_cap_while_a_live_change_gets_through(dovecot_factory, tmp_path):
    users = ["seed", "live"]
    primary = dovecot_factory("primary", users)
    standby = dovecot_factory("standby", users)
    primary.deliver_many("seed", [bulky(i) for i in range(60)])  # ~2.9 MB
    pair = GatewayPair(tmp_path, primary, standby, users=users, source_state=f"sqlite:///{tmp_path}/s.sqlite",
                       recovery_state=f"sqlite:///{tmp_path}/r.sqlite", poll_interval=0.5,
                       source_extra=f"\n[link]\nrate_mbit = {CAP_MBIT}\nlive_share_percent = 25\n")
    pair.start()
    try:
        pair.protect("live")
        # the base: creating the folders of an empty mailbox is a few changes of its own
        live_base = pair.wait_synced(["live"], timeout=60)["live"]["last_applied_seq"]
        before = link(pair.source.url)
        assert before["rate_cap_bits"] == CAP_MBIT * 1_000_000
        pair.protect("seed")
        first = eventually(lambda: (s := link(pair.source.url))["bulk_bytes"] > before["bulk_bytes"] and
                           (time.monotonic(), s), timeout=60, what="the seed on the link")
        primary.deliver("live", small(1))  # a live change while the seed is throttled
        live_done = eventually(lambda: (s := pair.status())["live"]["last_applied_seq"] > live_base and s,
                               timeout=120, what="the live change on the standby")
        # the live change overtook the seed: the seed was still under way when it was applied
        assert live_done["seed"]["last_applied_seq"] < live_done["seed"]["last_captured_seq"] or \
            live_done["seed"]["phase"] == "seeding", live_done["seed"]
        # one small live change holds back from the seed only what it used (twice over, spread
        # over LIVE_HOLD_SECONDS), not the whole live share: the seed keeps filling the cap
        during = link(pair.source.url)
        live_sent = during["live_bytes"] - before["live_bytes"]
        assert 0 < live_sent < 64 * 1024, during
        # what is reserved follows the live bytes of the last LIVE_HOLD_SECONDS, which may still
        # include the live mailbox's own folder changes sent just before ``before``: bounded by
        # every live byte sent so far
        on_link = during["live_bytes"] * FRAMING + 2  # the cap counts the headers that carry the bytes (rounded up)
        assert during["live_reserved_bits"] <= LIVE_HEADROOM * on_link * 8 / LIVE_HOLD_SECONDS + 1, during
        assert during["live_reserved_bits"] < 0.25 * CAP_MBIT * 1_000_000 / 10, during
        samples = [first]
        while pair.status()["seed"]["phase"] == "seeding" or pair.status()["seed"]["copy_queue"]:
            time.sleep(0.5)
            samples.append((time.monotonic(), link(pair.source.url)))
        pair.wait_synced(users, timeout=120)
        (t0, s0), (t1, s1) = samples[0], samples[-1]
        sent = (s1["bulk_bytes"] + s1["live_bytes"]) - (s0["bulk_bytes"] + s0["live_bytes"])
        assert sent > 1_000_000, (s0, s1)  # most of the seed went through the cap while sampled
        cap = CAP_MBIT * 125_000
        # never faster than the cap (plus one burst and one chunk): a slow host cannot make this fail
        assert sent / (t1 - t0) <= cap * 1.05 + (BURST_SECONDS * cap + 65_536) / (t1 - t0), (sent, t1 - t0)
        assert s1["live_bytes"] > before["live_bytes"]  # the live change went as live traffic
        assert s1["waited_seconds"] > 0
        with pair.source.api() as c:
            metrics = c.get("/metrics").text
        values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                  if line.startswith("mailrepl_source_link")}
        assert values["mailrepl_source_link_rate_cap_bits"] == CAP_MBIT * 1_000_000
        print(f"cap {CAP_MBIT} Mbit/s: {sent} bytes in {t1 - t0:.1f} s = {sent * 8 / (t1 - t0) / 1e6:.2f} Mbit/s")
        assert 'mailrepl_source_link_bytes_total{traffic="seed"}' in metrics
    finally:
        pair.stop()
