"""Admin roles on both gateways: tokens with roles, per-route authorisation, the audit log.

Real gateways built from TOML configs and served over real sockets (``tests.unit.test_cli.Site``:
a source gateway shipping to a recovery gateway; only the mail servers are in-memory). Every
admin route of both gateways is called without a token, with a wrong one, with each role below
the one it needs (state compared before and after: nothing changed) and with the role it needs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sqlite3

import httpx
import pytest

from tests.unit.test_cli import TOKEN, Site, cli, eventually, table_row

ROLES = ("viewer", "operator", "admin")


@pytest.fixture
def site(tmp_path, monkeypatch):
    s = Site(tmp_path, monkeypatch)
    try:
        yield s
    finally:
        s.stop()


def client(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def call(url: str, token: str | None, method: str, path: str, body=None, params=None) -> httpx.Response:
    with client(url, token) as c:
        return c.request(method, path, json=body, params=params)


def make_tokens(url: str) -> dict[str, str]:
    """One stored token per role, created with the config's bootstrap token (role admin)."""
    out = {}
    for role in ROLES:
        r = call(url, TOKEN, "POST", "/api/v1/tokens", {"name": f"{role}-t", "role": role})
        assert r.status_code == 201, r.text
        assert r.json()["role"] == role and r.json()["created_by"] == "config:admin_token"
        out[role] = r.json()["token"]
    return out


def check_route(url: str, tokens: dict[str, str], method: str, path: str, need: str, expect: int, *,
                body=None, params=None, state=lambda: None) -> httpx.Response:
    """401 without or with a wrong token, 403 below ``need`` (state unchanged), ``expect`` with ``need``."""
    before = state()
    for token in (None, "wrong-token", "mrt_" + "x" * 43):
        r = call(url, token, method, path, body, params)
        assert r.status_code == 401, (method, path, token, r.status_code, r.text)
        assert r.headers.get("www-authenticate") == "Bearer"
    for role in ROLES[: ROLES.index(need)]:
        r = call(url, tokens[role], method, path, body, params)
        assert r.status_code == 403, (method, path, role, r.status_code, r.text)
        assert f"needs {need!r}" in r.json()["detail"]
    assert state() == before, f"{method} {path}: a refused call changed state"
    r = call(url, tokens[need], method, path, body, params)
    assert r.status_code == expect, (method, path, need, r.status_code, r.text)
    return r


def protection(site: Site) -> dict[str, bool]:
    return {a: m["protected"] for a, m in site.statuses().items()}


def token_names(url: str) -> list[tuple[str, str | None]]:
    return [(t["name"], t["revoked_at"]) for t in call(url, TOKEN, "GET", "/api/v1/tokens").json()["tokens"]]


def ops_routes(url: str, tokens: dict[str, str]) -> None:
    """/metrics and the API docs: a viewer token is enough, none is not."""
    assert "mailrepl_" in check_route(url, tokens, "GET", "/metrics", "viewer", 200).text
    doc = check_route(url, tokens, "GET", "/openapi.json", "viewer", 200).json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path in ("/docs", "/redoc"):
        assert "/openapi.json" in check_route(url, tokens, "GET", path, "viewer", 200).text
    assert call(url, None, "GET", "/healthz").status_code == 200  # liveness probes stay open


def security_routes(url: str, tokens: dict[str, str]) -> None:
    names = lambda: token_names(url)  # noqa: E731
    r = check_route(url, tokens, "POST", "/api/v1/tokens", "admin", 201, body={"name": "made", "role": "viewer"},
                    state=names)
    assert r.json()["created_by"] == "admin-t" and r.json()["token"].startswith("mrt_")
    listed = check_route(url, tokens, "GET", "/api/v1/tokens", "admin", 200).json()["tokens"]
    assert {t["name"]: t["role"] for t in listed} == {"admin-t": "admin", "made": "viewer", "operator-t": "operator",
                                                      "viewer-t": "viewer"}
    assert all("token" not in t and "hash" not in t for t in listed)
    r = check_route(url, tokens, "DELETE", "/api/v1/tokens/made", "admin", 200, state=names)
    assert r.json()["revoked_at"] is not None
    check_route(url, tokens, "GET", "/api/v1/audit", "admin", 200)


