"""While a seed keeps the shipper busy, the applied position of the other mailboxes still moves:
the peer is asked how far it applied between batches (an ack speaks only of its own batch's
mailboxes), and only when another mailbox waits, so a one-mailbox seed costs no extra requests."""
from __future__ import annotations

import httpx
from sqlalchemy import select

from mailrepl.gateway import shipper as shipper_module
from mailrepl.shared.store.models import Mailbox, Replica
from tests.unit.test_pipeline_memory import Pipeline, _msg


def counting_client(p: Pipeline, progress: list[str]) -> httpx.Client:
    def forward(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/progress"):
            progress.append(request.url.path)
        if request.method == "GET":
            r = p.client.get(request.url.path, params=dict(request.url.params), headers=dict(request.headers))
        else:
            r = p.client.request(request.method, request.url.path, content=request.content,
                                 headers=dict(request.headers))
        return httpx.Response(r.status_code, content=r.content, headers=r.headers)

    return httpx.Client(transport=httpx.MockTransport(forward), base_url="http://recovery")


def mailbox(p: Pipeline, address: str) -> Mailbox:
    with p.src.tx() as s:
        return s.scalar(select(Mailbox).where(Mailbox.address == address))


def test_progress_of_a_waiting_mailbox_is_learned_while_a_seed_flows(tmp_path, monkeypatch):
    monkeypatch.setattr(shipper_module, "PROGRESS_EVERY", 0.0)
    p = Pipeline(tmp_path)
    with p.src.tx() as s:
        s.add(Mailbox(server="primary", address="bob", protected=True, phase="seeding"))
    p.primary.deliver("bob", _msg(1))
    p.capture.cycle(mailbox(p, "bob").id, p.primary.open("bob"))
    assert p.shipper.ship_once()
    with p.dst.tx() as s:
        rid = s.scalar(select(Replica.id).where(Replica.address == "bob"))
    p.replay.replay(rid, p.standby.open("bob"))  # applied at DR; the source has not heard of it
    bob = mailbox(p, "bob")
    assert bob.applied_seq < bob.acked_seq

    for i in range(40):
        p.primary.deliver("alice", _msg(i))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    progress: list[str] = []
    p.shipper.client = counting_client(p, progress)
    assert p.shipper.ship_pipelined() > 1
    bob = mailbox(p, "bob")
    assert bob.applied_seq == bob.acked_seq, "bob's apply was learned while alice's seed was shipped"
    assert len(progress) == 1, "asked once: after that nothing but the batch's own mailbox waited"


def test_a_seed_alone_asks_for_no_progress_between_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(shipper_module, "PROGRESS_EVERY", 0.0)
    p = Pipeline(tmp_path)
    for i in range(40):
        p.primary.deliver("alice", _msg(i))
    p.capture.cycle(p.mailbox().id, p.primary.open("alice"))
    progress: list[str] = []
    p.shipper.client = counting_client(p, progress)
    assert p.shipper.ship_pipelined() > 1
    assert progress == [], "each ack already tells how far the seeded mailbox is applied"
