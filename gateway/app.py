"""The source gateway: composition root (settings -> store, adapters, engines, API)."""
from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily
from sqlalchemy import select

from mailrepl.gateway.api import admin_router
from mailrepl.gateway.failback import FailbackPuller
from mailrepl.gateway.queue_status import (
    QueueCollector, alarms_router, gateway_alarms, mailbox_queue_fields, queue_alarm_producer,
)
from mailrepl.gateway.preflight_api import PreflightService, preflight_router
from mailrepl.gateway.push_api import PUSH_PREFIX, PushCounter, push_router
from mailrepl.gateway.registry import Registry
from mailrepl.gateway.shipper import Shipper
from mailrepl.gateway.verify import MailboxVerifier
from mailrepl.gateway.verify_api import VerifyMetrics, verify_alarm_producer, verify_router
from mailrepl.gateway.verify_jobs import VerifyJobs
from mailrepl.gateway.verify_repair import Repairer
from mailrepl.shared.runtime.watcher import PushWatchers
from mailrepl.shared.runtime.connection_pool import pooled, push_budget, push_opener
from mailrepl.shared.runtime.scale_status import ScaleCollector, connection_status, link_status
from mailrepl.shared.protocol.link_rate import LinkRateCap
from mailrepl.shared.adapters.factory import make_adapter
from mailrepl.shared.runtime.api_common import make_app
from mailrepl.shared.runtime.audit import AuditLog, AuditMiddleware
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.runtime.guard import BodyRule, GuardPolicy, JSON
from mailrepl.shared.runtime.principals import Resolver
from mailrepl.shared.runtime.security_api import security_router
from mailrepl.shared.console.mount import mount_console
from mailrepl.shared.runtime.tls_server import serve
from mailrepl.shared.runtime.tokens import TokenStore, admin_resolver
from mailrepl.shared.content.blobstore import BlobStore
from mailrepl.shared.content.bodies import BodyStore
from mailrepl.shared.engines.capture import CaptureEngine
from mailrepl.shared.engines.queue_gate import QueueGate
from mailrepl.shared.store.diskspace import sqlite_dir
from mailrepl.shared.protocol.peer_client import HttpTransport, make_peer_client
from mailrepl.shared.runtime.process import prepare_process, settle_heap
from mailrepl.shared.store import open_store
from mailrepl.shared.store.db import migrate_apart
from mailrepl.shared.store.outbox import sweep_spool
from mailrepl.shared.store.sealing import Sealer
from mailrepl.shared.store.models import Mailbox
from mailrepl.shared.runtime.workers import Job, MailboxWorkers

__all__ = ["SourceGateway", "run", "resolver", "guard_policy"]