def test_every_admin_route_of_the_source_gateway_needs_its_role(site):
    url = site.url
    tokens = make_tokens(url)
    state = lambda: protection(site)  # noqa: E731
    assert len(check_route(url, tokens, "GET", "/api/v1/mailboxes", "viewer", 200).json()["mailboxes"]) == 4
    assert check_route(url, tokens, "GET", "/api/v1/mailboxes/alice", "viewer", 200).json()["address"] == "alice"
    r = check_route(url, tokens, "PUT", "/api/v1/mailboxes/carol/protection", "operator", 200,
                    body={"enabled": True}, state=state)
    assert r.json()["protected"] is True and protection(site)["carol"] is True
    r = check_route(url, tokens, "PUT", "/api/v1/servers/primary/protection", "operator", 200,
                    body={"enabled": False}, state=state)
    assert protection(site) == {"alice": False, "bob": False, "carol": False, "erin": False}
    job = check_route(url, tokens, "POST", "/api/v1/verify", "operator", 202, body={"addresses": ["alice"]}).json()["job"]
    assert check_route(url, tokens, "GET", f"/api/v1/verify/{job}", "viewer", 200).json()["job"] == job
    ops_routes(url, tokens)
    security_routes(url, tokens)


def test_every_admin_route_of_the_recovery_gateway_needs_its_role(site):
    assert call(site.url, TOKEN, "PUT", "/api/v1/mailboxes/alice/protection", {"enabled": True}).status_code == 200
    url = site.recovery_url
    eventually(lambda: call(url, TOKEN, "GET", "/api/v1/mailboxes/alice").status_code == 200)
    tokens = make_tokens(url)

    def site_state() -> str:
        return call(url, TOKEN, "GET", "/api/v1/mailboxes/alice").json()["site_state"]

    assert [m["address"] for m in check_route(url, tokens, "GET", "/api/v1/mailboxes", "viewer", 200)
            .json()["mailboxes"]] == ["alice"]
    check_route(url, tokens, "GET", "/api/v1/mailboxes/alice", "viewer", 200)
    assert check_route(url, tokens, "GET", "/api/v1/failover", "viewer", 200).json()["auto"] is False
    check_route(url, tokens, "POST", "/api/v1/gc", "operator", 200, params={"grace_seconds": 0})
    assert check_route(url, tokens, "GET", "/api/v1/history", "viewer", 200).json() == {"mailboxes": []}
    check_route(url, tokens, "POST", "/api/v1/history/maintain", "operator", 200)
    r = check_route(url, tokens, "POST", "/api/v1/cutover", "operator", 200, body={"addresses": ["alice"]},
                    state=site_state)
    assert r.json()["results"][0]["state"] == "active-at-dr" and site_state() == "active-at-dr"
    r = check_route(url, tokens, "POST", "/api/v1/failback", "operator", 200, body={"addresses": ["alice"]},
                    state=site_state)
    assert r.json()["results"][0]["state"] == "failing-back"
    ops_routes(url, tokens)
    security_routes(url, tokens)
    # the ingest routes are not admin routes: an admin token is not a source's credential
    assert call(url, TOKEN, "GET", "/api/v1/ingest/progress", params={"source": "hq"}).status_code == 401


def test_a_created_token_works_until_revoked_and_its_name_can_be_reused(site):
    url = site.url
    r = call(url, TOKEN, "POST", "/api/v1/tokens", {"name": "ops", "role": "operator"})
    first = r.json()["token"]
    assert call(url, first, "PUT", "/api/v1/mailboxes/bob/protection", {"enabled": True}).status_code == 200
    # a live name is not given twice; bad names and roles are refused
    assert call(url, TOKEN, "POST", "/api/v1/tokens", {"name": "ops", "role": "viewer"}).status_code == 409
    for bad in ({"name": "a b", "role": "viewer"}, {"name": "x", "role": "root"}, {"name": "config:admin_token",
                                                                                   "role": "admin"}, {"name": "x"}):
        assert call(url, TOKEN, "POST", "/api/v1/tokens", bad).status_code == 422, bad
    assert call(url, TOKEN, "DELETE", "/api/v1/tokens/ops").status_code == 200
    assert call(url, first, "GET", "/api/v1/mailboxes").status_code == 401
    assert call(url, TOKEN, "DELETE", "/api/v1/tokens/nobody").status_code == 404
    # the name again, a new secret; the revoked one stays refused
    second = call(url, TOKEN, "POST", "/api/v1/tokens", {"name": "ops", "role": "viewer"}).json()["token"]
    assert second != first
    assert call(url, second, "GET", "/api/v1/mailboxes").status_code == 200
    assert call(url, second, "PUT", "/api/v1/mailboxes/bob/protection", {"enabled": False}).status_code == 403
    assert call(url, first, "GET", "/api/v1/mailboxes").status_code == 401
    # tokens of one gateway are not tokens of the other
    assert call(site.recovery_url, second, "GET", "/api/v1/mailboxes").status_code == 401


