"""Alerts: every event kind reaches a real webhook receiver once (and again after its retry on
a 500), signed; alarms resolve; Alertmanager's format; mail to admins and the notice to a user
who was moved; the [alerts] settings. The mailbox statuses are the API's own status model."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailrepl.shared.alerts.certs import expiry_producer
from mailrepl.shared.alerts.mail import MailSender
from mailrepl.shared.alerts.model import Alarm, Alert
from mailrepl.shared.alerts.monitor import AlertMonitor
from mailrepl.shared.alerts.rules import SiteChange, Thresholds
from mailrepl.shared.alerts.webhook import WebhookSender, payload, sign, verify_signature
from mailrepl.shared.config.alerts_settings import read_alerts
from mailrepl.shared.config.toml_reader import open_config
from mailrepl.shared.errors import ConfigError
from mailrepl.shared.runtime.api_common import MailboxStatus
from tests.support.smtp_sink import SmtpSink
from tests.support.webhook_receiver import WebhookReceiver

SECRET = "hook-secret-Aq1Sw2De3Fr4Gt5Hy6Ju7Ki8"


def status(address: str, **kw) -> MailboxStatus:
    base = dict(address=address, server="primary", protected=True, phase="replicating", active_site="primary",
                copy_queue=0, replay_queue=0, lag_seconds=0.0, last_captured_seq=10, last_applied_seq=10, error=None,
                rejected=0, site_state="replicating")
    base.update(kw)
    return MailboxStatus(**base)


def certificate(tmp: Path, days: float) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.example.org")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days))
            .sign(key, hashes.SHA256()))
    path = tmp / "api.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def receiver():
    r = WebhookReceiver(fail_first=True)
    yield r
    r.close()


def test_every_kind_reaches_the_webhook_once_after_a_retry_and_is_signed(receiver, tmp_path):
    statuses = [status("alice@example.org"), status("bob@example.org"), status("carol@example.org")]
    feed: list[SiteChange] = []
    extra: list[Alarm] = []
    cert = certificate(tmp_path, days=3)
    sender = WebhookSender(receiver.url, SECRET, attempts=3, retry_initial=0.05)
    monitor = AlertMonitor(
        gateway="hq", role="source", statuses=lambda: statuses, thresholds=Thresholds(lag_seconds=60, queue=100),
        producers=[expiry_producer([("API", cert)], days=14), lambda: list(extra)],
        feeds=[lambda: [feed.pop() for _ in range(len(feed))]], senders=[sender], interval=0.1)
    assert [a.alarm.kind for a in monitor.evaluate()] == ["certificate-expiry"]  # the first round: a baseline
    statuses[:] = [
        status("alice@example.org", lag_seconds=400.0, copy_queue=500),
        status("bob@example.org", phase="error", error="ServerUnavailable: connection refused", replay_queue=101),
        status("carol@example.org", rejected=2, site_state="active-at-dr", active_site="dr"),
    ]
    feed.append(SiteChange("primary", "dave@example.org", "cutting-over", "active-at-dr", actor="auto",
                           detail="primary server primary down"))
    # a kind the monitor has never heard of only needs a producer
    extra.append(Alarm("mass-delete-hold", "critical", "412 expunges held", datetime.now(timezone.utc),
                       address="erin@example.org", server="primary"))
    extra.append(Alarm("verify-difference", "warning", "3 messages differ", datetime.now(timezone.utc),
                       address="erin@example.org", server="primary"))
    sent = monitor.evaluate()
    kinds = sorted(a.alarm.kind for a in sent)
    assert kinds == sorted(["lag", "copy-queue", "replay-queue", "mailbox-error", "rejected-messages", "site-state",
                            "automatic-failover", "mass-delete-hold", "verify-difference"]), kinds
    sender.start()
    try:
        everything = sent + []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(receiver.accepted()) < 10:
            time.sleep(0.05)
        # nothing new: a second round sends nothing
        assert monitor.evaluate() == []
        time.sleep(0.5)
    finally:
        sender.stop()
    accepted = receiver.accepted()
    ids = [d.headers["x-mailrepl-alert-id"] for d in accepted]
    assert len(accepted) == 10 and len(set(ids)) == 10, [d.json for d in accepted]  # each once
    for d in receiver.deliveries:  # each tried twice: the 500, then the retry
        assert [x.status for x in receiver.deliveries if x.headers["x-mailrepl-alert-id"] ==
                d.headers["x-mailrepl-alert-id"]] == [500, 200]
        assert verify_signature(SECRET, d.headers["x-mailrepl-timestamp"], d.body, d.headers["x-mailrepl-signature"])
        assert not verify_signature("another-secret-xxxxxxxxxxxxxxxx", d.headers["x-mailrepl-timestamp"], d.body,
                                    d.headers["x-mailrepl-signature"])
    by_kind = {d.json["kind"]: d.json for d in accepted}
    assert set(by_kind) == {"certificate-expiry", *(a.alarm.kind for a in everything)}
    assert by_kind["lag"]["address"] == "alice@example.org" and by_kind["lag"]["state"] == "firing"
    assert by_kind["site-state"]["message"].startswith("replicating -> active-at-dr")
    assert by_kind["site-state"]["state"] == "event"
    assert by_kind["automatic-failover"]["severity"] == "critical" and "by auto" in by_kind["automatic-failover"]["message"]
    assert "expires" in by_kind["certificate-expiry"]["message"]
    assert by_kind["mailbox-error"]["text"].startswith("[mailrepl source hq] CRITICAL mailbox-error bob@example.org")
    # the console's list: generic, most severe first
    listed = monitor.alarms()
    assert listed[0].severity == "critical" and {a.kind for a in listed} >= {"mass-delete-hold", "lag"}


def test_alarms_resolve_and_a_growing_count_is_sent_again(receiver):
    statuses = [status("alice@example.org", rejected=1)]
    sender = WebhookSender(receiver.url, SECRET, attempts=3, retry_initial=0.05)
    monitor = AlertMonitor(gateway="dr", role="recovery", statuses=lambda: statuses,
                           thresholds=Thresholds(lag_seconds=60, queue=100), senders=[sender])
    first = monitor.evaluate()
    assert [(a.state, a.alarm.count) for a in first] == [("firing", 1)]
    statuses[:] = [status("alice@example.org", rejected=3)]
    again = monitor.evaluate()
    assert [(a.state, a.alarm.count) for a in again] == [("firing", 3)]
    assert again[0].alarm.since == first[0].alarm.since  # the same alarm, since it started
    assert monitor.evaluate() == []
    statuses[:] = [status("alice@example.org")]
    assert [(a.state, a.alarm.kind) for a in monitor.evaluate()] == [("resolved", "rejected-messages")]
    assert monitor.alarms() == []


def test_4xx_is_not_retried_and_attempts_are_bounded():
    alert = Alert("firing", Alarm("lag", "warning", "x", datetime.now(timezone.utc)), "hq", "source", id="a1")
    refusing, failing = WebhookReceiver(always=404), WebhookReceiver(always=503)
    try:
        assert WebhookSender(refusing.url, SECRET, attempts=3, retry_initial=0.01).deliver(alert) is False
        assert [d.status for d in refusing.deliveries] == [404]  # refused as it is: not retried
        assert WebhookSender(failing.url, SECRET, attempts=3, retry_initial=0.01).deliver(alert) is False
        assert [d.status for d in failing.deliveries] == [503, 503, 503]  # retried, at most `attempts` times
        unreachable = WebhookSender("http://127.0.0.1:9/hook", SECRET, attempts=3, retry_initial=0.01)
        started = time.monotonic()
        assert unreachable.deliver(alert) is False and time.monotonic() - started < 5
    finally:
        refusing.close()
        failing.close()


def test_signature_binds_body_and_time():
    body = b'{"kind":"lag"}'
    ts = str(int(time.time()))
    sig = sign(SECRET, ts, body)
    assert verify_signature(SECRET, ts, body, sig)
    assert not verify_signature(SECRET, ts, body + b" ", sig)
    assert not verify_signature(SECRET, str(int(ts) - 3600), body, sign(SECRET, str(int(ts) - 3600), body))
    assert not verify_signature(SECRET, None, body, sig)


def test_alertmanager_format():
    since = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
    alarm = Alarm("copy-queue", "warning", "500 changes", since, address="a@example.org", server="primary")
    firing = payload(Alert("firing", alarm, "hq", "source", id="x"), "alertmanager")
    assert firing == [{"labels": {"alertname": "MailreplCopyQueue", "severity": "warning", "gateway": "hq",
                                  "role": "source", "kind": "copy-queue", "address": "a@example.org", "server": "primary"},
                       "annotations": {"summary": "[mailrepl source hq] WARNING copy-queue a@example.org: 500 changes",
                                       "description": "500 changes"},
                       "startsAt": "2026-12-01T10:00:00+00:00"}]
    resolved = payload(Alert("resolved", alarm, "hq", "source", id="x"), "alertmanager")
    assert "endsAt" in resolved[0]
    json.dumps(firing)


def test_mail_to_admins_and_notice_to_the_user_who_moved():
    sink = SmtpSink()
    mail = MailSender("127.0.0.1", sink.port, "mailrepl@example.org", ("oncall@example.org",))
    statuses = [status("alice@example.org")]
    monitor = AlertMonitor(gateway="dr", role="recovery", statuses=lambda: statuses,
                           thresholds=Thresholds(lag_seconds=60, queue=100), senders=[mail], notify_users=mail)
    mail.start()
    try:
        monitor.evaluate()
        statuses[:] = [status("alice@example.org", site_state="active-at-dr", active_site="dr")]
        monitor.evaluate()
        got = sink.wait(2)
        assert len(got) == 2, got
        by_rcpt = {tuple(r): m for r, m in got}
        admin = by_rcpt[("oncall@example.org",)]
        assert "site-state alice@example.org" in admin["Subject"] and admin["Auto-Submitted"] == "auto-generated"
        notice = by_rcpt[("alice@example.org",)]
        assert notice["Subject"] == "Your mailbox has moved to the standby server"
        statuses[:] = [status("alice@example.org", site_state="switching-back")]
        monitor.evaluate()
        statuses[:] = [status("alice@example.org")]
        monitor.evaluate()
        got = sink.wait(5)
        assert [m["Subject"] for r, m in got if r == ["alice@example.org"]] == [
            "Your mailbox has moved to the standby server", "Your mailbox is back on the primary server"]
    finally:
        mail.stop()
        sink.close()


def _alerts(tmp_path, text: str, environ=None):
    p = tmp_path / "c.toml"
    p.write_text(text)
    p.chmod(0o600)
    return read_alerts(open_config(p, environ or {}).table("alerts", required=False))


def test_alert_settings(tmp_path):
    s = _alerts(tmp_path, f'[alerts]\nwebhook_url = "https://hooks.example.org/x"\nwebhook_secret = "{SECRET}"\n'
                          'lag_seconds = 30\nwebhook_format = "alertmanager"\nsmtp_host = "localhost"\n'
                          'admins = ["a@example.org"]\nnotify_users = true\n')
    assert (s.webhook_url, s.lag_seconds, s.webhook_format, s.admins, s.notify_users) == (
        "https://hooks.example.org/x", 30.0, "alertmanager", ("a@example.org",), True)
    assert SECRET not in repr(s)
    assert _alerts(tmp_path, "").webhook_url is None
    with pytest.raises(ConfigError, match="alerts.webhook_secret: missing"):
        _alerts(tmp_path, '[alerts]\nwebhook_url = "https://hooks.example.org/x"\n')
    with pytest.raises(ConfigError, match="alerts.webhook_secret"):
        _alerts(tmp_path, '[alerts]\nwebhook_url = "https://h.example.org/x"\nwebhook_secret = "short"\n')
    with pytest.raises(ConfigError, match="alerts.smtp_host: missing"):
        _alerts(tmp_path, '[alerts]\nadmins = ["a@example.org"]\n')
    with pytest.raises(ConfigError, match="alerts.lag_secs: unknown key"):
        _alerts(tmp_path, "[alerts]\nlag_secs = 3\n")
    env = _alerts(tmp_path, '[alerts]\nwebhook_url = "http://h.example.org/x"\n', {"MAILREPL_WEBHOOK_SECRET": SECRET})
    assert env.webhook_secret == SECRET


def test_lag_history_keeps_changes_of_the_last_hour():
    from datetime import timedelta as td
    from unittest import mock

    from mailrepl.shared.alerts import monitor as mon

    lags = {"a@example.org": 0.0}
    statuses = lambda: [status(a, lag_seconds=v) for a, v in lags.items()]  # noqa: E731
    m = AlertMonitor(gateway="hq", role="source", statuses=statuses, thresholds=Thresholds(lag_seconds=1e9, queue=10**9))
    t0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
    with mock.patch.object(mon, "utcnow") as now:
        for minute, lag in [(0, 0.0), (1, 0.0), (2, 5.0), (3, 5.0), (4, 12.5), (5, 0.0), (6, 0.0)]:
            now.return_value = t0 + td(minutes=minute)
            lags["a@example.org"] = lag
            m.evaluate()
        base = t0.timestamp()
        assert m.lag_history("primary", "a@example.org") == [(base, 0.0), (base + 120, 5.0), (base + 240, 12.5),
                                                              (base + 300, 0.0)]
        now.return_value = t0 + td(minutes=64)  # 10:04 is now more than an hour ago
        m.evaluate()
        assert m.lag_history("primary", "a@example.org") == [(base + 240, 12.5), (base + 300, 0.0)]
        lags.clear()
        m.evaluate()
        assert m.lag_history("primary", "a@example.org") == []  # a mailbox gone takes its history with it
