"""The console's server side in process: sign-in, cookies, CSRF, forwarding to the API as the
session's token (and nothing else), the paged status views, sessions expiring."""
from __future__ import annotations

import re

import pytest
from fastapi import APIRouter, Depends
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from mailrepl.shared.config.alerts_settings import AlertSettings
from mailrepl.shared.console.mount import mount_console
from mailrepl.shared.console.sessions import SessionStore
from mailrepl.shared.runtime.api_common import MailboxStatus, make_app
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.runtime.guard import BodyRule, GuardPolicy
from mailrepl.shared.runtime.principals import Principal

ADMIN = "admin-token-Qw1Er2Ty3Ui4Op5As6Df7Gh8"
VIEWER = "mrt_viewer-token-Zx1Cv2Bn3Mq4Wr5Et6Yu7"


def resolver(token, _cert):
    return {ADMIN: Principal("config:admin_token", "admin"), VIEWER: Principal("viewer1", "viewer")}.get(token)


def statuses(n: int = 120) -> list[MailboxStatus]:
    return [MailboxStatus(address=f"user{i:03d}@example.org", server="a" if i % 2 else "b", protected=i % 3 != 0,
                          phase="error" if i % 10 == 0 else "replicating", active_site="dr" if i % 7 == 0 else "primary",
                          copy_queue=i, replay_queue=1000 - i, lag_seconds=float(i % 13), last_captured_seq=i,
                          last_applied_seq=0, error="boom" if i % 10 == 0 else None, rejected=0,
                          site_state="active-at-dr" if i % 7 == 0 else "replicating")
            for i in range(n)]


def app_with_console(secure: bool = False):
    authz = Authorizer(resolver)
    app = make_app("t", CollectorRegistry(), lambda: {}, authz=authz,
                   guard=GuardPolicy(resolver=resolver, default=BodyRule(65536)))
    acted = []
    r = APIRouter(prefix="/api/v1")

    @r.post("/act")
    def act(p: Principal = Depends(authz.require("operator"))) -> dict:
        acted.append(p.name)
        return {"by": p.name}

    app.include_router(r)
    data = statuses()
    mount_console(app, role="source", gateway_id="hq", resolver=resolver, authz=authz, statuses=lambda: data,
                  metrics=CollectorRegistry(), alerts=AlertSettings(interval=60), actions=("protect",), secure=secure)
    return app, acted


def sign_in(c: TestClient, token: str):
    page = c.get("/ui/login")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return c.post("/ui/login", data={"token": token, "csrf": csrf}, follow_redirects=False)


def test_sign_in_sets_a_strict_httponly_session_cookie():
    app, _ = app_with_console(secure=True)
    with TestClient(app, base_url="https://gw.example.org") as c:
        page = c.get("/ui/login")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        login_cookie = page.headers["set-cookie"]
        assert all(x in login_cookie for x in ("HttpOnly", "SameSite=Strict", "Path=/ui/login", "Secure"))
        r = sign_in(c, ADMIN)
        assert r.status_code == 303 and r.headers["location"] == "/ui/"
        cookie = [v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("mailrepl_session=")][0]
        assert all(x in cookie for x in ("HttpOnly", "SameSite=Strict", "Path=/ui", "Secure")), cookie
        assert ADMIN not in cookie
        who = c.get("/ui/session").json()
        assert who["role"] == "admin" and who["gateway_role"] == "source" and who["actions"] == ["protect"]
        assert c.get("/ui/").status_code == 200


def test_no_secure_flag_over_plain_http_and_a_wrong_token_is_refused():
    app, _ = app_with_console(secure=False)
    with TestClient(app) as c:
        r = sign_in(c, "mrt_wrong-token-xxxxxxxxxxxxxxxxxxxxxxxx")
        assert r.status_code == 401 and "not accepted" in r.text and "mailrepl_session" not in r.cookies
        r = sign_in(c, VIEWER)
        assert r.status_code == 303 and "Secure" not in r.headers["set-cookie"]


def test_sign_in_needs_the_form_csrf_and_a_small_body():
    app, _ = app_with_console()
    with TestClient(app) as c:
        assert c.post("/ui/login", data={"token": ADMIN, "csrf": "x"}).status_code == 403
        c.get("/ui/login")
        assert c.post("/ui/login", data={"token": ADMIN, "csrf": "not-the-cookie"}).status_code == 403
        big = c.post("/ui/login", content=b"token=" + b"a" * 5000, headers={"content-type": "application/x-www-form-urlencoded"})
        assert big.status_code == 413
        assert c.post("/ui/login", json={"token": ADMIN}).status_code in (400, 413)
        assert c.get("/ui/session").status_code == 401


