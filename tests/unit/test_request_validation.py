"""Strict validation at the gateways' door: bad batch headers and bad JSON bodies get the right 4xx,
and the state store is exactly as before (row counts and sequence numbers compared).

Real gateway apps (``RecoveryGateway.app()``, ``SourceGateway.app()``) built from config files,
called in-process; their workers are not started (no mail server is needed to refuse a request).
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import struct

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mailrepl.gateway.app import SourceGateway
from mailrepl.gateway.settings import load_source_settings
from mailrepl.recovery.app import RecoveryGateway
from mailrepl.recovery.settings import load_recovery_settings
from mailrepl.shared.model import Change, Kind, SeqRange
from mailrepl.shared.protocol.wire import MAGIC, MEDIA_TYPE, Batch, Segment, encode_batch
from mailrepl.shared.store.models import InboxRow, Mailbox, Replica

ADMIN, INGEST = "admin-Rk4Tz8Wq1Ny5Mp9Lc3Hv7Bx2", "ingest-Gf6Dj0Ks4Aq8Ze2Xw7Cv1Bn5"
SERVER = """
[[servers]]
name = "{name}"
host = "127.0.0.1"
port = 9
tls = "none"
service_user = "master"
service_password = "pw"
users = ["alice", "bob"]
"""


@pytest.fixture
def recovery(tmp_path):
    cfg = tmp_path / "recovery.toml"
    cfg.write_text(f"""
[gateway]
id = "dr"
state_url = "sqlite:///{tmp_path}/r.sqlite"
admin_token = "{ADMIN}"
plaintext = true
blob_dir = "{tmp_path}/blobs"

[[sources]]
id = "hq"
token = "{INGEST}"
servers = ["primary"]

