"""REST routes of verify on the source gateway, and its metrics.

``POST /api/v1/verify`` (operator): ``{"addresses": [...], "server": "...", "all": false,
"settle_timeout": 60, "repair": false}`` starts a job (202, ``{"job": id}``): the addresses (``server`` names their
server where several list one), else every protected mailbox of ``server``, else with ``all``
every protected mailbox; with ``repair``, what differs is handed to replication to fix
(``mailrepl.gateway.verify_repair``) and the report says what was done. ``GET /api/v1/verify/{job}`` (viewer): its state, progress and report
(``mailrepl.gateway.verify_jobs``).

Metrics (from the state store, the last verdict of each mailbox):
``mailrepl_verify_equal{server,mailbox}`` 1/0, ``mailrepl_verify_differences{server,mailbox,kind}``,
``mailrepl_verify_last_timestamp_seconds{server,mailbox}``.
"""
from __future__ import annotations

from datetime import timezone
from typing import Callable

from fastapi import APIRouter, Depends, HTTPException
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import select

from mailrepl.gateway.registry import Ambiguous, NotFound, Registry
from mailrepl.gateway.verify_jobs import VerifyJobs, last_verdicts
from mailrepl.shared.alerts.model import Alarm
from mailrepl.shared.engines.verify_compare import KINDS
from mailrepl.shared.protocol.messages import Name
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Mailbox

__all__ = ["verify_router", "VerifyMetrics", "VerifyBody", "SETTLE_TIMEOUT_MAX"]

SETTLE_TIMEOUT_MAX = 3600.0


class VerifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    addresses: list[Name] = Field(default=[], max_length=100_000)
    server: Name | None = None
    all: StrictBool = False
    settle_timeout: float | None = Field(default=None, gt=0, le=SETTLE_TIMEOUT_MAX)
    repair: StrictBool = False


class JobStarted(BaseModel):
    job: str


def _targets(registry: Registry, store: Store, body: VerifyBody) -> list[tuple[str, str]]:
    if body.addresses:
        if body.all:
            raise HTTPException(422, "give either addresses or all, not both")
        out = []
        for address in body.addresses:
            try:
                out.append(registry.resolve(address, body.server))
            except NotFound as exc:
                raise HTTPException(404, str(exc)) from exc
            except Ambiguous as exc:
                raise HTTPException(409, str(exc)) from exc
        return list(dict.fromkeys(out))
    if body.server is None and not body.all:
        raise HTTPException(422, "name the mailboxes (addresses), a server, or all")
    q = select(Mailbox.server, Mailbox.address).where(Mailbox.protected.is_(True)).order_by(Mailbox.server,
                                                                                          Mailbox.address)
    if body.server is not None:
        if body.server not in registry.adapters:
            raise HTTPException(404, f"unknown server {body.server!r}")
        q = q.where(Mailbox.server == body.server)
    with store.read() as s:
        out = [(srv, addr) for srv, addr in s.execute(q)]
    if not out:
        raise HTTPException(404, "no protected mailbox to verify")
    return out


def verify_router(registry: Registry, store: Store, jobs: VerifyJobs, authz: Authorizer) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["verify"], responses=ERROR_RESPONSES)
    viewer, operator = [Depends(authz.require("viewer"))], [Depends(authz.require("operator"))]

    @r.post("/verify", status_code=202, response_model=JobStarted, dependencies=operator)
    def post_verify(body: VerifyBody) -> JobStarted:
        """Compare the primary and standby copies of mailboxes (a job; its report by GET)."""
        return JobStarted(job=jobs.start(_targets(registry, store, body), body.settle_timeout, body.repair))

    @r.get("/verify/{job}", dependencies=viewer)
    def get_verify(job: str) -> dict:
        """A verify job: state, progress and report."""
        found = jobs.get(job)
        if found is None:
            raise HTTPException(404, f"no verify job {job!r} (only the newest are kept)")
        return found

    return r


class VerifyMetrics:
    """The last verdict of each mailbox as Prometheus gauges."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self):
        equal = GaugeMetricFamily("mailrepl_verify_equal", "1 if the last verify found the copies equal, else 0",
                                  labels=["server", "mailbox"])
        diffs = GaugeMetricFamily("mailrepl_verify_differences", "Differences the last verify found, per kind",
                                  labels=["server", "mailbox", "kind"])
        when = GaugeMetricFamily("mailrepl_verify_last_timestamp_seconds", "When the last verify of the mailbox ended",
                                 labels=["server", "mailbox"])
        for v in last_verdicts(self.store):
            labels = [v["server"], v["address"]]
            equal.add_metric(labels, 1.0 if v["verdict"] == "equal" else 0.0)
            for kind in KINDS:
                diffs.add_metric(labels + [kind], float(v["kinds"].get(kind, 0)))
            at = v["at"] if v["at"].tzinfo is not None else v["at"].replace(tzinfo=timezone.utc)
            when.add_metric(labels, at.timestamp())
        yield equal
        yield diffs
        yield when


def verify_alarm_producer(store: Store) -> Callable[[], list[Alarm]]:
    """``verify-difference``: a mailbox whose last verify did not find the copies equal."""

    def produce() -> list[Alarm]:
        out = []
        for v in last_verdicts(store):
            if v["verdict"] == "equal":
                continue
            n = sum(v["kinds"].values())
            what = ", ".join(f"{k} {c}" for k, c in sorted(v["kinds"].items()) if c) or v["verdict"]
            at = v["at"] if v["at"].tzinfo is not None else v["at"].replace(tzinfo=timezone.utc)
            out.append(Alarm("verify-difference", "critical" if v["verdict"] == "different" else "warning",
                             f"last verify {v['verdict']} ({what}), job {v['job']}", since=at,
                             address=v["address"], server=v["server"], count=n or None))
        return out

    return produce