def test_actions_go_through_the_api_as_the_session_and_need_csrf():
    app, acted = app_with_console()
    with TestClient(app) as c:
        sign_in(c, VIEWER)
        csrf = c.get("/ui/session").json()["csrf"]
        # the browser's own Authorization header is dropped: a viewer session stays a viewer
        r = c.post("/ui/api/act", headers={"X-CSRF-Token": csrf, "Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 403 and acted == []
        c.cookies.clear()
        sign_in(c, ADMIN)
        csrf = c.get("/ui/session").json()["csrf"]
        assert c.post("/ui/api/act").status_code == 403  # no CSRF token
        assert c.post("/ui/api/act", headers={"X-CSRF-Token": csrf + "x"}).status_code == 403
        assert c.post("/ui/api/act", headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}).status_code == 403
        assert acted == []
        r = c.post("/ui/api/act", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200 and r.json() == {"by": "config:admin_token"} and acted == ["config:admin_token"]
        # only /api/v1/...: no way out of it
        for path in ("/ui/api/%2e%2e/metrics", "/ui/api/a/%2e%2e/%2e%2e/healthz", "/ui/api/a//b", "/ui/api/a%5cb",
                     "/ui/api/x%0ay"):
            assert c.get(path).status_code in (404, 405), path
        assert c.get("/ui/static/../console.py").status_code == 404
        # sign-out needs the CSRF token too, then the session is gone
        assert c.post("/ui/logout").status_code == 403
        assert c.post("/ui/logout", headers={"X-CSRF-Token": csrf}, follow_redirects=False).status_code == 303
        assert c.get("/ui/api/overview").status_code == 401


def test_mailbox_search_pages_filters_and_sorts_on_the_server():
    app, _ = app_with_console()
    with TestClient(app) as c:
        sign_in(c, VIEWER)
        p = c.get("/ui/api/mailbox-search", params={"limit": 25, "offset": 50}).json()
        assert p["total"] == 120 and len(p["mailboxes"]) == 25
        assert [m["address"] for m in p["mailboxes"]] == [f"user{i:03d}@example.org" for i in range(50, 75)]
        assert p["servers"] == ["a", "b"]
        p = c.get("/ui/api/mailbox-search", params={"sort": "lag", "order": "desc", "limit": 5}).json()
        assert [m["lag_seconds"] for m in p["mailboxes"]] == [12.0] * 5
        p = c.get("/ui/api/mailbox-search", params={"sort": "queue", "order": "desc", "limit": 1}).json()
        assert p["mailboxes"][0]["address"] == "user000@example.org"  # copy + replay = 1000 for all: address order
        p = c.get("/ui/api/mailbox-search", params={"error": "true", "server": "b", "limit": 500}).json()
        assert p["total"] == 12 and all(m["error"] and m["server"] == "b" for m in p["mailboxes"])
        p = c.get("/ui/api/mailbox-search", params={"site": "dr", "protected": "false", "q": "USER0"}).json()
        assert {m["address"] for m in p["mailboxes"]} == {f"user{i:03d}@example.org" for i in range(100) if i % 21 == 0}
        assert c.get("/ui/api/mailbox-search", params={"limit": 501}).status_code == 422
        assert c.get("/ui/api/mailbox-search", params={"sort": "nope"}).status_code == 422
        o = c.get("/ui/api/overview").json()
        assert o["total"] == 120 and o["by_phase"] == {"error": 12, "replicating": 108}
        assert o["copy_queue"] == sum(range(120)) and len(o["worst_lags"]) == 10
        assert {a["kind"] for a in o["alarms"]} <= {"mailbox-error"}


def test_sessions_expire_and_are_bounded():
    now = [0.0]
    store = SessionStore(idle_seconds=10, max_seconds=100, max_sessions=2, clock=lambda: now[0])
    a = store.create("t1", "a", "viewer")
    now[0] = 9
    assert store.get(a.id) is a
    now[0] = 18
    assert store.get(a.id) is a  # used 9 s ago
    now[0] = 29
    assert store.get(a.id) is None  # idle for 11 s
    b, c, d = (store.create(f"t{i}", "x", "viewer") for i in range(3))
    assert store.get(b.id) is None and store.get(c.id) is c and store.get(d.id) is d and len(store) == 2
    for t in range(30, 140, 9):
        now[0] = t
        store.get(c.id)
    assert store.get(c.id) is None  # 100 s in all
    assert store.get("x" * 500) is None and not c.csrf_ok(None) and not c.csrf_ok("")


@pytest.mark.parametrize("path", ["/ui/static/console.js", "/ui/static/console.css"])
def test_static_files_come_from_the_package(path):
    app, _ = app_with_console()
    with TestClient(app) as c:
        r = c.get(path)
        assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff" and len(r.content) > 1000
        assert b"http://" not in r.content.replace(b"http://www.w3.org/2000/svg", b"")  # nothing from elsewhere


def test_the_snapshot_is_answered_at_once_and_reloaded_in_the_background():
    import threading
    import time as _time

    from mailrepl.shared.console.snapshot import Snapshot

    now = [0.0]
    loads: list[int] = []
    gate = threading.Event()

    def load():
        loads.append(1)
        if len(loads) > 1:
            gate.wait(5)  # a slow listing
        return [len(loads)]

    snap = Snapshot(load, ttl=1.0, clock=lambda: now[0])
    assert snap.get() == [1] and snap.taken_at is not None
    now[0] = 0.5
    assert snap.get() == [1] and len(loads) == 1  # fresh enough
    now[0] = 2.0
    started = _time.monotonic()
    assert snap.get() == [1] and snap.get() == [1]  # stale: answered at once, one reload started
    assert _time.monotonic() - started < 1.0
    gate.set()
    deadline = _time.monotonic() + 5
    while snap.get() != [2] and _time.monotonic() < deadline:
        _time.sleep(0.01)
    assert snap.get() == [2] and len(loads) == 2
    assert snap.fresh() == [3]