def test_tokens_are_stored_as_their_hash_only(site, tmp_path):
    made = {role: call(site.url, TOKEN, "POST", "/api/v1/tokens", {"name": role, "role": role}).json()["token"]
            for role in ROLES}
    db = tmp_path / "state" / "source.sqlite"
    con = sqlite3.connect(db)
    try:
        rows = dict(con.execute("SELECT name, hash FROM api_token").fetchall())
        dump = "\n".join(con.iterdump())
    finally:
        con.close()
    assert rows == {role: hashlib.sha256(token.encode()).hexdigest() for role, token in made.items()}
    raw = b"".join(p.read_bytes() for p in db.parent.glob("source.sqlite*"))  # the file and its WAL
    for token in made.values():
        assert len(token) >= 40
        assert token not in dump and token.encode() not in raw
    assert TOKEN not in dump


def test_the_audit_log_records_every_change_and_refusal(site, caplog):
    caplog.set_level(logging.DEBUG)
    url = site.url
    tokens = make_tokens(url)
    call(url, tokens["viewer"], "PUT", "/api/v1/mailboxes/carol/protection", {"enabled": True})
    call(url, None, "PUT", "/api/v1/mailboxes/carol/protection", {"enabled": True})
    call(url, "guess", "GET", "/api/v1/mailboxes")
    call(url, tokens["operator"], "PUT", "/api/v1/mailboxes/carol/protection", {"enabled": True})
    call(url, tokens["operator"], "PUT", "/api/v1/mailboxes/nobody/protection", {"enabled": True}, {"server": "primary"})
    call(url, tokens["viewer"], "GET", "/api/v1/mailboxes")  # allowed reads are not audited
    call(url, tokens["admin"], "DELETE", "/api/v1/tokens/viewer-t")
    call(url, tokens["operator"], "GET", "/api/v1/audit")
    entries = call(url, tokens["admin"], "GET", "/api/v1/audit").json()["entries"]
    seen = [(e["principal"], e["role"], e["method"], e["path"], e["target"], e["status"]) for e in reversed(entries)]
    assert seen == [
        ("config:admin_token", "admin", "POST", "/api/v1/tokens", "name=viewer-t role=viewer", 201),
        ("config:admin_token", "admin", "POST", "/api/v1/tokens", "name=operator-t role=operator", 201),
        ("config:admin_token", "admin", "POST", "/api/v1/tokens", "name=admin-t role=admin", 201),
        ("viewer-t", "viewer", "PUT", "/api/v1/mailboxes/carol/protection", "enabled=True", 403),
        # refused before its body is read (the request guard): the target is not known
        (None, None, "PUT", "/api/v1/mailboxes/carol/protection", None, 401),
        (None, None, "GET", "/api/v1/mailboxes", None, 401),
        ("operator-t", "operator", "PUT", "/api/v1/mailboxes/carol/protection", "enabled=True", 200),
        ("operator-t", "operator", "PUT", "/api/v1/mailboxes/nobody/protection", "enabled=True server=primary", 404),
        ("admin-t", "admin", "DELETE", "/api/v1/tokens/viewer-t", None, 200),
        ("operator-t", "operator", "GET", "/api/v1/audit", None, 403),
    ]
    assert all(e["at"] for e in entries) and len({e["id"] for e in entries}) == len(entries)
    # limit and since
    assert [e["id"] for e in call(url, TOKEN, "GET", "/api/v1/audit", params={"limit": 2}).json()["entries"]] \
        == [e["id"] for e in call(url, TOKEN, "GET", "/api/v1/audit").json()["entries"][:2]]
    assert call(url, TOKEN, "GET", "/api/v1/audit", params={"since": "2999-01-01T00:00:00"}).json() == {"entries": []}
    assert call(url, TOKEN, "GET", "/api/v1/audit", params={"limit": 0}).status_code == 422
    # no token in any log line or audit entry
    secrets_ = [TOKEN, *tokens.values()]
    text = caplog.text + str(entries)
    assert "audit" in caplog.text and not any(s in text for s in secrets_)


