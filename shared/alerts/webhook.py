"""Webhooks: each alert as one signed JSON POST, retried until the receiver takes it.

Signature: ``X-Mailrepl-Signature: sha256=<hex>``, the HMAC-SHA256 with the shared secret of
``<X-Mailrepl-Timestamp>.<body>`` (the timestamp in Unix seconds, so a receiver can refuse an old
replay); :func:`verify_signature` checks one. Retried with doubling back-off on a connection
failure, a 5xx or a 429 (honouring ``Retry-After`` up to the back-off cap), at most ``attempts``
times; any other 4xx is not retried (the receiver refuses the alert as it is). Formats:

- ``json``: ``{"id", "state", "kind", "severity", "message", "address", "server", "since",
  "gateway", "role", "text", …}`` — ``text`` is what chat tools' incoming webhooks show;
- ``alertmanager``: a list of one Alertmanager alert (``labels``, ``annotations``, ``startsAt``,
  ``endsAt`` when resolved), for Alertmanager's ``POST /api/v2/alerts``.

Alerts wait in a bounded queue (the oldest is dropped, with a warning, when it is full).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import time
from typing import Any, Callable

import httpx

from mailrepl.shared.alerts.model import Alert
from mailrepl.shared.runtime.background import Background

__all__ = ["WebhookSender", "sign", "verify_signature", "payload", "SIGNATURE_HEADER", "TIMESTAMP_HEADER"]

log = logging.getLogger("mailrepl.alerts")

SIGNATURE_HEADER = "X-Mailrepl-Signature"
TIMESTAMP_HEADER = "X-Mailrepl-Timestamp"
QUEUE_SIZE = 1000
BACK_OFF_MAX = 300.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str | None, body: bytes, signature: str | None,
                     *, max_age: float = 300.0, now: float | None = None) -> bool:
    """True if ``signature`` is ours for ``timestamp`` and ``body`` and the timestamp is recent."""
    if not timestamp or not signature or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > max_age:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode())


def payload(alert: Alert, fmt: str) -> Any:
    if fmt == "json":
        return alert.to_json()
    a = alert.alarm
    labels = {"alertname": "Mailrepl" + "".join(p.capitalize() for p in a.kind.split("-")), "severity": a.severity,
              "gateway": alert.gateway, "role": alert.role, "kind": a.kind}
    labels.update({k: v for k, v in (("address", a.address), ("server", a.server), ("detail", a.detail)) if v})
    item = {"labels": labels, "annotations": {"summary": alert.text(), "description": a.message},
            "startsAt": a.since.isoformat()}
    if alert.state != "firing":  # a resolved alarm, or a one-off event: it ends now
        item["endsAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return [item]


class WebhookSender:
    """Sends alerts to one URL from a background thread (``start``/``stop``); ``send`` never blocks."""

    def __init__(self, url: str, secret: str, *, fmt: str = "json", attempts: int = 8, retry_initial: float = 1.0,
                 timeout: float = 10.0, client: httpx.Client | None = None,
                 sleep: Callable[[float], bool] | None = None) -> None:
        self.url, self.secret, self.fmt = url, secret, fmt
        self.attempts, self.retry_initial = attempts, retry_initial
        self.client = client or httpx.Client(timeout=timeout, follow_redirects=False)
        self.queue: queue.Queue[Alert] = queue.Queue(QUEUE_SIZE)
        self.loop = Background("alert-webhook", self._run)
        self._sleep = sleep or self.loop.stopping.wait  # True when stopping
        self.delivered = 0
        self.failed = 0

    def send(self, alert: Alert) -> None:
        while True:
            try:
                self.queue.put_nowait(alert)
                return
            except queue.Full:
                try:
                    dropped = self.queue.get_nowait()
                    log.warning("webhook queue full: dropped alert %s", dropped.text())
                except queue.Empty:
                    pass

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop(timeout=5)
        self.client.close()

    def _run(self) -> None:
        while not self.loop.stopping.is_set():
            try:
                alert = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self.deliver(alert)

    def deliver(self, alert: Alert) -> bool:
        """POST one alert, retrying; True once the receiver answered 2xx."""
        body = json.dumps(payload(alert, self.fmt), separators=(",", ":")).encode()
        wait = self.retry_initial
        for attempt in range(1, self.attempts + 1):
            ts = str(int(time.time()))
            headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts,
                       SIGNATURE_HEADER: sign(self.secret, ts, body), "X-Mailrepl-Alert-Id": alert.id,
                       "User-Agent": "mailrepl-alerts"}
            retry_after = None
            try:
                r = self.client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{exc.__class__.__name__}: {exc}"
            else:
                if 200 <= r.status_code < 300:
                    self.delivered += 1
                    return True
                problem = f"HTTP {r.status_code}"
                if r.status_code < 500 and r.status_code != 429:
                    log.warning("webhook refused alert %s (%s): not retried", alert.id, problem)
                    self.failed += 1
                    return False
                ra = r.headers.get("retry-after", "")
                retry_after = float(ra) if ra.isdigit() else None
            if attempt == self.attempts:
                break
            delay = min(BACK_OFF_MAX, retry_after if retry_after is not None else wait)
            log.info("webhook: alert %s not delivered (%s), attempt %d of %d, next in %.1f s",
                     alert.id, problem, attempt, self.attempts, delay)
            if self._sleep(delay):
                break
            wait = min(BACK_OFF_MAX, wait * 2)
        log.warning("webhook: alert %s given up after %d attempts: %s", alert.id, attempt, problem)
        self.failed += 1
        return False
