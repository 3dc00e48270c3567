"""Alerts end to end: both gateways over real Dovecot servers send their alerts to real webhook
receivers (which answer 500 to each first attempt), and the Prometheus rules in
``deploy/prometheus/`` are checked (``promtool`` when installed) and their expressions run
against the gateways' real ``/metrics``.

The recovery gateway goes away: the source's copy queue, lag and error alarms fire; it comes
back: they resolve. A message too large for the standby: rejected-messages on both sides. A
cutover: a site-state event on both sides, with who asked on the recovery side.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import yaml

from mailrepl.shared.alerts.webhook import verify_signature
from tests.support.gateways import ADMIN_TOKEN, GatewayPair
from tests.support.promql import evaluate, parse_metrics
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.dovecot]

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "mailrepl-alerts.yml"
SECRET = "hook-secret-Zx1Cv2Bn3Mq4Wr5Et6Yu7Io8"
LAG, QUEUE = 3, 3


def small(i: int, tag: str = "m") -> bytes:
    return f"Subject: {tag} {i}\r\nMessage-ID: <{tag}{i}@x>\r\n\r\nbody {i}\r\n".encode()


def alerts_table(url: str) -> str:
    return (f'\n[alerts]\nwebhook_url = "{url}"\nwebhook_secret = "{SECRET}"\ninterval = 0.3\n'
            f"lag_seconds = {LAG}\ncopy_queue = {QUEUE}\nwebhook_retry_initial = 0.2\n")


def scrape(gw) -> dict:
    r = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    r.raise_for_status()
    return parse_metrics(r.text, {"job": f"mailrepl-{gw.role}", "instance": gw.url})


def rules() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    out = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in ("info", "warning", "critical")
            assert rule["annotations"]["summary"]
            out[rule["alert"]] = rule["expr"]
    return out


def fires(expr: str, now: dict, before: dict | None = None, label: str = "address") -> set[str]:
    """The values of ``label`` (else of role, else "?") of the series an alert expression fires for."""
    value = evaluate(expr, now, before)
    assert isinstance(value, dict), expr
    return {dict(k).get(label) or dict(k).get("role") or "?" for k in value}


def with_thresholds(expr: str) -> str:
    """The expression with the test gateways' thresholds in place of the defaults."""
    return re.sub(r"> 10000\b", f"> {QUEUE}", re.sub(r"> 300\b", f"> {LAG}", expr))