OPEN_PATHS = frozenset({"/healthz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})

log = logging.getLogger("mailrepl.source")


class SourceGateway:
    def __init__(self, settings, *, transport: HttpTransport | None = None) -> None:
        g, peer = settings.gateway, settings.peer
        self.settings = settings
        sealer = Sealer(g.encryption.key, g.encryption.old_keys)  # at-rest encryption (off without a key)
        self.store = open_store(g.state_url, sealer=sealer, spool_dir=g.outbox_dir)
        self.store.migrate()
        swept = sweep_spool(self.store)  # before any worker runs: segments a crash left behind
        if swept:
            log.info("outbox spool: removed %d segment(s) no queued body is stored in", len(swept))
        # one bounded pool of connections per server, shared by capture, push, verify and failback
        self.adapters = {srv.name: pooled(srv, make_adapter(srv)) for srv in settings.servers}
        self.push_budget = {srv.name: push_budget(srv) for srv in settings.servers}
        self.body_lock = threading.Lock()
        # back-pressure: the copy queue's bound and the state store's disk (see queue_gate)
        self.queue_gate = QueueGate(self.store, g.queue, state_dir=sqlite_dir(g.state_url))
        self.capture = CaptureEngine(self.store, chunk_messages=g.fetch_chunk, body_lock=self.body_lock,
                                     gate=self.queue_gate)
        self.peer = make_peer_client(peer.url, token=peer.token, source_id=g.id, timeout=peer.timeout,
                                     ca_file=peer.ca_file, client_cert=peer.client_cert, client_key=peer.client_key,
                                     transport=transport)
        # the link's rate cap (token buckets by time of day, a share kept for live changes)
        self.rate_cap = LinkRateCap(settings.link.schedule, live_share=settings.link.live_share)
        self.shipper = Shipper(
            self.store, g.id, self.peer,
            max_changes=peer.batch_max_changes, max_bytes=peer.batch_max_bytes, part_threshold=peer.part_threshold,
            retry_initial=peer.retry_initial, retry_max=peer.retry_max, body_lock=self.body_lock,
            rate_cap=self.rate_cap,
        )
        self.capture.on_committed = self.shipper.wake_event.set  # a seed ships while it is read
        self.registry = Registry(self.store, self.adapters, shipper_error=lambda: self.shipper.last_error,
                                 queue_fields=lambda usage, protected, site: mailbox_queue_fields(
                                     self.queue_gate, usage, protected, site))
        self.preflight = PreflightService({srv.name: (srv.kind, self.adapters[srv.name], tuple(srv.users))
                                           for srv in settings.servers})
        self.registry.before_first_protection = self.preflight.before_first_protection
        self.workers = MailboxWorkers(
            "capture", self._jobs, workers=g.workers, poll_interval=g.poll_interval,
            on_error=self.registry.record_error, idle_poll_max=g.idle_poll_max, release_sessions=True,
            sweep_skips_woken=True,  # a mailbox a push wake-up just captured is left out of the next sweep
            sweep_rate=g.idle_polls_per_second,  # seeding mailboxes (known work) are not counted
        )
        self.watchers = PushWatchers(self.workers.wake, limit=sum(self.push_budget.values()))
        # cutover/failback: learns where each mailbox is active, replays the standby's changes
        # on the primary at failback
        self.failback = FailbackPuller(
            self.store, self.adapters, self.peer, source_id=g.id,
            bodies=BodyStore(self.store, BlobStore(g.failback_blob_dir, sealer=sealer)),
            interval=min(1.0, g.poll_interval),
            on_rebased=self.workers.wake,
            on_resync=self._want_resync,
        )
        # standby copies the recovery gateway found damaged: mailbox id -> ((server, address), token),
        # taken by the mailbox's next capture cycle; tokens already answered, per (server, address)
        self._resync_lock = threading.Lock()
        self._resync_due: dict[int, tuple[tuple[str, str], int]] = {}
        self._resync_done: dict[tuple[str, str], int] = {}
        self.metrics = CollectorRegistry()
        self._gauges = {
            name: Gauge(f"mailrepl_source_{name}", doc, ["server", "address"], registry=self.metrics)
            for name, doc in (
                ("copy_queue", "Changes captured, not yet received by the recovery gateway"),
                ("replay_queue", "Changes received by the recovery gateway, not yet applied"),
                ("last_captured_seq", "Sequence number of the last captured change"),
            )
        }
        self._shipped = Gauge("mailrepl_source_wire_bytes", "Bytes sent to the recovery gateway", registry=self.metrics)
        self._shipped.set_function(lambda: self.shipper.stats.wire_bytes)
        self._failback_bytes = Gauge("mailrepl_source_failback_wire_bytes",
                                     "Bytes of standby changes received for failback", registry=self.metrics)
        self._failback_bytes.set_function(lambda: self.failback.wire_bytes)
        self.metrics.register(_ByteCounters(self.registry))
        self.push_counter = PushCounter()  # server-side push wake-ups (Dovecot push_notification)
        self.metrics.register(ScaleCollector("source", self.adapters.values(), self.rate_cap, self.push_counter))
        self.metrics.register(QueueCollector(self.queue_gate, self.registry.list_status,
                                             lambda: self.shipper.peer_disk_full))
        # verify: the primary read here, the standby listed by the recovery gateway
        self.verify = VerifyJobs(self.store, MailboxVerifier(self.store, self.adapters, self.peer,
                                                             cycles_caught_up=self.capture.cycles_caught_up,
                                                             wake_capture=self.workers.wake),
                                 Repairer(self.peer, self.capture.request_resync, self.workers.wake))
        self.metrics.register(VerifyMetrics(self.store))

    # ------------------------------------------------------------------ work

    def _jobs(self) -> list[Job]:
        with self.store.read() as s:
            rows = list(
                s.execute(
                    select(Mailbox.id, Mailbox.server, Mailbox.address, Mailbox.phase == "seeding").where(
                        Mailbox.protected.is_(True), Mailbox.active_site == "primary"
                    )
                )
            )
        jobs = []
        watch = {}
        # push connections for the most recently active mailboxes of each server, within its budget
        active = set(self.workers.most_active(sum(self.push_budget.values()) * 4))
        per_server: dict[str, int] = {}
        for mid, server, address, seeding in sorted(rows, key=lambda r: r[0] not in active):
            adapter = self.adapters.get(server)
            if adapter is None:
                continue
            if mid in active and per_server.get(server, 0) < self.push_budget.get(server, 0):
                per_server[server] = per_server.get(server, 0) + 1
                watch[mid] = push_opener(adapter, address)
            jobs.append(
                Job(
                    key=mid,
                    open_session=lambda a=adapter, addr=address: a.open(addr),
                    run=lambda sess, m=mid: self._cycle(m, sess),
                    group=server,
                    has_work=bool(seeding),
                )
            )
        self.watchers.sync(watch)
        return jobs

    def _want_resync(self, wanted) -> None:
        with self._resync_lock:
            todo = [w for w in wanted if self._resync_done.get((w.server, w.address)) != w.token]
        if not todo:
            return
        with self.store.read() as s:
            found = {(m.server, m.address): m.id for m in s.scalars(select(Mailbox).where(
                Mailbox.protected.is_(True), Mailbox.active_site == "primary",
                Mailbox.address.in_({w.address for w in todo})))}
        with self._resync_lock:
            for w in todo:
                mid = found.get((w.server, w.address))
                if mid is not None:
                    self._resync_due[mid] = ((w.server, w.address), w.token)
        self.workers.wake()

    def _cycle(self, mailbox_id: int, session) -> bool:
        with self._resync_lock:
            due = self._resync_due.pop(mailbox_id, None)
        if due is not None:
            folders = self.capture.resync(mailbox_id)
            log.warning("%s/%s: the standby copy was damaged: all %d folder(s) read again from the primary",
                        *due[0], folders)
            with self._resync_lock:
                self._resync_done[due[0]] = due[1]
        report = self.capture.cycle(mailbox_id, session)
        if report.changes:
            self.shipper.wake_event.set()
        # found work (or left some: paused, not caught up): swept at every poll again
        return bool(report.changes or report.pending or report.paused or report.wrote) or due is not None

    def start(self) -> None:
        try:
            self.registry.discover()
        except Exception as exc:  # a server may be down: keep serving, discovery repeats on toggles
            log.warning("discovery failed: %s", exc)
        self.workers.start()
        self.shipper.start()
        self.failback.start()

    def stop(self) -> None:
        self.watchers.stop()
        self.failback.stop()
        self.workers.stop()
        self.shipper.stop()
        self.peer.close()
        self.store.dispose()

    # ------------------------------------------------------------------ API

    def _refresh_metrics(self) -> None:
        for st in self.registry.list_status():
            labels = (st.server, st.address)
            self._gauges["copy_queue"].labels(*labels).set(st.copy_queue or 0)
            self._gauges["replay_queue"].labels(*labels).set(st.replay_queue or 0)
            self._gauges["last_captured_seq"].labels(*labels).set(st.last_captured_seq)

    def app(self):
        def health() -> dict:
            return {"role": "source", "id": self.settings.gateway.id, "peer_error": self.shipper.last_error,
                    "alarms": gateway_alarms(self.queue_gate, lambda: self.shipper.peer_disk_full),
                    "connections": connection_status(self.adapters.values()),
                    "push_watchers": len(self.watchers), "link": link_status(self.rate_cap)}

        g = self.settings.gateway
        tokens, audit = TokenStore(self.store), AuditLog(self.store)
        authz = Authorizer(resolver(g, tokens))
        app = make_app("mailrepl source gateway", self.metrics, health, self._refresh_metrics, authz=authz,
                       metrics_open=g.metrics_open, docs_open=g.docs_open, start=self.start, stop=self.stop,
                       guard=guard_policy(g, tokens))
        app.include_router(admin_router(self.registry, authz, self.workers.wake))
        app.include_router(verify_router(self.registry, self.store, self.verify, authz))
        app.include_router(preflight_router(self.preflight, authz))
        app.include_router(security_router(tokens, audit, authz))
        app.include_router(push_router(self.store, authz, self.workers.wake, self.push_counter))
        app.include_router(alarms_router(self.queue_gate, authz, lambda: self.shipper.peer_disk_full))
        app.add_middleware(AuditMiddleware, audit=audit, refusals_only=(PUSH_PREFIX,))
        self.alerts = mount_console(  # /ui/, the status views, alerts (after every other middleware)
            app, role="source", gateway_id=g.id, resolver=resolver(g, tokens), authz=authz,
            statuses=self.registry.list_status, metrics=self.metrics, alerts=self.settings.alerts,
            actions=("protect", "unprotect", "verify"), secure=g.tls.enabled,
            cert_files=(("API", g.tls.cert), ("peer client", self.settings.peer.client_cert)),
            producers=[queue_alarm_producer(self.queue_gate, lambda: self.shipper.peer_disk_full),
                       verify_alarm_producer(self.store)])
        return app


class _ByteCounters:
    """``mailrepl_source_bytes_total{server,address,kind}`` from the persisted accounting."""

    KINDS = ("captured", "shipped_raw", "sent_before_compression", "wire", "saved_by_dedup", "saved_by_compression")

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self):
        family = CounterMetricFamily("mailrepl_source_bytes", "Message bytes captured, shipped and saved, per mailbox",
                                     labels=["server", "address", "kind"])
        for st in self.registry.list_status():
            if st.bytes is None:
                continue
            counts = st.bytes.model_dump()
            for kind in self.KINDS:
                family.add_metric([st.server, st.address, kind], counts[kind])
        yield family


def resolver(g, tokens: TokenStore) -> Resolver:
    """Who a request's credentials are: the config's admin token, or a stored token with its role."""
    return admin_resolver(g.admin_token, tokens)


def guard_policy(g, tokens: TokenStore) -> GuardPolicy:
    """The source gateway's request guard: every body is admin JSON of at most ``max_json_bytes``."""
    return GuardPolicy(resolver=resolver(g, tokens), default=BodyRule(g.max_json_bytes, (JSON,)), open_paths=OPEN_PATHS)


def run(settings) -> None:
    prepare_process(settings.gateway.log_level, insecure_demo=settings.gateway.insecure_demo)
    migrate_apart(settings.gateway.state_url)  # Alembic in a process of its own, not in this one
    gw = SourceGateway(settings)
    app = gw.app()
    settle_heap()
    serve(app, settings.gateway.listen, settings.gateway.tls, what="source gateway")
