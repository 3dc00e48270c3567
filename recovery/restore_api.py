"""Restore routes of the recovery gateway's admin API.

``POST /api/v1/restore`` (operator): start a point-in-time restore of one mailbox (202 with the
job id; 404 unknown mailbox; 409 when history does not reach the time or the target cannot be
written); ``GET /api/v1/restore/{job}`` (viewer): state, progress, result;
``GET /api/v1/restore/{job}/file`` (operator): the export file of a finished export job
(``?part=manifest`` for an mbox export's manifest). See ``mailrepl.recovery.restore``.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse
from mailrepl.recovery.history_api import find_replica
from mailrepl.recovery.restore import RestoreRefused, RestoreRequest, RestoreService
from mailrepl.recovery.restore_plan import HistoryGap
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.runtime.principals import Principal
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["restore_router"]

_TEXT = Field(default=None, min_length=1, max_length=1000, pattern=r"^[^\x00-\x1f\x7f]*$")


class RestoreBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    address: str = Field(min_length=1, max_length=320, pattern=r"^[^\x00-\x1f\x7f\s]+$")
    server: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f\s]+$")
    at: datetime  # with a UTC offset
    export: Literal["mbox", "zip"] | None = None
    to_address: str | None = Field(default=None, min_length=1, max_length=320, pattern=r"^[^\x00-\x1f\x7f\s]+$")
    folder: str | None = _TEXT
    since: datetime | None = None
    before: datetime | None = None
    sender: str | None = _TEXT
    subject: str | None = _TEXT


class JobStarted(BaseModel):
    job: str


def restore_router(service: RestoreService, authz: Authorizer) -> APIRouter:
    r = APIRouter(prefix="/api/v1/restore", tags=["restore"], responses=ERROR_RESPONSES)
    viewer, operator = Depends(authz.require("viewer")), Depends(authz.require("operator"))

    @r.post("", status_code=202, response_model=JobStarted)
    def start(body: RestoreBody, who: Principal = operator) -> JobStarted:
        """Rebuild the mailbox as it was at ``at`` from history: into ``Restored/<time>/…`` of the
        mailbox itself, into ``to_address``, or into an ``export`` file."""
        for name in ("at", "since", "before"):
            value = getattr(body, name)
            if value is not None and value.tzinfo is None:
                raise HTTPException(422, f"{name}: give a UTC offset (e.g. 2026-12-01T10:00:00+00:00)")
        with service.store.read() as s:
            rid = find_replica(s, body.address, body.server).id
        try:
            req = RestoreRequest(at=body.at, export=body.export, to_address=body.to_address, folder=body.folder,
                                 since=body.since, before=body.before, sender=body.sender, subject=body.subject)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        try:
            return JobStarted(job=service.submit(rid, req, who.name))
        except (HistoryGap, RestoreRefused) as exc:
            raise HTTPException(409, str(exc)) from exc

    @r.get("/{job}", dependencies=[viewer])
    def status(job: str) -> dict:
        st = service.status(job)
        if st is None:
            raise HTTPException(404, f"no restore job {job!r}")
        return st

    @r.get("/{job}/file", dependencies=[operator], response_class=FileResponse)
    def export_file(job: str, part: Literal["file", "manifest"] = Query(default="file")) -> FileResponse:
        path = service.export_file(job)
        if path is None:
            raise HTTPException(404, f"restore job {job!r} has no finished export")
        if part == "manifest":
            path = path.with_name(path.name + ".manifest.json")
            if not path.exists():
                raise HTTPException(404, "a zip export holds its manifest inside")
        return FileResponse(path, filename=path.name)

    return r