[failover]
redirect_key = "redirect-Xn4Bv7Cm1Lk8Jh5Gf2Ds9Aq"
""" + SERVER.format(name="standby"))
    cfg.chmod(0o600)
    gw = RecoveryGateway(load_recovery_settings(cfg))
    client = TestClient(gw.app(), base_url="http://dr")
    body = b"Subject: hi\r\n\r\nhello\r\n"
    sha = hashlib.sha256(body).hexdigest()
    from mailrepl.shared.content.mime_split import whole_skeleton

    changes = (Change(kind=Kind.MSG_ADD, folder="INBOX", mid=1, sha256=sha, size=len(body), flags=(),
                      internaldate="2024-01-01T00:00:00+00:00"),
               Change(kind=Kind.MSG_FLAGS, folder="INBOX", mid=1, flags=("\\Seen",)))
    ok = encode_batch(Batch("hq", (Segment("primary", "alice", SeqRange(1, 2), changes),), {sha: whole_skeleton(body)}))
    r = client.post("/api/v1/ingest/batches", content=ok, headers=_ingest())
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "ok", r.text
    yield gw, client
    gw.store.dispose()


def _ingest() -> dict:
    return {"Authorization": f"Bearer {INGEST}", "Content-Type": MEDIA_TYPE}


def _admin() -> dict:
    return {"Authorization": f"Bearer {ADMIN}"}


def _state(gw) -> tuple:
    with gw.store.read() as s:
        return (s.scalar(select(func.count()).select_from(Replica)), s.scalar(select(func.count()).select_from(InboxRow)),
                tuple(s.execute(select(Replica.source_id, Replica.address, Replica.received_seq, Replica.site_state))))


def _raw(header) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">4sBB", MAGIC, 2, 0) + struct.pack(">I", len(head)) + head


def _header(**seg) -> dict:
    change = {"kind": "msg.flags", "folder": "INBOX", "mid": 1, "flags": ["\\Flagged"]}
    change.update(seg.pop("change", {}))
    segment = {"server": "primary", "address": "alice", "range": "3", "captured": [], "changes": [change]}
    segment.update(seg)
    return {"source": "hq", "segments": [segment], "messages": [], "parts": []}


BAD_HEADERS = {
    "range as int": _header(range=3),
    "range zero": _header(range="0"),
    "range reversed": _header(range="4-3"),
    "range beyond 2^63": _header(range=str(2**63)),
    "server as list": _header(server=["primary"]),
    "server empty": _header(server=""),
    "address empty": _header(address=""),
    "address with CR LF": _header(address="alice\r\nCRITICAL forged"),
    "address with NUL": _header(address="ali\0ce"),
    "address with C1": _header(address="ali\x85ce"),
    "folder with LF": _header(change={"folder": "IN\nBOX"}),
    "flags as numbers": _header(change={"flags": [1, 2]}),
    "flag with a space": _header(change={"flags": ["a b"]}),
    "mid -1": _header(change={"mid": -1}),
    "mid 2^80": _header(change={"mid": 2**80}),
    "mid as bool": _header(change={"mid": True}),
    "unknown kind": _header(change={"kind": "msg.explode"}),
    "unknown change key": _header(change={"evil": 1}),
    "two changes for one number": _header(changes=[{"kind": "folder.create", "folder": "A"}] * 2),
    "source empty": {**_header(), "source": ""},
    "segments not a list": {**_header(), "segments": {}},
    "header not an object": [1, 2],
    "part with a bad key": {**_header(), "parts": [{"key": "zz", "size": 1}]},
    "message size negative": {**_header(), "messages": [{"sha256": "0" * 64, "size": -1}]},
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_batch_headers_are_400_and_change_nothing(recovery, case):
    gw, client = recovery
    before = _state(gw)
    r = client.post("/api/v1/ingest/batches", content=_raw(BAD_HEADERS[case]), headers=_ingest())
    assert r.status_code == 400, (case, r.status_code, r.text)
    assert r.json()["detail"].startswith("malformed batch")
    assert _state(gw) == before


def test_deeply_nested_header_and_non_json_are_400(recovery):
    gw, client = recovery
    before = _state(gw)
    for raw in (b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b'{"source": NaN}'):
        r = client.post("/api/v1/ingest/batches", content=_raw(raw), headers=_ingest())
        assert r.status_code == 400, r.text
    assert _state(gw) == before


BAD_JSON = [
    ("POST", "/api/v1/cutover", b'{"all": "yes", "server": "primary"}', 422),
    ("POST", "/api/v1/cutover", b'{"all": true, "server": 1e400}', 422),
    ("POST", "/api/v1/cutover", b'{"addresses": ["alice\\r\\nx"]}', 422),
    ("POST", "/api/v1/cutover", b'{"addresses": [NaN]}', 422),
    ("POST", "/api/v1/failback", b'{"addresses": ["alice"], "confirm": 1}', 422),
    ("POST", "/api/v1/cutover", b'{"addresses": ["' + b"a" * 70_000 + b'"]}', 413),
    ("POST", "/api/v1/cutover", b"[" * 30_000, 400),  # nested beyond reason: not parsed
]


@pytest.mark.parametrize("method,path,body,status", BAD_JSON)
def test_bad_admin_json_is_4xx_and_changes_nothing(recovery, method, path, body, status):
    gw, client = recovery
    before = _state(gw)
    r = client.request(method, path, content=body, headers={**_admin(), "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert _state(gw) == before


def test_peer_json_bounds(recovery):
    gw, client = recovery
    before = _state(gw)
    auth = {"Authorization": f"Bearer {INGEST}", "Content-Type": "application/json"}
    for path, body in (("/api/v1/ingest/rebase", b'{"source":"hq","server":"primary","address":"alice",'
                                                  b'"base_seq":1e400,"applied":0}'),
                       ("/api/v1/ingest/reverse", b'{"source":"hq","progress":[{"server":"primary","address":"alice",'
                                                   b'"received":-1,"applied":0}]}'),
                       ("/api/v1/ingest/resync", b'{"source":"hq","server":"primary","address":""}')):
        r = client.post(path, content=body, headers=auth)
        assert r.status_code == 422, (path, r.text)
    assert _state(gw) == before


def test_door_refusals(recovery):
    gw, client = recovery
    before = _state(gw)
    r = client.post("/api/v1/cutover", json={"all": True, "server": "primary"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/api/v1/cutover", content=b"all=1", headers={**_admin(), "Content-Type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/api/v1/ingest/batches", content=b"MRPL", headers={**_ingest(), "Content-Type": "application/json"})
    assert r.status_code == 415
    r = client.get("/api/v1/mailboxes", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert _state(gw) == before


def test_a_store_failure_is_a_generic_503_with_retry_after(recovery, tmp_path):
    gw, client = recovery
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        db.execute("ALTER TABLE replica RENAME TO replica_gone")
    r = client.get("/api/v1/mailboxes", headers=_admin())
    assert r.status_code == 503, r.text
    assert 1 <= int(r.headers["retry-after"]) <= 60
    text = r.text.lower()
    assert "select" not in text and "replica" not in text and "sqlite" not in text


def test_source_gateway_refuses_non_boolean_protection(tmp_path):
    cfg = tmp_path / "source.toml"
    cfg.write_text(f"""
[gateway]
id = "hq"
state_url = "sqlite:///{tmp_path}/s.sqlite"
admin_token = "{ADMIN}"
plaintext = true

[peer]
url = "http://127.0.0.1:9"
token = "{INGEST}"
""" + SERVER.format(name="primary"))
    cfg.chmod(0o600)
    gw = SourceGateway(load_source_settings(cfg))
    client = TestClient(gw.app(), base_url="http://hq")
    try:
        for body in (b'{"enabled": "yes"}', b'{"enabled": 1}', b'{"enabled": 1e400}', b'{"enabled": NaN}'):
            r = client.put("/api/v1/mailboxes/alice/protection", content=body,
                           headers={**_admin(), "Content-Type": "application/json"})
            assert r.status_code == 422, (body, r.text)
        with gw.store.read() as s:
            assert not s.scalar(select(func.count()).select_from(Mailbox).where(Mailbox.protected.is_(True)))
    finally:
        gw.store.dispose()
