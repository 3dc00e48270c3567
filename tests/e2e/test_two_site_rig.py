"""The two-site rig: replication across a veth link between two network namespaces, and each
of its impairments (delay, loss, partition) doing what it says; teardown leaves nothing behind."""
from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.dovecot import dovecot_missing_reason
from tests.support.environment import unavailable
from tests.support.mailcompare import assert_same_mailbox, snapshot, total_messages
from tests.support.net import eventually
from tests.support.netns import cleanup_stale, leftovers, netns_missing_reason
from tests.support.two_site import TwoSiteRig

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

USERS = ["alice", "bob", "carol"]


def msg(i: int, user: str) -> bytes:
    return (f"From: s{i}@example.org\r\nTo: {user}@example.org\r\nSubject: rig {i}\r\n"
            f"Message-ID: <rig.{i}.{user}@example.org>\r\n\r\nbody {i} for {user}\r\n").encode()


@pytest.fixture
def rig(tmp_path):
    for reason in (dovecot_missing_reason(), netns_missing_reason()):
        if reason:
            unavailable(reason)
    with TwoSiteRig(tmp_path / "rig", USERS) as r:
        names = rig_names(r)
        assert names <= set(leftovers())
        yield r
    # teardown removed the namespace, both veth ends and the unreachable route
    assert not names & set(leftovers()), f"left behind: {sorted(names & set(leftovers()))}"


def rig_names(rig: TwoSiteRig) -> set[str]:
    """What ``leftovers()`` lists for this rig while it exists: namespace, root veth end, route."""
    return {rig.link.netns, rig.link.root_dev, rig.link.network}


def test_replication_delay_loss_partition(rig):
    pair = rig.pair
    assert rig.link.netns in rig.in_namespace("ip", "netns", "identify").stdout
    rig.protect_all()
    for i in range(3):
        for u in USERS:
            rig.primary.deliver(u, msg(i, u))
    pair.wait_synced(USERS)
    for u in USERS:
        assert_same_mailbox(rig.primary, rig.standby_local, u)
    crossed = rig.bytes_crossed()
    assert crossed["to_ns"] > 3 * 3 * 60 and crossed["from_ns"] > 0, crossed

    # delay: 40 ms each way adds ~80 ms to a request on a new connection (connect + request)
    clean = statistics.median(rig.peer_request_seconds() for _ in range(5))
    rig.set_delay(40, 5)
    delayed = statistics.median(rig.peer_request_seconds() for _ in range(5))
    assert delayed - clean >= 0.070, (clean, delayed)
    rig.set_delay(0, 0)
    assert statistics.median(rig.peer_request_seconds() for _ in range(5)) < delayed - 0.050

    # loss: the nft counters count drops while replication still converges
    rig.set_loss(20)
    for i in range(3, 13):
        rig.primary.deliver("alice", msg(i, "alice"))
    eventually(lambda: rig.dropped()["packets"], what="packets dropped by the loss rules")
    pair.wait_synced(USERS, timeout=120)
    assert rig.dropped()["packets"] > 0
    assert_same_mailbox(rig.primary, rig.standby_local, "alice")
    rig.set_loss(0)
    assert rig.dropped() == {"packets": 0, "bytes": 0}

    # partition: a connect to the namespace fails at once, the peer is reported unreachable,
    # the copy queue grows; the standby stays readable through the namespace's loopback
    rig.partition()
    start = time.monotonic()
    with pytest.raises(OSError):
        socket.create_connection((rig.link.ns_addr, pair.recovery.port), timeout=5).close()
    assert time.monotonic() - start < 1.0
    for i in range(13, 18):
        rig.primary.deliver("bob", msg(i, "bob"))
    st = eventually(lambda: s if (s := pair.status()["bob"])["copy_queue"] >= 5 and s["error"] else None,
                    what="copy queue and peer error during the partition")
    assert st["protected"] is True
    assert total_messages(snapshot(rig.standby_local, "bob")) == 3  # reads across no link

    rig.heal()
    pair.wait_synced(USERS, timeout=120)
    for u in USERS:
        assert_same_mailbox(rig.primary, rig.standby, u)  # through the link again
    assert pair.status()["bob"]["error"] is None
    rig.clear()


def test_teardown_after_a_failing_body_and_stale_rigs(tmp_path):
    for reason in (dovecot_missing_reason(), netns_missing_reason()):
        if reason:
            unavailable(reason)
    with pytest.raises(ZeroDivisionError):
        with TwoSiteRig(tmp_path / "rig", ["alice"], relay=True) as rig:
            rig.set_loss(5)
            rig.set_rate(50)
            rig.partition()
            names = rig_names(rig)
            assert names <= set(leftovers())
            relay = rig.relay.proc
            1 / 0
    assert not names & set(leftovers())
    assert relay.poll() is not None

    # a rig of a killed run is removed by the next one (by name prefix and owning pid)
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; from tests.support.netns import create_link; "
         "link = create_link(); print(link.netns, link.root_dev, link.network, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    stale = set(child.stdout.readline().split())
    assert len(stale) == 3 and stale <= set(leftovers())
    child.kill()
    child.wait(10)
    removed = cleanup_stale()
    assert stale & set(removed)
    assert not stale & set(leftovers())
