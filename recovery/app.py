"""The recovery gateway: composition root (settings -> store, receiver, replay workers, API)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import select

from mailrepl.recovery.standby_findings import StandbyFindingsCollector
from mailrepl.shared.engines.special_folders import AliasingAdapter, FolderAliases

from mailrepl.shared.runtime.watcher import PushWatchers
from mailrepl.shared.runtime.connection_pool import pooled, push_budget, push_opener
from mailrepl.shared.runtime.scale_status import ScaleCollector, connection_status
from mailrepl.recovery.api import admin_router, ingest_router
from mailrepl.recovery.disk_guard import DiskCollector, DiskGuard, disk_alarm_producer, disk_router
from mailrepl.shared.errors import DiskFull
from mailrepl.shared.store.diskspace import sqlite_dir
from mailrepl.recovery.autofailover import FailoverMonitor
from mailrepl.recovery.cutover import CutoverService
from mailrepl.recovery.failback import FailbackService
from mailrepl.shared.engines.receiver import Receiver
from mailrepl.recovery.redirect import Redirect
from mailrepl.recovery.site import KeyedLocks
from mailrepl.recovery.site_api import redirect_router, site_admin_router, site_ingest_router
from mailrepl.recovery.source_access import SourceAccess
from mailrepl.recovery.replay_pass import ReplayPass
from mailrepl.recovery.standby_check import ResyncRequests
from mailrepl.recovery.status_extras import StatusExtras
from mailrepl.recovery.standby_view import StandbyView
from mailrepl.recovery.verify_listing import StandbyListing, verify_ingest_router
from mailrepl.shared.adapters.factory import make_adapter
from mailrepl.shared.runtime.background import Background
from mailrepl.shared.runtime.tls_server import serve
from mailrepl.shared.runtime.api_common import make_app
from mailrepl.shared.runtime.guard import BodyRule, GuardPolicy, JSON
from mailrepl.shared.runtime.principals import Resolver, first_of
from mailrepl.shared.protocol.wire import MEDIA_TYPE
from mailrepl.shared.runtime.audit import AuditLog, AuditMiddleware
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.runtime.security_api import security_router
from mailrepl.shared.console.mount import mount_console
from mailrepl.recovery.alert_sources import replica_statuses, transition_feed
from mailrepl.recovery.delete_guard import DeleteGuard
from mailrepl.recovery.guard_api import guard_router
from mailrepl.recovery.history import HistoryKeeper
from mailrepl.recovery.history_api import history_router
from mailrepl.recovery.lag_api import lag_router
from mailrepl.recovery.replay_gate import ReplayGate
from mailrepl.recovery.restore import RestoreService
from mailrepl.recovery.restore_api import restore_router
from mailrepl.shared.runtime.tokens import TokenStore, admin_resolver
from mailrepl.shared.errors import MailreplError
from mailrepl.shared.content.blobstore import BlobStore
from mailrepl.shared.content.bodies import BodyStore
from mailrepl.shared.engines.capture import CaptureEngine
from mailrepl.shared.engines.replay import ReplayEngine
from mailrepl.shared.site_state import SiteState
from mailrepl.shared.runtime.process import prepare_process, settle_heap
from mailrepl.shared.store import open_store
from mailrepl.shared.store.db import migrate_apart
from mailrepl.shared.store.outbox import sweep_spool
from mailrepl.shared.store.sealing import Sealer
from mailrepl.shared.store.models import Mailbox, Replica
from mailrepl.shared.runtime.workers import Job, MailboxWorkers

__all__ = ["RecoveryGateway", "run", "resolver", "guard_policy"]

log = logging.getLogger("mailrepl.recovery")

PEER_JSON_BYTES = 16 * 1024 * 1024  # the source gateway's JSON requests (body queries, failback steps)
OPEN_PATHS = frozenset({"/healthz", "/auth", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
GC_INTERVAL = 3600.0  # seconds between garbage collections of bodies and parts
DR_POLL_INTERVAL = 5.0  # capture on the standby after cutover: polls, woken sooner by push
DR_IDLE_POLL_MAX = 120.0  # … a mailbox quiet at DR is polled further apart, up to this (as at the source)


class RecoveryGateway:
    def __init__(self, settings) -> None:
        g = settings.gateway
        self.settings = settings
        sealer = Sealer(g.encryption.key, g.encryption.old_keys)  # at-rest encryption (off without a key)
        self.store = open_store(g.state_url, sealer=sealer, spool_dir=g.outbox_dir)
        self.store.migrate()
        swept = sweep_spool(self.store)  # before any worker runs: segments a crash left behind
        if swept:
            log.info("outbox spool: removed %d segment(s) no queued body is stored in", len(swept))
        # one bounded pool of connections per standby server: replay, standby view, cutover, DR capture, push
        self.pools = {srv.name: pooled(srv, make_adapter(srv)) for srv in settings.servers}
        # special folders pair with the standby's own (engines/special_folders)
        self.adapters = {srv.name: AliasingAdapter(self.pools[srv.name], FolderAliases(self.store, srv.name))
                         for srv in settings.servers}
        self.push_budget = {srv.name: push_budget(srv) for srv in settings.servers}
        self.routes = dict(settings.routes)
        self.bodies = BodyStore(self.store, BlobStore(g.blob_dir, sealer=sealer))
        # the mass-delete guard holds a mailbox's deletions when too many come at once (replay's gate)
        self.guard = DeleteGuard(self.store, settings.guard)
        # lagged copies play a change only once it is older than the mailbox's delay (then the guard)
        self.gate = ReplayGate(self.store, settings.lag, then=self.guard.gate)
        self.replay = ReplayEngine(self.store, self.bodies, append_batch=g.append_batch, gate=self.gate)
        self.view = StandbyView(self.store)  # kept current by the replay workers: cutover reads nothing
        # standby copies changed behind our back: found by the replay workers, resynced by the source
        self.resyncs = ResyncRequests()
        self.check_interval = g.standby_check_interval
        self.passes = ReplayPass(self.store, self.replay, self.view, self.resyncs)
        self.workers = MailboxWorkers(
            "replay", self._jobs, workers=g.workers, poll_interval=1.0, on_error=self._record_error,
            release_sessions=True, sweep_rate=g.standby_checks_per_second,  # replicas with work are not counted
        )
        self.receiver = Receiver(self.store, self.bodies, self.route, on_received=self.workers.wake)
        self.replay.on_applied = self.receiver.signal.applied  # a waiting progress query answers
        # who may send what: checked before the receiver writes anything
        self.access = SourceAccess(settings.sources, self.route, self.adapters, self.store)
        # cutover and failback: capture on the standby while users are there (same engine as at
        # the primary site), one lock per mailbox between replay, DR capture and the site steps
        f = settings.failover
        self.locks = KeyedLocks()
        self.capture = CaptureEngine(self.store)
        self.dr_workers = MailboxWorkers("dr-capture", self._dr_jobs, workers=g.workers, poll_interval=DR_POLL_INTERVAL,
                                         idle_poll_max=DR_IDLE_POLL_MAX, release_sessions=True)
        # NOTIFY/IDLE wake-ups, as at the source: for the most active mailboxes, within each server's budget
        self.dr_watchers = PushWatchers(self.dr_workers.wake, limit=sum(self.push_budget.values()))
        self.cutover = CutoverService(self.store, self.replay, self._open_standby, self.locks,
                                      on_done=self.dr_workers.wake, view=self.view,
                                      cached_session=lambda rep: self.workers.take_session(rep.id))
        self.failback = FailbackService(self.store, self.capture, self._open_standby, self.locks, g.id,
                                        hold_seconds=f.hold_seconds if f.auto else 0.0)
        self.primaries = {srv.name: srv for srv in settings.primaries}
        self.redirect = Redirect(self.store, self.primaries, {srv.name: srv for srv in settings.servers}, self.route,
                                 case_sensitive=f.redirect_case_sensitive)
        self.monitor = FailoverMonitor(
            self.store, {srv.name: make_adapter(srv) for srv in settings.primaries},
            cutover_server=self._auto_cutover, confirm_caught_up=self._auto_confirm if f.confirm == "auto" else None,
            auto=f.auto, outage_seconds=f.outage_seconds, check_interval=f.check_interval,
        )
        self._gc = Background("blob-gc", self._gc_loop)
        # history: kept changes, base snapshots, pruning (before each garbage collection)
        self.history = HistoryKeeper(self.store, settings.history)
        # what history, the guard and lagged copies add to a mailbox's status (one or all of them)
        self.extras = StatusExtras(self.history, self.guard, self.gate, settings.lag.enabled)
        self._history = Background("history", self._history_loop)
        # point-in-time restores from history: into the mailbox where users are, another one, or a file
        self._primary_adapters = {srv.name: make_adapter(srv) for srv in settings.primaries}
        self.restores = RestoreService(self.store, self.history, self.bodies, self._open_for_restore,
                                       Path(settings.history.export_dir),
                                       can_write_primary=lambda server: server in self._primary_adapters)
        self.metrics = CollectorRegistry()
        self._queue = Gauge("mailrepl_recovery_replay_queue", "Changes received, not yet applied",
                            ["server", "address"], registry=self.metrics)
        self._history_bytes = Gauge("mailrepl_recovery_history_bytes",
                                    "Bytes a mailbox's history holds (kind: changes, snapshots, bodies)",
                                    ["server", "address", "kind"], registry=self.metrics)
        self._guard_held = Gauge("mailrepl_recovery_guard_held", "Changes the mass-delete guard holds for a mailbox",
                                 ["server", "address"], registry=self.metrics)
        self._guard_tripped = Gauge("mailrepl_recovery_guard_tripped",
                                    "1 while a mailbox's deletions are held by the mass-delete guard",
                                    ["server", "address"], registry=self.metrics)
        self._history_changes = Gauge("mailrepl_recovery_history_changes", "Applied changes kept as history",
                                      ["server", "address"], registry=self.metrics)
        # full disks: batches refused (507) before they are taken in, the alarm (see disk_guard)
        self.disk = DiskGuard({"state": sqlite_dir(g.state_url), "blobs": Path(g.blob_dir)}, g.min_free_bytes)
        self.metrics.register(DiskCollector(self.disk))
        self.metrics.register(StandbyFindingsCollector(self.store))  # refused and altered messages
        self.metrics.register(ScaleCollector("recovery", self.pools.values()))

    def route(self, primary_server: str) -> str | None:
        if primary_server in self.routes:
            return self.routes[primary_server]
        if len(self.adapters) == 1:
            return next(iter(self.adapters))
        return None

    def _jobs(self) -> list[Job]:
        with self.store.read() as s:
            rows = list(
                s.execute(
                    select(Replica.id, Replica.target, Replica.address).where(
                        # something to apply, or a standby view behind what was applied
                        (Replica.received_seq > Replica.applied_seq) | Replica.view_seq.is_(None)
                        | (Replica.view_seq != Replica.applied_seq),
                        # fencing: never into the copy users are working on
                        Replica.site_state == SiteState.REPLICATING.value,
                    )
                )
            )
            waiting: set[int] = set()  # lagged copies with nothing due yet: left alone, even when woken
            if self.settings.lag.enabled:
                fresh = {rid for rid, vs, ap in s.execute(select(Replica.id, Replica.view_seq, Replica.applied_seq))
                         if vs is not None and vs == ap}
                waiting = {r[0] for r in rows if r[0] in fresh and not self.gate.due(r[0])}
                rows = [r for r in rows if r[0] not in waiting]
            busy = {rid for rid, _, _ in rows}
            idle = s.execute(select(Replica.id, Replica.target, Replica.address).where(
                Replica.site_state == SiteState.REPLICATING.value))
            now = time.monotonic()
            # nothing to apply: the standby copy is still checked now and then; the others are
            # listed for a wake-up by name (a received batch), which then needs no new listing
            swept = {rid: True for rid in busy}
            for r in idle:
                if r[0] not in busy:
                    due = now - self.passes.checked.setdefault(r[0], now) >= self.check_interval
                    if due or r[0] not in waiting:
                        swept[r[0]] = due
                        rows.append(r)
        jobs = []
        for rid, target, address in rows:
            adapter = self.adapters.get(target)
            if adapter is None:
                continue
            jobs.append(Job(key=rid, open_session=lambda a=adapter, addr=address: a.open(addr),
                            run=lambda sess, r=rid: self._replay(r, sess), group=target, swept=swept[rid],
                            has_work=rid in busy))
        return jobs

    def _replay(self, rid: int, session) -> None:
        with self.locks(rid):
            done = self.passes.run(rid, session)
        if done is None:
            return
        report, error = done
        if error and not error.startswith("conflict"):  # written only when there is one to clear
            with self.store.tx(durable=False) as s:
                rep = s.get(Replica, rid)
                if rep.error and not rep.error.startswith("conflict"):
                    rep.error = None
        if error or report.held:
            # an error cleared, changes set aside by the gate: a source gateway waiting for progress
            # is answered now (each applied group told it already, as it committed)
            self.receiver.signal.applied(rid)
        if report.applied:
            log.debug("replica %s: applied %d", rid, report.applied)

    # ------------------------------------------------------------------ cutover / failback

    def _open_standby(self, rep: Replica):
        adapter = self.adapters.get(rep.target)
        if adapter is None:
            raise MailreplError(f"standby server {rep.target!r} is not configured")
        return adapter.open(rep.address)

    def _open_for_restore(self, where: str, server: str, address: str):
        if where == "primary":
            return self._primary_adapters[server].open(address)
        target = self.route(server)
        if target is None or target not in self.adapters:
            raise MailreplError(f"no standby server is configured for primary server {server!r}")
        return self.adapters[target].open(address)

    def _dr_jobs(self) -> list[Job]:
        with self.store.read() as s:
            rows = list(s.execute(
                select(Mailbox.id, Replica.id, Replica.target, Replica.address)
                .join(Replica, (Replica.server == Mailbox.server) & (Replica.address == Mailbox.address))
                .where(Replica.site_state.in_([SiteState.ACTIVE_AT_DR.value, SiteState.FAILING_BACK.value]),
                       Mailbox.site_state == Replica.site_state)
            ))
        jobs = []
        watch = {}
        active = set(self.dr_workers.most_active(sum(self.push_budget.values()) * 4))
        per_server: dict[str, int] = {}
        for mbx_id, rid, target, address in sorted(rows, key=lambda r: ("dr", r[0]) not in active):
            adapter = self.adapters.get(target)
            if adapter is None:
                continue
            if ("dr", mbx_id) in active and per_server.get(target, 0) < self.push_budget.get(target, 0):
                per_server[target] = per_server.get(target, 0) + 1
                watch[("dr", mbx_id)] = push_opener(self.pools[target], address)
            jobs.append(Job(key=("dr", mbx_id), open_session=lambda a=adapter, addr=address: a.open(addr),
                            run=lambda sess, m=mbx_id, r=rid: self._dr_cycle(m, r, sess)))
        self.dr_watchers.sync(watch)
        return jobs

    def _dr_cycle(self, mbx_id: int, rid: int, session) -> bool:
        with self.locks(rid):
            with self.store.read() as s:
                if s.get(Replica, rid).site_state not in (SiteState.ACTIVE_AT_DR.value, SiteState.FAILING_BACK.value):
                    return False
            report = self.capture.cycle(mbx_id, session)
        # found work (or left some): polled at every interval again, else further apart
        return bool(report.changes or report.pending or report.paused or report.wrote)

    def _auto_cutover(self, server: str) -> list[dict]:
        with self.store.read() as s:
            ids = list(s.scalars(select(Replica.id).where(Replica.server == server,
                                                          Replica.site_state == SiteState.REPLICATING.value)))
        return self.cutover.cutover(ids, actor="auto", detail=f"primary server {server} down") if ids else []

    def _auto_confirm(self) -> None:
        for rid in self.failback.caught_up():
            self.failback.confirm(rid, actor="auto")

    def _record_error(self, rid, exc: BaseException) -> None:
        if isinstance(exc, DiskFull):
            return  # nothing can be written now; replay tries again (logged by the workers)
        with self.store.tx() as s:
            rep = s.get(Replica, rid)
            if rep is not None:
                rep.error = f"{exc.__class__.__name__}: {exc}"

    def _refresh_metrics(self) -> None:
        with self.store.read() as s:
            for rep in s.scalars(select(Replica)):
                self._queue.labels(rep.server, rep.address).set(rep.received_seq - rep.applied_seq)
        held, tripped = self.guard.held_counts(), self.guard.tripped_ids()
        with self.store.read() as s:
            for rep in s.scalars(select(Replica)):
                self._guard_held.labels(rep.server, rep.address).set(held.get(rep.id, 0))
                self._guard_tripped.labels(rep.server, rep.address).set(1 if rep.id in tripped else 0)
        for h in self.history.spaces():
            for kind, value in (("changes", h.change_bytes), ("snapshots", h.snapshot_bytes), ("bodies", h.body_bytes)):
                self._history_bytes.labels(h.server, h.address, kind).set(value)
            self._history_changes.labels(h.server, h.address).set(h.changes)

    def collect_garbage(self, grace_seconds: float | None = None):
        grace = self.settings.gateway.blob_grace_seconds if grace_seconds is None else grace_seconds
        return self.bodies.collect_garbage(grace_seconds=grace, history_of=self.history.history_replicas())

    def _resolve_guard(self, rid: int, discard: bool) -> dict:
        from fastapi import HTTPException

        with self.locks(rid):
            with self.store.read() as s:
                rep = s.get(Replica, rid)
                if rep.site_state != SiteState.REPLICATING.value:
                    raise HTTPException(409, f"{rep.address} is {rep.site_state}: held changes are played only "
                                             "while the mailbox replicates")
            session = self._open_standby(rep)
            try:
                result = self.guard.resolve(rid, session, discard=discard, engine=self.replay)
            finally:
                session.close()
        self.workers.wake(rid)
        return result

    def _gc_loop(self) -> None:
        while not self._gc.stopping.wait(GC_INTERVAL):
            try:
                self.collect_garbage()
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                log.exception("garbage collection failed")

    def _history_loop(self) -> None:
        if not self.settings.history.enabled:
            return
        while True:
            try:
                self.history.maintain()
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                log.exception("history maintenance failed")
            if self._history.stopping.wait(self.settings.history.check_interval):
                return

    def start(self) -> None:
        self.workers.start()
        self.dr_workers.start()
        self.monitor.start()
        self._gc.start()
        self._history.start()
        self.restores.resume()

    def stop(self) -> None:
        self._gc.stop(timeout=0)  # a collection under way is not waited for
        self._history.stop(timeout=0)
        self.restores.stop()
        self.monitor.stop()
        self.dr_watchers.stop()
        self.dr_workers.stop()
        self.workers.stop()
        self.store.dispose()

    def app(self):
        g = self.settings.gateway
        tokens, audit = TokenStore(self.store), AuditLog(self.store)
        authz = Authorizer(admin_resolver(g.admin_token, tokens))
        app = make_app("mailrepl recovery gateway", self.metrics,
                       lambda: {"role": "recovery", "id": g.id, "alarms": [self.disk.alarm] if self.disk.alarm else [],
                                "connections": connection_status(self.pools.values()),
                                "push_watchers": len(self.dr_watchers)},
                       self._refresh_metrics, authz=authz,
                       metrics_open=g.metrics_open, docs_open=g.docs_open, start=self.start, stop=self.stop,
                       guard=guard_policy(g, self.access, tokens))
        app.include_router(ingest_router(self.receiver, self.access, g.max_batch_bytes, g.max_inflated_bytes,
                                         disk=self.disk))
        app.include_router(disk_router(self.disk, authz))
        app.include_router(admin_router(self.store, authz, self.collect_garbage, extras=self.extras.of, extras_all=self.extras.of_all,
                                        holds=self.guard.holds))
        app.include_router(guard_router(self.guard, authz, self._resolve_guard))
        app.include_router(history_router(self.history, authz))
        app.include_router(restore_router(self.restores, authz))
        app.include_router(site_admin_router(self.store, authz, self.cutover, self.failback,
                                             self.monitor, self.settings.failover.auto, gate=self.gate))
        app.include_router(lag_router(self.gate, authz))
        app.include_router(security_router(tokens, audit, authz))
        app.include_router(site_ingest_router(self.access, g.id, self.failback, self.resyncs.for_source))
        app.include_router(verify_ingest_router(self.access, StandbyListing(self.store, self._open_standby)))
        app.include_router(redirect_router(self.redirect, self.settings.failover.redirect_key))
        app.add_middleware(AuditMiddleware, audit=audit)
        self.alerts = mount_console(  # /ui/, the status views, alerts (after every other middleware)
            app, role="recovery", gateway_id=g.id, resolver=admin_resolver(g.admin_token, tokens), authz=authz,
            statuses=replica_statuses(self.store), metrics=self.metrics, alerts=self.settings.alerts,
            actions=("cutover", "failback"), secure=g.tls.enabled, cert_files=(("API", g.tls.cert),),
            feeds=[transition_feed(self.store)], site_changes_from_status=False,
            producers=[disk_alarm_producer(self.disk), self.guard.alarms])
        return app

    def redirect_app(self):
        """Only ``GET /auth``, for a plain loopback listener nginx's ``auth_http`` can reach when the
        API is served over HTTPS (``[failover] redirect_listen``)."""
        from fastapi import FastAPI

        app = FastAPI(title="mailrepl login redirect", openapi_url=None, docs_url=None, redoc_url=None)
        app.include_router(redirect_router(self.redirect, self.settings.failover.redirect_key))
        return app

def resolver(g, access: SourceAccess, tokens: TokenStore) -> Resolver:
    """Who a request's credentials are: an admin API token (the config's, or a stored one with its
    role), or a source gateway bound by its client certificate or per-source token."""
    return first_of(admin_resolver(g.admin_token, tokens), access.resolve)


def guard_policy(g, access: SourceAccess, tokens: TokenStore) -> GuardPolicy:
    """The recovery gateway's request guard: admin JSON small, batches up to ``max_batch_bytes``
    and ``max_concurrent_ingests`` at once, the source's other requests JSON up to PEER_JSON_BYTES."""
    peer = BodyRule(max(PEER_JSON_BYTES, g.max_json_bytes))
    routes = {("POST", "/api/v1/ingest/batches"): BodyRule(g.max_batch_bytes, (MEDIA_TYPE,),
                                                           max_concurrent=g.max_concurrent_ingests),
              **{("POST", f"/api/v1/ingest/{name}"): peer for name in ("missing", "reverse", "resync", "verify", "verify-remove")},
              ("POST", "/api/v1/ingest/rebase"): BodyRule(g.max_batch_bytes)}  # failback's id pairs can be many
    return GuardPolicy(resolver=resolver(g, access, tokens), default=BodyRule(g.max_json_bytes, (JSON,)), open_paths=OPEN_PATHS,
                       routes=routes)


def run(settings) -> None:
    prepare_process(settings.gateway.log_level, insecure_demo=settings.gateway.insecure_demo)
    if settings.failover.redirect_key is None:
        log.warning("the login redirect (/auth) answers without a key (redirect_key_required = false): "
                    "keep it reachable by nginx only")
    migrate_apart(settings.gateway.state_url)  # Alembic in a process of its own, not in this one
    gw = RecoveryGateway(settings)
    extra = None
    if settings.failover.redirect_listen is not None:
        extra = (gw.redirect_app(), settings.failover.redirect_listen)
    app = gw.app()
    settle_heap()
    serve(app, settings.gateway.listen, settings.gateway.tls, what="recovery gateway", plain_extra=extra)
