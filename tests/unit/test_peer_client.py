"""The peer client against a real recovery gateway app in-process, and against faults.

Happy paths go through the recovery gateway's own routes (ingest, sites, reverse, resync,
rebase) with FastAPI's TestClient; faults (a dead link, 5xx, 429, 401, 409, garbage) come from
``httpx.MockTransport``, alone or relaying to the real app.
"""
from __future__ import annotations

import hashlib
import json

import httpx
import pytest

import mailrepl.shared.protocol.peer_client as peer_client
from mailrepl.gateway.shipper import Shipper
from mailrepl.shared.errors import PeerRefused, TransportError, UnsupportedVersion, WireError
from mailrepl.shared.protocol.messages import (
    HeldAnswer, MailboxSite, RebaseAnswer, RebaseRequest, ReverseProgress, SitesAnswer,
)
from mailrepl.shared.protocol.peer_client import PeerClient, as_peer_client, make_peer_client
from mailrepl.shared.protocol.wire import MEDIA_TYPE, Ack, Batch, encode_batch
from tests.unit.test_failback_memory import Sites, body
from tests.unit.test_pipeline_memory import TOKEN

SHA_UNKNOWN = "0" * 64
KEY_UNKNOWN = "f" * 32


@pytest.fixture
def site(tmp_path) -> Sites:
    return Sites(tmp_path)


def peer_of(site: Sites, **kw) -> PeerClient:
    return PeerClient(site.client, token=kw.get("token", TOKEN), source_id=kw.get("source_id", "hq"))


