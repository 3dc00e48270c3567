"""Wires the console and the alerts into a gateway's FastAPI app (one call per gateway)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from mailrepl.shared.alerts.certs import expiry_producer
from mailrepl.shared.alerts.mail import MailSender
from mailrepl.shared.alerts.metrics import AlertCollector
from mailrepl.shared.alerts.model import Producer
from mailrepl.shared.alerts.monitor import AlertMonitor
from mailrepl.shared.alerts.rules import SiteChange, Thresholds
from mailrepl.shared.alerts.webhook import WebhookSender
from mailrepl.shared.config.alerts_settings import AlertSettings
from mailrepl.shared.console.middleware import ConsoleMiddleware
from mailrepl.shared.console.sessions import SessionStore
from mailrepl.shared.console.snapshot import Snapshot
from mailrepl.shared.console.views import status_views
from mailrepl.shared.runtime.api_common import MailboxStatus
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.runtime.principals import Resolver

__all__ = ["mount_console", "make_monitor"]


def make_monitor(*, role: str, gateway_id: str, statuses: Callable[[], Sequence[MailboxStatus]],
                 alerts: AlertSettings, cert_files: Iterable[tuple[str, Path]] = (),
                 producers: Iterable[Producer] = (), feeds: Iterable[Callable[[], Iterable[SiteChange]]] = (),
                 site_changes_from_status: bool = True) -> AlertMonitor:
    senders: list[Any] = []
    if alerts.webhook_url and alerts.webhook_secret:
        senders.append(WebhookSender(alerts.webhook_url, alerts.webhook_secret, fmt=alerts.webhook_format,
                                     attempts=alerts.webhook_attempts, retry_initial=alerts.webhook_retry_initial))
    mail = MailSender(alerts.smtp_host, alerts.smtp_port, alerts.mail_from, alerts.admins) if alerts.smtp_host else None
    if mail is not None:
        senders.append(mail)
    return AlertMonitor(
        gateway=gateway_id, role=role, statuses=statuses,
        thresholds=Thresholds(lag_seconds=alerts.lag_seconds, queue=alerts.copy_queue),
        producers=[expiry_producer(cert_files, alerts.certificate_days), *producers], feeds=feeds,
        senders=senders, notify_users=mail if (mail is not None and alerts.notify_users) else None,
        site_changes_from_status=site_changes_from_status, interval=alerts.interval)


def mount_console(app: FastAPI, *, role: str, gateway_id: str, resolver: Resolver, authz: Authorizer,
                  statuses: Callable[[], Sequence[MailboxStatus]], metrics: CollectorRegistry,
                  alerts: AlertSettings, actions: Sequence[str], secure: bool,
                  cert_files: Iterable[tuple[str, Path | None]] = (), producers: Iterable[Producer] = (),
                  feeds: Iterable[Callable[[], Iterable[SiteChange]]] = (),
                  site_changes_from_status: bool = True) -> AlertMonitor:
    """Serve the console under ``/ui/``, its status views under ``/api/v1``, run the alert loop
    with the app, and put the alerting conditions on ``/metrics``. Call it after every other
    middleware is added (the console must sit outside the request guard)."""
    snapshot = Snapshot(statuses, ttl=1.0)
    certs = [(what, Path(p)) for what, p in cert_files if p is not None]
    monitor = make_monitor(role=role, gateway_id=gateway_id, statuses=snapshot.fresh, alerts=alerts, cert_files=certs,
                           producers=producers, feeds=feeds, site_changes_from_status=site_changes_from_status)
    app.include_router(status_views(snapshot, monitor, authz, role=role, gateway_id=gateway_id))
    metrics.register(AlertCollector(role, snapshot.get, monitor, certs))
    app.add_middleware(ConsoleMiddleware, resolver=resolver, sessions=SessionStore(), secure=secure,
                       info={"gateway_role": role, "gateway_id": gateway_id, "actions": list(actions)})
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state:
            monitor.start()
            try:
                yield state
            finally:
                monitor.stop()

    app.router.lifespan_context = lifespan
    return monitor
