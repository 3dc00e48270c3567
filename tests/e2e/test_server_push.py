"""Server-side push: Dovecot's push_notification plugin (deploy/dovecot/mailrepl-push.lua) posts
to the source gateway after a change, which starts that mailbox's capture at once. The gateway
here polls every 10 minutes and holds no IMAP push connection, so only the server's push can
bring the change to the standby within the test."""
from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.dovecot import push_plugin_config
from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.net import eventually, free_port

pytestmark = [pytest.mark.dovecot]



def message(i: int) -> bytes:
    return (f"From: a@example.org\r\nTo: bob@example.org\r\nSubject: p{i}\r\nMessage-ID: <p{i}@example.org>\r\n"
            f"Date: Sun, 6 Dec 2026 10:00:00 +0000\r\n\r\npushed {i}\r\n").encode()


def pushes(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    return {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
            if line.startswith("mailrepl_source_push_wakeups_total{")}


def test_a_change_pushed_by_the_server_is_captured_without_polling(dovecot_factory, tmp_path):
    users = ["alice", "bob"]
    script_dir = Path(tempfile.mkdtemp(prefix="mailrepl-push-"))
    port = free_port()
    push = push_plugin_config(script_dir, f"http://127.0.0.1:{port}/api/v1/push/primary", ADMIN_TOKEN)
    try:
        primary = dovecot_factory("primary", users, extra_config=push)
        standby = dovecot_factory("standby", users)
        primary.deliver("bob", message(0))  # the gateway is not up yet: the post fails, delivery does not
        pair = GatewayPair(tmp_path, primary, standby, users=users, source_state=f"sqlite:///{tmp_path}/s.sqlite",
                           recovery_state=f"sqlite:///{tmp_path}/r.sqlite", poll_interval=600.0,
                           source_gateway_extra="idle_poll_max = 600.0\n", server_extra="push_connections = 0\n",
                           source_port=port)
        pair.start()
        try:
            pair.protect("alice", "bob")
            pair.wait_synced(users, timeout=120)
            seq = pair.status()["bob"]["last_captured_seq"]
            before = pushes(pair.source.url)
            primary.deliver("bob", message(1))
            st = eventually(lambda: (s := pair.status()["bob"])["last_applied_seq"] > seq and s, timeout=60,
                            what="the pushed change applied on the standby")
            assert st["error"] is None
            after = pushes(pair.source.url)
            assert after["woken"] > before.get("woken", 0)
            # a user the gateway does not protect is ignored; no token, no wake-up
            r = httpx.post(pair.source.url + "/api/v1/push/primary", json={"user": "carol"},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
            assert r.status_code == 200 and r.json() == {"woken": False}
            assert httpx.post(pair.source.url + "/api/v1/push/primary", json={"user": "bob"}, timeout=10).status_code == 401
            bad = httpx.post(pair.source.url + "/api/v1/push/primary", json={"user": "bob\r\nx"},
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
            assert bad.status_code == 422
        finally:
            pair.stop()
    finally:
        shutil.rmtree(script_dir, ignore_errors=True)


def test_a_gateway_that_does_not_answer_costs_an_imap_session_one_timeout(dovecot_factory):
    """A gateway that takes the connection and never answers: the post gives up after the
    configured timeout, and the same IMAP session then posts nothing for a while (its changes
    wait once, not at every change); mail and changes go through regardless."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(50)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # take every connection, answer nothing
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    script_dir = Path(tempfile.mkdtemp(prefix="mailrepl-push-"))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/api/v1/push/primary"
    try:
        primary = dovecot_factory("primary", ["bob"],
                                  extra_config=push_plugin_config(script_dir, url, ADMIN_TOKEN,
                                                                 "  mailrepl_push_timeout_msecs = 300\n"))
        primary.deliver("bob", message(0))
        primary.deliver("bob", message(1))
        imap = primary.imap("bob")
        try:
            imap.select("INBOX")
            for i in range(6):
                typ, _ = imap.store("1:2", "+FLAGS", f"(k{i})")
                assert typ == "OK"
            typ, data = imap.fetch("1:2", "(FLAGS)")
            assert typ == "OK" and all(b"k5" in d for d in data), data
        finally:
            imap.logout()
        timed_out = "mailrepl push: no answer from the gateway within 300 ms"
        log = eventually(lambda: (t := primary.log_path.read_text()).count(timed_out) >= 3 and t, timeout=10,
                         what="the push script's warnings in Dovecot's log")
        warned = [line for line in log.splitlines() if timed_out in line]
        # each LMTP delivery loads the script anew: each waited its timeout and said so
        assert len([w for w in warned if "lmtp(" in w]) == 2, warned
        # the IMAP session's six changes: one post timed out, the next five were not attempted
        assert len([w for w in warned if "imap(" in w]) == 1, warned
    finally:
        stop.set()
        thread.join(5)
        for c in held:
            c.close()
        listener.close()
        shutil.rmtree(script_dir, ignore_errors=True)
