"""Verify jobs of the source gateway: started by the admin API, run in a thread, one mailbox
after another; their reports are kept in memory (the newest :data:`JOBS_KEPT`), and each
mailbox's last verdict in the state store (``verify_result``), for the mailbox detail and the
metrics.

The report is an interface (the fault suite and the CLI read it)::

    {"job": "...", "state": "running"|"done"|"error", "equal": true|false,
     "progress": {"mailboxes_total": N, "mailboxes_done": N, "messages_checked": N, "current": "..."},
     "mailboxes": [{"address": "...", "server": "...", "verdict": "equal"|"different"|"error"|"in_flight",
                    "folders_checked": N, "messages_checked": N, "error": null|"...",
                    "differences": [{"kind": K, "folder": "...", "standby_folder": "...",
                                     "message_id": "...", "sha256": "...", "detail": "..."}]}]}
"""
from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Sequence

from sqlalchemy import select

from mailrepl.gateway.verify import MailboxVerifier, Progress
from mailrepl.gateway.verify_repair import Repairer
from mailrepl.shared.engines.verify_compare import KINDS
from mailrepl.shared.errors import MailreplError
from mailrepl.shared.model import utcnow
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Mailbox, VerifyResult

__all__ = ["VerifyJobs", "JOBS_KEPT", "last_verdicts", "last_verdict"]

log = logging.getLogger("mailrepl.verify")

JOBS_KEPT = 50
STORED_DIFFERENCES = 200  # differences kept per mailbox in the state store (the job's report has all)


@dataclass
class _Job:
    id: str
    targets: list[tuple[str, str]]
    settle_timeout: float
    repair: bool = False
    state: str = "running"
    error: str | None = None
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    current: str | None = None
    progress: Progress = field(default_factory=Progress)
    mailboxes: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        done = self.state != "running"
        return dict(job=self.id, state=self.state, error=self.error, repair=self.repair,
                    equal=done and self.error is None and all(m["verdict"] == "equal" for m in self.mailboxes),
                    started_at=self.started_at.isoformat(),
                    finished_at=self.finished_at.isoformat() if self.finished_at else None,
                    progress=dict(mailboxes_total=len(self.targets), mailboxes_done=len(self.mailboxes),
                                  messages_checked=self.progress.messages_checked, current=self.current),
                    mailboxes=list(self.mailboxes))


class VerifyJobs:
    def __init__(self, store: Store, verifier: MailboxVerifier, repairer: Repairer | None = None) -> None:
        self.store = store
        self.verifier = verifier
        self.repairer = repairer
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, targets: Sequence[tuple[str, str]], settle_timeout: float | None = None,
              repair: bool = False) -> str:
        if repair and self.repairer is None:
            raise ValueError("this gateway cannot repair")
        job = _Job(uuid.uuid4().hex, list(targets),
                   self.verifier.settle_timeout if settle_timeout is None else settle_timeout, repair)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > JOBS_KEPT:
                self._jobs.popitem(last=False)
        threading.Thread(target=self._run, args=(job,), name=f"verify-{job.id[:8]}", daemon=True).start()
        return job.id

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.as_dict() if job is not None else None

    def _run(self, job: _Job) -> None:
        try:
            for server, address in job.targets:
                job.current = address
                report = self.verifier.verify(server, address, job.progress, settle_timeout=job.settle_timeout)
                if job.repair and report.verdict == "different":
                    try:
                        report.repair = self.repairer.repair(report)
                    except MailreplError as exc:
                        report.repair = dict(error=f"{exc.__class__.__name__}: {exc}", resynced_folders=[],
                                             removals_queued=0, not_repaired=[])
                data = report.as_dict()
                self._record(job.id, report.server, report.address, data)
                with self._lock:
                    job.mailboxes.append(data)
                log.info("verify %s: %s %s (%d differences)", job.id[:8], address, report.verdict,
                         len(report.differences))
            job.state = "done"
        except Exception as exc:  # noqa: BLE001 - the job reports it; the gateway keeps running
            log.exception("verify job %s failed", job.id)
            job.state, job.error = "error", f"{exc.__class__.__name__}: {exc}"
        finally:
            job.current, job.finished_at = None, utcnow()

    def _record(self, job_id: str, server: str, address: str, data: dict) -> None:
        kinds = Counter(d["kind"] for d in data["differences"])
        stored = dict(data, differences=data["differences"][:STORED_DIFFERENCES])
        with self.store.tx() as s:
            mbx_id = s.scalar(select(Mailbox.id).where(Mailbox.server == server, Mailbox.address == address))
            if mbx_id is None:
                return
            row = s.get(VerifyResult, mbx_id)
            if row is None:
                row = VerifyResult(mailbox_id=mbx_id)
                s.add(row)
            row.job, row.verdict, row.at = job_id, data["verdict"], utcnow()
            row.kinds = json.dumps({k: kinds.get(k, 0) for k in KINDS})
            row.report = json.dumps(stored)


def last_verdicts(store: Store) -> list[dict]:
    """Every mailbox's last verdict: server, address, verdict, kinds (counts), at (datetime)."""
    with store.read() as s:
        return [dict(server=m.server, address=m.address, verdict=r.verdict, kinds=json.loads(r.kinds), at=r.at,
                     job=r.job)
                for r, m in s.execute(select(VerifyResult, Mailbox).join(Mailbox, Mailbox.id == VerifyResult.mailbox_id))]


def last_verdict(store: Store, server: str, address: str) -> dict | None:
    """One mailbox's last verdict with its stored report, or None if it was never verified."""
    with store.read() as s:
        row = s.execute(select(VerifyResult).join(Mailbox, Mailbox.id == VerifyResult.mailbox_id)
                        .where(Mailbox.server == server, Mailbox.address == address)).scalar()
        if row is None:
            return None
        report = json.loads(row.report)
        return dict(verdict=row.verdict, job=row.job, at=row.at.isoformat(), kinds=json.loads(row.kinds),
                    differences=report.get("differences", []), error=report.get("error"))
