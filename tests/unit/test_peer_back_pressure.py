"""The source gateway honours the recovery gateway's back-pressure: a 429/503 with ``Retry-After``
becomes the ``back_off`` the shipper waits (bounded), and a refusal without one keeps the default."""
from __future__ import annotations

import httpx
import pytest

from mailrepl.shared.errors import PeerRefused
from mailrepl.shared.protocol.peer_client import RETRY_AFTER_MAX, make_peer_client


def _peer(status: int, headers: dict):
    transport = httpx.MockTransport(lambda request: httpx.Response(status, headers=headers, json={"detail": "busy"}))
    return make_peer_client("http://dr", token="t", source_id="hq", timeout=5, transport=transport)


@pytest.mark.parametrize("status,retry_after,expected", [
    (429, "7", 7.0), (503, "2", 2.0), (429, "100000", float(RETRY_AFTER_MAX)), (503, None, 1.0), (429, "soon", 1.0),
])
def test_retry_after_becomes_the_back_off(status, retry_after, expected):
    peer = _peer(status, {"Retry-After": retry_after} if retry_after else {})
    with pytest.raises(PeerRefused) as refused:
        peer.send_batch(b"MRPL")
    assert refused.value.status_code == status
    assert refused.value.retryable
    assert refused.value.back_off == expected