def relay(site: Sites, seen: list[httpx.Request], fault=None) -> httpx.Client:
    """An HTTP client whose requests reach the real app unless ``fault(request)`` answers first."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if fault is not None:
            answer = fault(request)
            if answer is not None:
                return answer
        r = site.client.request(request.method, request.url.path, params=request.url.params,
                                content=request.content, headers=dict(request.headers))
        return httpx.Response(r.status_code, content=r.content, headers=r.headers)

    return httpx.Client(transport=httpx.MockTransport(handle), base_url="http://recovery")


def mock(handler) -> PeerClient:
    return PeerClient(httpx.Client(transport=httpx.MockTransport(handler), base_url="http://recovery"),
                      token=TOKEN, source_id="hq")


def captured(site: Sites, n: int = 3) -> list[bytes]:
    bodies = [body(i) for i in range(n)]
    for b in bodies:
        site.primary.deliver("alice", b)
    site.capture.cycle(site.mailbox().id, site.primary.open("alice"))
    return bodies


def at_dr(site: Sites) -> None:
    """alice replicated, cut over, one message delivered on the standby and captured there."""
    captured(site)
    site.sync()
    site.sync()
    site.cutovers.cutover([site.rid()])
    site.standby.deliver("alice", body(1, "dr"))
    site.dr_cycle()


# ---------------------------------------------------------------------- happy paths


def test_send_batch_and_progress_answer_acknowledgements(site):
    peer = peer_of(site)
    captured(site)
    built = site.shipper.build_batch()
    ack = peer.send_batch(encode_batch(built.batch))
    assert isinstance(ack, Ack)
    [res] = ack.results
    assert (res.server, res.address, res.status) == ("primary", "alice", "ok")
    assert res.acked == built.batch.segments[0].range.last
    progress = peer.progress()
    assert isinstance(progress, Ack) and progress.results[0].acked == res.acked


def test_missing_names_only_what_the_recovery_gateway_lacks(site, monkeypatch):
    peer = peer_of(site)
    bodies = captured(site)
    held = [hashlib.sha256(b).hexdigest() for b in bodies]
    first = peer.missing(held + [SHA_UNKNOWN], [KEY_UNKNOWN])
    assert isinstance(first, HeldAnswer)
    assert sorted(first.messages) == sorted(held + [SHA_UNKNOWN]) and first.parts == [KEY_UNKNOWN]
    peer.send_batch(encode_batch(site.shipper.build_batch().batch))
    # asked a few at a time, answers joined; nothing asked about, nothing sent
    monkeypatch.setattr(peer_client, "HELD_QUERY_MAX", 2)
    seen: list[httpx.Request] = []
    chunked = peer.over(relay(site, seen))
    answer = chunked.missing(held + [SHA_UNKNOWN], [KEY_UNKNOWN])
    assert answer.messages == [SHA_UNKNOWN] and answer.parts == [KEY_UNKNOWN]
    assert [len(json.loads(r.content)["messages"]) for r in seen] == [2, 2]
    assert chunked.missing([], []) == HeldAnswer(messages=[], parts=[]) and len(seen) == 2


def test_sites_reverse_and_resync_during_a_failback(site):
    peer = peer_of(site)
    assert peer.sites() == SitesAnswer(gateway="dr", mailboxes=[])
    at_dr(site)
    [entry] = peer.sites().mailboxes
    assert isinstance(entry, MailboxSite)
    assert (entry.server, entry.address, entry.state, entry.final_seq) == ("primary", "alice", "active-at-dr", None)
    assert entry.cutover_seq == site.mailbox().last_seq
    # the answer on the wire is the recovery gateway's list, key for key
    raw = site.client.get("/api/v1/ingest/sites", params={"source": "hq"},
                          headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert raw == {"gateway": "dr", "mailboxes": site.failbacks.sites("hq"), "resync": []}

    site.failbacks.failback([site.rid()])
    assert peer.sites().mailboxes[0].state == "failing-back"
    progress = [ReverseProgress(server="primary", address="alice", received=entry.dr_applied, applied=entry.dr_applied)]
    batch = peer.reverse(progress)
    assert isinstance(batch, Batch) and batch.source == "dr"
    [seg] = batch.segments
    assert (seg.server, seg.address, seg.range.first) == ("primary", "alice", entry.dr_applied + 1)
    pulled = peer.reverse_bytes
    assert pulled > 0
    done = [dict(server="primary", address="alice", received=seg.range.last, applied=seg.range.last)]
    assert peer.reverse(done) is None  # 204: nothing more
    assert peer.reverse_bytes == pulled

    base = peer.resync("primary", "alice")
    assert isinstance(base, int) and base >= seg.range.last


def test_rebase_answers_the_failback_status_as_the_recovery_gateway_has_it(site):
    peer = peer_of(site)
    captured(site)
    site.sync()
    site.sync()
    request = RebaseRequest(source="hq", server="primary", address="alice", base_seq=5, applied=0)
    answer = peer.rebase(request)  # nothing to re-base: already replicating
    assert isinstance(answer, RebaseAnswer)
    assert (answer.state, answer.status, answer.note) == ("replicating", "ok", "already replicating")
    raw = site.client.post("/api/v1/ingest/rebase", json=request.model_dump(mode="json"),
                           headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert raw == {"server": "primary", "address": "alice", "state": "replicating", "status": "ok",
                   "note": "already replicating"}, "no key added, none dropped"
    # the full status (with its nulls and the report) travels as it is
    status = dict(site.failbacks.status(site.rid()), report={"late": [], "kept_late": 0}, extra_key=1)
    site.failbacks.rebase = lambda *a, **kw: status
    raw = site.client.post("/api/v1/ingest/rebase", json=request.model_dump(mode="json"),
                           headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert raw == status
    answer = peer.rebase(request.model_dump())  # the request as the puller keeps it: a dict
    assert answer.report == {"late": [], "kept_late": 0} and answer.final_seq is None
    assert answer.model_extra == {"extra_key": 1}


def test_every_request_carries_the_token_the_source_and_the_same_json_as_before(site):
    seen: list[httpx.Request] = []
    peer = PeerClient(relay(site, seen, lambda r: httpx.Response(500, text="stop here")), token=TOKEN,
                      source_id="hq")
    calls = [
        (lambda: peer.missing([SHA_UNKNOWN], []), "/missing", {"messages": [SHA_UNKNOWN], "parts": []}),
        (lambda: peer.send_batch(b"MRPL"), "/batches", None),
        (lambda: peer.progress(), "/progress", None),
        (lambda: peer.sites(), "/sites", None),
        (lambda: peer.reverse([ReverseProgress(server="s", address="a", received=1, applied=0)]), "/reverse",
         {"source": "hq", "progress": [{"server": "s", "address": "a", "received": 1, "applied": 0}]}),
        (lambda: peer.resync("s", "a"), "/resync", {"source": "hq", "server": "s", "address": "a"}),
        (lambda: peer.rebase(dict(source="hq", server="s", address="a", base_seq=3, applied=2, born=[[7, 9]],
                                  report={"late": []})), "/rebase",
         {"source": "hq", "server": "s", "address": "a", "base_seq": 3, "applied": 2, "born": [[7, 9]],
          "report": {"late": []}}),
    ]
    for call, route, sent in calls:
        with pytest.raises(PeerRefused):
            call()
        r = seen[-1]
        assert r.url.path == "/api/v1/ingest" + route and r.headers["authorization"] == f"Bearer {TOKEN}"
        if r.method == "GET":
            assert r.url.params["source"] == "hq"
        elif sent is not None:
            assert json.loads(r.content) == sent
    assert seen[1].headers["content-type"] == MEDIA_TYPE and seen[1].content == b"MRPL"


# ---------------------------------------------------------------------- faults


ROUTES = {
    "missing": lambda p: p.missing([SHA_UNKNOWN], []),
    "send_batch": lambda p: p.send_batch(b"MRPL..."),
    "progress": lambda p: p.progress(),
    "sites": lambda p: p.sites(),
    "reverse": lambda p: p.reverse([]),
    "resync": lambda p: p.resync("primary", "alice"),
    "rebase": lambda p: p.rebase(RebaseRequest(source="hq", server="primary", address="alice", base_seq=1, applied=1)),
}


@pytest.mark.parametrize("route", ROUTES)
def test_a_dead_link_is_a_retryable_transport_error(route):
    def down(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(TransportError) as err:
        ROUTES[route](mock(down))
    assert not isinstance(err.value, PeerRefused), "no HTTP answer: not a refusal"
    assert err.value.retryable and err.value.back_off == 1.0
    assert str(err.value) == "recovery gateway unreachable: ConnectError: connection refused"
    assert isinstance(err.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("status", [503, 429])
def test_busy_or_broken_is_retryable_soon(route, status):
    with pytest.raises(PeerRefused) as err:
        ROUTES[route](mock(lambda r: httpx.Response(status, json={"detail": "try later"})))
    assert err.value.status_code == status and err.value.detail == "try later"
    assert err.value.retryable and err.value.back_off == 1.0
    assert f"answered {status} to" in str(err.value) and "try later" in str(err.value)


def test_a_refused_batch_waits_longer_than_a_busy_peer():
    with pytest.raises(PeerRefused) as err:
        mock(lambda r: httpx.Response(413, json={"detail": "batch larger than 10 bytes"})).send_batch(b"MRPL")
    assert err.value.status_code == 413 and err.value.retryable and err.value.back_off == 5.0
    assert "413" in str(err.value) and "batch larger than 10 bytes" in str(err.value)
    with pytest.raises(PeerRefused) as other:  # other routes: no longer wait than for any failure
        mock(lambda r: httpx.Response(422, text="no")).sites()
    assert other.value.back_off == 1.0 and other.value.detail == "no"


def test_a_wrong_token_is_refused_with_a_clear_message(site):
    peer = peer_of(site, token="not-the-token")
    for call in (peer.sites, peer.progress, lambda: peer.send_batch(b"MRPL")):
        with pytest.raises(PeerRefused) as err:
            call()
        assert err.value.status_code == 401
        assert "refused the ingest token (401)" in str(err.value)
        assert "missing or wrong bearer token" in str(err.value)


def test_a_refused_rebase_is_a_typed_409(site):
    captured(site)
    site.sync()
    site.cutovers.cutover([site.rid()])  # active at DR: a re-base needs a confirmed failback
    with pytest.raises(PeerRefused) as err:
        peer_of(site).rebase(RebaseRequest(source="hq", server="primary", address="alice", base_seq=1, applied=0))
    assert err.value.status_code == 409 and "confirm the failback before re-basing" in err.value.detail
    with pytest.raises(PeerRefused) as err:  # a full resync needs a failback under way
        peer_of(site).resync("primary", "alice")
    assert err.value.status_code == 409


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("garbage", [b"<html>proxy error</html>", b"[1, 2]", b'{"results": 3, "v": 2}'])
def test_an_unreadable_answer_is_a_wire_error(route, garbage):
    if route == "reverse":  # a reverse batch is binary; a JSON answer is not one
        garbage_answer = httpx.Response(200, content=garbage, headers={"content-type": MEDIA_TYPE})
    else:
        garbage_answer = httpx.Response(200, content=garbage, headers={"content-type": "application/json"})
    with pytest.raises(WireError):
        ROUTES[route](mock(lambda r: garbage_answer))


def test_a_newer_acknowledgement_is_an_unsupported_version():
    with pytest.raises(UnsupportedVersion):
        mock(lambda r: httpx.Response(200, json={"v": 99, "results": []})).progress()


def test_reverse_answers_none_on_204_and_refuses_what_is_not_a_batch():
    peer = mock(lambda r: httpx.Response(204))
    assert peer.reverse([dict(server="primary", address="alice", received=0, applied=0)]) is None
    assert peer.reverse_bytes == 0
    html = mock(lambda r: httpx.Response(200, text="<html>login</html>", headers={"content-type": "text/html"}))
    with pytest.raises(TransportError, match="text/html, not application/vnd.mailrepl.batch"):
        html.reverse([])


def test_a_request_the_recovery_gateway_would_refuse_is_not_sent():
    sent = []
    peer = mock(lambda r: sent.append(r) or httpx.Response(200, json={}))
    with pytest.raises(WireError, match="cannot send a re-base request: base_seq"):
        peer.rebase(dict(source="hq", server="s", address="a", applied=1))
    with pytest.raises(WireError, match="cannot send a body query"):
        peer.missing(["not-a-sha"], [])
    assert sent == []


# ---------------------------------------------------------------------- construction


def test_the_factory_builds_the_client_for_the_configured_peer():
    seen = []

    def answer(request):
        seen.append(request)
        return httpx.Response(200, json={"gateway": "dr", "mailboxes": []})

    peer = make_peer_client("https://dr.example:8443", token="s3cret", source_id="hq", timeout=7.5,
                            transport=httpx.MockTransport(answer))
    assert peer.sites().gateway == "dr"
    [r] = seen
    assert str(r.url) == "https://dr.example:8443/api/v1/ingest/sites?source=hq"
    assert r.headers["authorization"] == "Bearer s3cret"
    assert r.extensions["timeout"] == {"connect": 7.5, "read": 7.5, "write": 7.5, "pool": 7.5}
    peer.close()
    assert peer.http.is_closed


def test_shipper_and_puller_wrap_an_http_client_with_their_token(site):
    assert as_peer_client(site.shipper.peer, token=None, source_id="hq") is site.shipper.peer
    with pytest.raises(ValueError):
        as_peer_client(site.shipper.peer, token=None, source_id="elsewhere")
    seen: list[httpx.Request] = []
    site.shipper.client = relay(site, seen)  # another route to the same peer: same token and source
    site.shipper.poll_progress()
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}" and seen[0].url.params["source"] == "hq"
    shared = PeerClient(site.client, token=TOKEN, source_id="hq")
    shipper = Shipper(site.src, "hq", shared)
    assert shipper.peer is shared and shipper.client is site.client


def test_a_sent_batch_is_let_go_when_the_answer_is_read_not_at_the_next_garbage_collection():
    """Through a real HTTP connection the response, its stream and its request refer to each
    other; the batch they hold (megabytes) must be freed as soon as the call returns, without
    the cyclic garbage collector (which runs rarely in a gateway)."""
    import gc
    import threading
    import tracemalloc
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answer = json.dumps({"v": 2, "results": []}).encode()

    class Peer(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Peer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = make_peer_client(f"http://127.0.0.1:{server.server_port}", token=TOKEN, source_id="hq", timeout=10)
    enabled = gc.isenabled()
    try:
        client.send_batch(b"warm-up")  # connection and modules before measuring
        gc.collect()
        gc.disable()
        tracemalloc.start()
        assert client.send_batch(b"b" * 8_000_000).results == ()
        alive, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert alive < 1_000_000, f"{alive} bytes still held after the call"
    finally:
        if enabled:
            gc.enable()
        client.close()
        server.shutdown()
