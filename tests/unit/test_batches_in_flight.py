"""More than one batch on the link: the shipper keeps ``in_flight`` batches travelling at once and
the recovery gateway stores a source's batches in the order they arrived, so a batch that
overtakes the one before it waits for it instead of being refused as a gap."""
from __future__ import annotations

import threading
import time

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailrepl.gateway.shipper import Shipper
from mailrepl.recovery.api import ingest_router
from mailrepl.recovery.ingest_order import IngestOrder
from mailrepl.shared.protocol.wire import decode_batch, encode_batch
from mailrepl.shared.store.models import Mailbox, Replica
from tests.unit.memory_server import MemoryAdapter
from tests.unit.test_pipeline_memory import TOKEN, Pipeline, _msg, source_access

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/vnd.mailrepl.batch"}


# ---------------------------------------------------------------- the order of arrival


def test_a_later_request_waits_for_an_earlier_one_never_the_other_way():
    order = IngestOrder(max_wait=5)
    state = {"stored": False}
    with order.arriving("hq") as first:
        with order.arriving("hq") as second:
            # the earlier request never waits for the later one
            t0 = time.monotonic()
            assert order.wait_turn("hq", first, ready=lambda: False) is False
            assert time.monotonic() - t0 < 0.5
            # the later one waits while the earlier one is in progress and it is not ready
            result = []
            waiter = threading.Thread(target=lambda: result.append(
                order.wait_turn("hq", second, ready=lambda: state["stored"])))
            waiter.start()
            time.sleep(0.3)
            assert waiter.is_alive() and not result
            state["stored"] = True
            waiter.join(5)
            assert result == [True] and order.waited == 1


def test_a_gap_no_earlier_request_fills_is_answered_at_once_and_other_sources_do_not_hold_it():
    order = IngestOrder(max_wait=5)
    with order.arriving("other"):
        with order.arriving("hq") as ticket:
            t0 = time.monotonic()
            assert order.wait_turn("hq", ticket, ready=lambda: False) is False
            assert time.monotonic() - t0 < 0.5


def test_a_wait_is_bounded():
    order = IngestOrder(max_wait=0.3)
    with order.arriving("hq"), order.arriving("hq") as later:
        t0 = time.monotonic()
        assert order.wait_turn("hq", later, ready=lambda: False) is False
        assert 0.3 <= time.monotonic() - t0 < 2


# ---------------------------------------------------------------- the route


def two_batches(p: Pipeline) -> tuple[bytes, bytes, int]:
    """Alice's seed as two consecutive encoded batches (the second continues the first), and
    the last sequence number of the second."""
    for i in range(10):
        p.primary.deliver("alice", _msg(i))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    p.shipper.builder.max_changes = 5
    first = p.shipper.build_batch()
    upto = {(seg.server, seg.address): seg.range.last for seg in first.batch.segments}
    second = p.shipper.build_batch(after=upto, in_flight=frozenset(first.batch.parts))
    assert second.batch.segments[0].range.first == first.batch.segments[0].range.last + 1
    return encode_batch(first.batch), encode_batch(second.batch), second.batch.segments[0].range.last


def ingest_app(p: Pipeline, order: IngestOrder) -> TestClient:
    app = FastAPI()
    app.include_router(ingest_router(p.receiver, source_access(MemoryAdapter("standby", p.standby)), 1 << 30,
                                     order=order))
    return TestClient(app, base_url="http://recovery")


def received(p: Pipeline) -> int:
    with p.dst.tx() as s:
        return s.scalar(select(Replica.received_seq).where(Replica.address == "alice")) or 0


def test_a_batch_that_overtakes_the_one_before_it_waits_for_it(tmp_path):
    p = Pipeline(tmp_path)
    first, second, end = two_batches(p)
    order = IngestOrder(max_wait=10)
    client = ingest_app(p, order)
    answers = {}
    with order.arriving("hq"):  # the first batch: its request is in, its body still on the way
        overtaking = threading.Thread(target=lambda: answers.setdefault(
            "second", client.post("/api/v1/ingest/batches", content=second, headers=AUTH)))
        overtaking.start()
        time.sleep(0.3)
        assert overtaking.is_alive(), "the second batch waits for the first"
        answers["first"] = client.post("/api/v1/ingest/batches", content=first, headers=AUTH)
    overtaking.join(10)
    statuses = {name: [r["status"] for r in a.json()["results"]] for name, a in answers.items()}
    assert statuses == {"first": ["ok"], "second": ["ok"]}
    assert received(p) == end and order.waited == 1


def test_without_an_earlier_batch_in_flight_a_gap_is_still_a_gap(tmp_path):
    p = Pipeline(tmp_path)
    _, second, _ = two_batches(p)
    client = ingest_app(p, IngestOrder(max_wait=10))
    t0 = time.monotonic()
    r = client.post("/api/v1/ingest/batches", content=second, headers=AUTH)
    assert [x["status"] for x in r.json()["results"]] == ["gap"] and time.monotonic() - t0 < 2
    assert received(p) == 0


# ---------------------------------------------------------------- the shipper


def test_the_shipper_keeps_two_batches_on_the_link_and_everything_arrives_in_order(tmp_path):
    p = Pipeline(tmp_path)
    for i in range(60):
        p.primary.deliver("alice", _msg(i, size=2000))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    in_flight, peak, forwarded = [0], [0], threading.Condition()
    done_upto = [0]  # the link delivers requests in the order they were sent

    def slow_forward(request: httpx.Request) -> httpx.Response:
        batch = request.url.path.endswith("/batches")
        if not batch:
            r = p.client.request(request.method, request.url.path, content=request.content,
                                 params=dict(request.url.params), headers=dict(request.headers))
            return httpx.Response(r.status_code, content=r.content, headers=r.headers)
        seg = decode_batch(request.content).segments[0]
        with forwarded:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            forwarded.wait_for(lambda: done_upto[0] >= seg.range.first - 1, timeout=10)
        try:
            r = p.client.request(request.method, request.url.path, content=request.content,
                                 headers=dict(request.headers))
            with forwarded:
                done_upto[0] = max(done_upto[0], seg.range.last)
                forwarded.notify_all()
            time.sleep(0.1)  # a long link: the answer comes back a while after the batch was stored
        finally:
            with forwarded:
                in_flight[0] -= 1
        return httpx.Response(r.status_code, content=r.content, headers=r.headers)

    shipper = Shipper(p.src, "hq", httpx.Client(transport=httpx.MockTransport(slow_forward), base_url="http://r"),
                      token=TOKEN, max_changes=7, in_flight=2)
    sent = shipper.ship_pipelined()
    last = p.mailbox().last_seq
    assert sent >= last // 7 and peak[0] == 2
    with p.src.tx() as s:
        mbx = s.scalar(select(Mailbox).where(Mailbox.address == "alice"))
        assert mbx.acked_seq == last and mbx.ship_error is None
    assert received(p) == last
    p.sync()
    p.assert_equal()
