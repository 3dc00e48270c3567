"""The status API the console's pages read (role viewer; any API client may use it too).

- ``GET /api/v1/overview``: counts by phase, site and site state, total queues, the worst lags,
  the alarms, bytes on the WAN and what dedup and compression saved;
- ``GET /api/v1/mailbox-search``: one page of mailboxes, filtered (``q``, ``server``, ``phase``,
  ``site``, ``protected``, ``error``) and sorted (``sort`` = address, lag, queue; ``order``), with
  the total — the page is cut on the server, so 10,000 mailboxes cost the browser one page;

They read one status snapshot (``snapshot.py``), refreshed in the background.
- ``GET /api/v1/alarms``: every alarm holding now (kind, severity, mailbox, message, since);
- ``GET /api/v1/lag-history?address=&server=``: the mailbox's lag over the last hour.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Literal, Sequence

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict

from mailrepl.shared.alerts.monitor import AlertMonitor
from mailrepl.shared.console.snapshot import Snapshot
from mailrepl.shared.model import utcnow
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES, ByteCounts, MailboxStatus
from mailrepl.shared.runtime.authz import Authorizer

__all__ = ["status_views", "overview", "search"]

MAX_PAGE = 500
WORST = 10
BYTE_KINDS = tuple(ByteCounts.model_fields)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AlarmInfo(_Model):
    kind: str
    severity: str
    message: str
    since: str
    address: str | None
    server: str | None
    count: int | None
    detail: str | None


class Overview(_Model):
    gateway_role: str
    gateway_id: str
    generated_at: str
    total: int
    protected: int
    by_phase: dict[str, int]
    by_site: dict[str, int]
    by_site_state: dict[str, int]
    copy_queue: int | None
    replay_queue: int
    worst_lags: list[MailboxStatus]
    alarms: list[AlarmInfo]
    bytes: ByteCounts | None


class MailboxPage(_Model):
    total: int
    offset: int
    limit: int
    mailboxes: list[MailboxStatus]
    servers: list[str]


class LagHistory(_Model):
    server: str
    address: str
    points: list[list[float]]  # [Unix time, lag seconds]


def _alarms(monitor: AlertMonitor) -> list[AlarmInfo]:
    return [AlarmInfo(**a.to_json()) for a in monitor.alarms()]


def overview(statuses: Sequence[MailboxStatus], monitor: AlertMonitor, role: str, gid: str,
             taken_at: datetime | None = None) -> Overview:
    by_phase: dict[str, int] = {}
    by_site: dict[str, int] = {}
    by_state: dict[str, int] = {}
    copy = replay = protected = 0
    has_copy = has_bytes = False
    total_bytes = dict.fromkeys(BYTE_KINDS, 0)
    for st in statuses:
        by_phase[st.phase] = by_phase.get(st.phase, 0) + 1
        by_site[st.active_site] = by_site.get(st.active_site, 0) + 1
        if st.site_state:
            by_state[st.site_state] = by_state.get(st.site_state, 0) + 1
        protected += st.protected
        if st.copy_queue is not None:
            has_copy, copy = True, copy + st.copy_queue
        replay += st.replay_queue or 0
        if st.bytes is not None:
            has_bytes = True
            for k in BYTE_KINDS:
                total_bytes[k] += getattr(st.bytes, k)
    worst = sorted((st for st in statuses if (st.lag_seconds or 0) > 0), key=lambda st: -(st.lag_seconds or 0))[:WORST]
    return Overview(gateway_role=role, gateway_id=gid, generated_at=(taken_at or utcnow()).isoformat(), total=len(statuses),
                    protected=protected, by_phase=by_phase, by_site=by_site, by_site_state=by_state,
                    copy_queue=copy if has_copy else None, replay_queue=replay, worst_lags=worst,
                    alarms=_alarms(monitor), bytes=ByteCounts(**total_bytes) if has_bytes else None)


def search(statuses: Sequence[MailboxStatus], *, q: str = "", server: str | None = None, phase: str | None = None,
           site: str | None = None, protected: bool | None = None, error: bool | None = None,
           sort: str = "address", order: str = "asc", offset: int = 0, limit: int = 50) -> MailboxPage:
    needle = q.strip().lower()
    rows = [st for st in statuses
            if (not needle or needle in st.address.lower())
            and (server is None or st.server == server)
            and (phase is None or st.phase == phase)
            and (site is None or st.active_site == site or st.site_state == site)
            and (protected is None or st.protected == protected)
            and (error is None or bool(st.error or st.phase == "error") == error)]
    primary: Callable[[MailboxStatus], Any] = {
        "address": lambda st: (st.address, st.server),
        "lag": lambda st: st.lag_seconds or 0.0,
        "queue": lambda st: (st.copy_queue or 0) + (st.replay_queue or 0),
    }[sort]
    if sort != "address":  # ties in address order, whichever way the column is sorted
        rows.sort(key=lambda st: (st.address, st.server))
    rows.sort(key=primary, reverse=order == "desc")
    return MailboxPage(total=len(rows), offset=offset, limit=limit, mailboxes=rows[offset:offset + limit],
                       servers=sorted({st.server for st in statuses}))


def status_views(snapshot: Snapshot[MailboxStatus], monitor: AlertMonitor, authz: Authorizer,
                 *, role: str, gateway_id: str) -> APIRouter:
    """The routes; they read ``snapshot`` (at most a second or two old, never waited for)."""
    statuses = snapshot.get

    r = APIRouter(prefix="/api/v1", tags=["console"], responses=ERROR_RESPONSES)
    viewer = [Depends(authz.require("viewer"))]

    @r.get("/overview", response_model=Overview, dependencies=viewer)
    def get_overview() -> Overview:
        """Counts, queues, worst lags, alarms and WAN bytes of this gateway's mailboxes."""
        current = statuses()
        return overview(current, monitor, role, gateway_id, snapshot.taken_at)

    @r.get("/mailbox-search", response_model=MailboxPage, dependencies=viewer)
    def get_mailbox_search(
        q: str = Query("", max_length=200), server: str | None = Query(None, max_length=200),
        phase: Literal["idle", "seeding", "replicating", "error"] | None = None,
        site: Literal["primary", "dr", "replicating", "cutting-over", "active-at-dr", "failing-back",
                      "switching-back"] | None = None,
        protected: bool | None = None, error: bool | None = None,
        sort: Literal["address", "lag", "queue"] = "address", order: Literal["asc", "desc"] = "asc",
        offset: int = Query(0, ge=0, le=10_000_000), limit: int = Query(50, ge=1, le=MAX_PAGE),
    ) -> MailboxPage:
        """One page of mailboxes, filtered and sorted on the server."""
        return search(statuses(), q=q, server=server, phase=phase, site=site, protected=protected, error=error,
                      sort=sort, order=order, offset=offset, limit=limit)

    @r.get("/alarms", response_model=list[AlarmInfo], dependencies=viewer)
    def get_alarms() -> list[AlarmInfo]:
        """Every alarm holding now."""
        return _alarms(monitor)

    @r.get("/lag-history", response_model=LagHistory, dependencies=viewer)
    def get_lag_history(address: str = Query(..., max_length=320), server: str = Query(..., max_length=200)) -> LagHistory:
        """The mailbox's lag over the last hour: (Unix time, seconds) per alert round."""
        return LagHistory(server=server, address=address, points=[list(p) for p in monitor.lag_history(server, address)])

    return r