def test_recovery_gateway_audits_cutover_and_gc(site):
    call(site.url, TOKEN, "PUT", "/api/v1/mailboxes/alice/protection", {"enabled": True})
    url = site.recovery_url
    eventually(lambda: call(url, TOKEN, "GET", "/api/v1/mailboxes/alice").status_code == 200)
    assert call(url, TOKEN, "POST", "/api/v1/cutover", {"addresses": ["alice"]}).status_code == 200
    assert call(url, TOKEN, "POST", "/api/v1/gc", params={"grace_seconds": 0}).status_code == 200
    assert call(url, None, "POST", "/api/v1/failback", {"addresses": ["alice"], "confirm": True}).status_code == 401
    entries = call(url, TOKEN, "GET", "/api/v1/audit").json()["entries"]
    assert [(e["principal"], e["path"], e["target"], e["status"]) for e in reversed(entries)] == [
        ("config:admin_token", "/api/v1/cutover", "addresses=alice", 200),
        ("config:admin_token", "/api/v1/gc", "grace_seconds=0", 200),
        (None, "/api/v1/failback", None, 401),  # refused before its body is read
    ]
    # ingest calls of the source gateway are not admin calls: none in the audit log
    assert not any(e["path"].startswith("/api/v1/ingest") for e in entries)


def test_metrics_and_docs_open_when_configured(site, tmp_path):
    from fastapi.testclient import TestClient

    import mailrepl.recovery.app
    from mailrepl.recovery.settings import load_recovery_settings

    conf = tmp_path / "open.toml"
    text = site_recovery_config(tmp_path)
    assert text.count("plaintext = true\n") == 1
    text = text.replace("plaintext = true\n", "plaintext = true\nmetrics_open = true\n")
    conf.write_text(text.replace("recovery.sqlite", "open.sqlite"))
    conf.chmod(0o600)
    app = mailrepl.recovery.app.RecoveryGateway(load_recovery_settings(conf, {})).app()
    c = TestClient(app)
    assert c.get("/metrics").status_code == 200  # open
    assert c.get("/openapi.json").status_code == 401  # docs stay gated
    assert c.get("/api/v1/mailboxes").status_code == 401
    conf.write_text(text.replace("recovery.sqlite", "open.sqlite").replace("metrics_open = true", "docs_open = true"))
    c = TestClient(mailrepl.recovery.app.RecoveryGateway(load_recovery_settings(conf, {})).app())
    assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200
    assert c.get("/metrics").status_code == 401


def site_recovery_config(tmp_path) -> str:
    return (tmp_path / "recovery.toml").read_text()


def test_tokens_and_audit_commands(site):
    created = site.cli("tokens", "create", "ops", "--role", "operator")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("mrt_") and "shown this once" in created.stdout
    # the new token works for what its role may, and is refused (exit 1, one line) for more
    as_ops = ("--url", site.url, "--token", token)
    assert cli("protect", "bob", *as_ops).returncode == 0
    refused = cli("tokens", "list", *as_ops)
    assert refused.returncode == 1 and "HTTP 403" in refused.stderr and "needs 'admin'" in refused.stderr
    listed = site.cli("tokens", "list")
    assert listed.returncode == 0, listed.stderr
    row = table_row(listed.stdout, "ops")
    assert (row[1], row[3], row[4]) == ("operator", "config:admin_token", "")
    assert token not in listed.stdout
    assert site.cli("tokens", "revoke", "ops").returncode == 0
    gone = cli("status", *as_ops)
    assert gone.returncode == 1 and "refused the admin token" in gone.stderr
    audit = site.cli("audit", "--json")
    assert audit.returncode == 0
    paths = [(e["method"], e["path"], e["status"]) for e in json.loads(audit.stdout)["entries"]]
    assert ("PUT", "/api/v1/mailboxes/bob/protection", 200) in paths and ("GET", "/api/v1/tokens", 403) in paths
    assert token not in audit.stdout
    # --recovery: the same commands against the recovery gateway
    rec = ("--url", site.recovery_url, "--token", TOKEN, "--recovery")
    made = cli("tokens", "create", "dr-viewer", "--role", "viewer", *rec)
    assert made.returncode == 0, made.stderr
    assert call(site.recovery_url, made.stdout.strip().splitlines()[-1], "GET", "/api/v1/mailboxes").status_code == 200
    assert "dr-viewer" in cli("tokens", "list", *rec).stdout
    assert "dr-viewer" not in site.cli("tokens", "list").stdout