def test_alerts_reach_the_webhooks_and_the_rules_fire(dovecot_factory, tmp_path):
    if shutil.which("promtool"):
        subprocess.run(["promtool", "check", "rules", str(RULES)], check=True)
    primary = dovecot_factory("primary", ["alice", "bob"])
    standby = dovecot_factory("standby", ["alice", "bob"], max_mail_size="1M")
    src_hook, rec_hook = WebhookReceiver(fail_first=True), WebhookReceiver(fail_first=True)
    for u in ("alice", "bob"):
        primary.deliver_many(u, [small(i) for i in range(5)])
    pair = GatewayPair(tmp_path, primary, standby, users=["alice", "bob"],
                       source_state=f"sqlite:///{tmp_path}/s.sqlite", recovery_state=f"sqlite:///{tmp_path}/r.sqlite",
                       source_gateway_extra=alerts_table(src_hook.url),
                       recovery_gateway_extra=alerts_table(rec_hook.url))
    expr = rules()
    pair.start()
    try:
        pair.protect("alice", "bob")
        pair.wait_synced(["alice", "bob"])
        time.sleep(1.0)
        src_before, rec_before = scrape(pair.source), scrape(pair.recovery)
        for name, e in expr.items():  # every rule reads against the real metrics
            evaluate(e, src_before, src_before), evaluate(e, rec_before, rec_before)
        assert not fires(expr["MailreplMailboxError"], src_before)

        # the recovery gateway goes away: copy queue, lag and an error on the source
        pair.recovery.stop()
        mark = time.time()
        primary.deliver_many("alice", [small(i, "late") for i in range(QUEUE + 2)])
        for kind in ("copy-queue", "lag", "mailbox-error"):
            src_hook.wait(lambda j, k=kind: j["kind"] == k and j["address"] == "alice" and j["state"] == "firing",
                          45, f"{kind} from the source gateway")
        now = scrape(pair.source)
        assert fires(expr["MailreplMailboxError"], now) == {"alice"}
        assert fires(with_thresholds(expr["MailreplCopyQueueHigh"]), now) == {"alice"}
        assert fires(with_thresholds(expr["MailreplLagHigh"]), now) == {"alice"}
        assert not fires(expr["MailreplCopyQueueHigh"], now)  # under the production threshold
        assert {"mailbox-error", "copy-queue", "lag"} <= fires(expr["MailreplAlarm"], now, label="kind")

        # it comes back: the alarms resolve
        pair.recovery.start()
        pair.wait_synced(["alice", "bob"])
        for kind in ("copy-queue", "lag", "mailbox-error"):
            src_hook.wait(lambda j, k=kind: j["kind"] == k and j["state"] == "resolved", 30, f"{kind} resolved")

        # a message the standby refuses
        big = b"Subject: too big\r\nMessage-ID: <big@x>\r\n\r\n" + os.urandom(700_000).hex().encode() + b"\r\n"
        primary.deliver("bob", big)
        rec_hook.wait(lambda j: j["kind"] == "rejected-messages" and j["address"] == "bob", 45, "rejected at DR")
        src_hook.wait(lambda j: j["kind"] == "rejected-messages" and j["address"] == "bob", 45, "rejected at source")

        # a cutover
        with pair.recovery.api() as c:
            r = c.post("/api/v1/cutover", json={"addresses": ["alice"]})
            assert r.status_code == 200, r.text
        ev = rec_hook.wait(lambda j: j["kind"] == "site-state" and j["address"] == "alice"
                           and "active-at-dr" in j["message"], 30, "the cutover at DR")
        assert "by admin" in ev[-1].json["message"] and ev[-1].json["state"] == "event"
        src_hook.wait(lambda j: j["kind"] == "site-state" and j["address"] == "alice"
                      and j["message"].endswith("-> active-at-dr"), 30, "the cutover seen by the source")
        time.sleep(1.0)
        rec_now = scrape(pair.recovery)
        assert fires(expr["MailreplSiteStateChanged"], rec_now, rec_before, label="kind") == {"site-state"}
        assert fires(expr["MailreplMailboxesAtDR"], rec_now) == {"recovery"}
        assert fires(expr["MailreplRejectedMessages"], rec_now, rec_before) == {"bob"}
        assert not fires(expr["MailreplAutomaticFailover"], rec_now, rec_before)
        assert not fires(expr["MailreplCertificateExpiry"], rec_now)  # plain HTTP: no certificate
        up = {frozenset({("__name__", "up"), ("job", "mailrepl-recovery")}): 1.0}
        assert not fires(expr["MailreplGatewayDown"], up)
        assert fires(expr["MailreplGatewayDown"], {k: 0.0 for k in up}) == {"?"}
    finally:
        pair.stop()
        src_hook.close()
        rec_hook.close()

    for hook in (src_hook, rec_hook):
        attempts: dict[str, list[int]] = {}
        for d in hook.deliveries:
            attempts.setdefault(d.headers["x-mailrepl-alert-id"], []).append(d.status)
            assert verify_signature(SECRET, d.headers["x-mailrepl-timestamp"], d.body, d.headers["x-mailrepl-signature"])
        # each alert reached the receiver once, after its retry on the 500
        assert attempts and all(v == [500, 200] for v in attempts.values()), attempts
        keys = [(d.json["kind"], d.json["address"], d.json["state"], d.json["message"]) for d in hook.accepted()
                if d.json["kind"] in ("site-state", "mailbox-error")]
        assert len(keys) == len(set(keys)), keys  # no alert sent twice
    # while the recovery gateway was away: one copy-queue alert for alice (seeding may have had its own before)
    after = datetime.fromtimestamp(mark - 1, timezone.utc)
    late = [d.json for d in src_hook.accepted() if d.json["kind"] == "copy-queue" and d.json["state"] == "firing"
            and d.json["address"] == "alice" and datetime.fromisoformat(d.json["since"]) >= after]
    assert len(late) == 1, late
