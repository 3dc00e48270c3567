"""Under a rate cap, a live change captured while a seed batch is in flight goes in the very next
batch: the seed batch prepared ahead of it (before the change came in) is prepared again, live
first, rather than sent before it."""
from __future__ import annotations

import datetime as dt
import threading

import httpx
from sqlalchemy import select

from mailrepl.gateway.shipper import Shipper
from mailrepl.shared.protocol.link_rate import LinkRateCap, schedule_of
from mailrepl.shared.protocol.wire import decode_batch
from mailrepl.shared.store.models import Mailbox, Replica
from tests.unit.test_pipeline_memory import TOKEN, Pipeline, _msg


def mailbox(p: Pipeline, address: str) -> Mailbox:
    with p.src.tx() as s:
        return s.scalar(select(Mailbox).where(Mailbox.address == address))


def test_a_live_change_overtakes_the_seed_batch_prepared_ahead(tmp_path):
    p = Pipeline(tmp_path)
    with p.src.tx() as s:
        s.add(Mailbox(server="primary", address="bob", protected=True, phase="seeding"))
    p.primary.deliver("bob", _msg(1000))
    p.capture.cycle(mailbox(p, "bob").id, p.primary.open("bob"))
    while p.shipper.ship_once():
        pass
    with p.dst.tx() as s:
        rid = s.scalar(select(Replica.id).where(Replica.address == "bob"))
    p.replay.replay(rid, p.standby.open("bob"))
    p.shipper.poll_progress()
    p.capture.cycle(mailbox(p, "bob").id, p.primary.open("bob"))
    assert mailbox(p, "bob").phase == "replicating"

    for i in range(40):
        p.primary.deliver("alice", _msg(i))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))

    batches: list[list[str]] = []
    prepared = {"count": 0}
    prepared_again = threading.Event()

    def forward(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/batches"):
            batches.append([seg.address for seg in decode_batch(request.content).segments])
            if len(batches) == 1:
                # the next seed batch is prepared while this one flies; then a live change comes in
                assert prepared_again.wait(10)
                p.primary.deliver("bob", _msg(1001))
                p.capture.cycle(mailbox(p, "bob").id, p.primary.open("bob"))
        r = p.client.request(request.method, request.url.path, params=dict(request.url.params),
                             content=request.content, headers=dict(request.headers))
        return httpx.Response(r.status_code, content=r.content, headers=r.headers)

    cap = LinkRateCap(schedule_of(80, []), now=lambda: dt.datetime(2026, 12, 6, 12))  # 10 MB/s: no real wait
    shipper = Shipper(p.src, "hq", httpx.Client(transport=httpx.MockTransport(forward), base_url="http://recovery"),
                      token=TOKEN, max_changes=7, rate_cap=cap)
    original = shipper._prepare

    def counting_prepare(*args):
        result = original(*args)
        prepared["count"] += 1
        if prepared["count"] >= 2:
            prepared_again.set()
        return result

    shipper._prepare = counting_prepare
    shipper._fit_to_cap()
    assert shipper.builder.live_first
    assert shipper.ship_pipelined() > 2
    assert batches[0] == ["alice"]
    assert batches[1] == ["bob"], f"the live change waited behind the seed batch prepared ahead: {batches}"
    assert all(b == ["alice"] for b in batches[2:])
    assert mailbox(p, "alice").acked_seq == mailbox(p, "alice").last_seq
    assert mailbox(p, "bob").acked_seq == mailbox(p, "bob").last_seq
