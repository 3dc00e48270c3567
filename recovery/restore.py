"""Point-in-time restore jobs of the recovery gateway: history -> plan -> writer.

A restore is two steps (as litestream restores): compute the plan — the mailbox as it was at the
time asked for (``HistoryKeeper.at``: the nearest base snapshot and the changes after it),
narrowed by folder and filters (``mailrepl.recovery.restore_plan``) — then apply it through one
writer (``mailrepl.recovery.restore_writers``): into the mailbox itself under
``Restored/<time>/…``, into another mailbox with the folders as they were, or into an mbox or zip
export. Bodies come from the blob store, each checked against its SHA-256.

Where a mailbox target is written: where users are. A mailbox replicating from the primary is
written on the primary, through the ``[[primaries]]`` entry of its server (a direct adapter
write with the service account): the source gateway captures the restored messages like any
others and replicates them to the standby, so both copies stay equal and the standby is never
written behind replication's back (its next damage check would undo such a write). A mailbox
active at DR (cut over) is written on the standby, where DR capture picks the messages up for
failback. Restored messages are ordinary messages either way.

Jobs are kept in the state store (``restore_job``) with their progress; a job under way when the
gateway stopped (or was killed) is run again from the start at the next start-up. Mailbox
writers skip what the target folder already holds and exports are written under a temporary
name, so the result is the same as without the interruption.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from mailrepl.recovery.history import HistoryKeeper
from mailrepl.recovery.restore_plan import Filter, RestorePlan, plan, restored_prefix
from mailrepl.recovery.restore_writers import (
    EXPORT_FORMATS,
    MailboxWriter,
    MboxWriter,
    ZipWriter,
)
from mailrepl.shared.content.bodies import BodyStore
from mailrepl.shared.errors import MailreplError
from mailrepl.shared.model import utcnow
from mailrepl.shared.site_state import SiteState
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import Replica, RestoreJob
from sqlalchemy import select

__all__ = ["BATCH_BYTES", "BATCH_MESSAGES", "RestoreRefused", "RestoreRequest", "RestoreService"]

log = logging.getLogger("mailrepl.restore")

BATCH_MESSAGES = 50  # messages loaded and written at once
BATCH_BYTES = 16 * 1024 * 1024
PARALLEL_JOBS = 2  # restores written at once (more wait their turn): bounded load on the servers
AT_DR = (SiteState.ACTIVE_AT_DR.value, SiteState.FAILING_BACK.value)


class RestoreRefused(MailreplError):
    """The restore cannot be done as asked (no history that far, no way to the target)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class RestoreRequest:
    at: datetime
    export: str | None = None  # "mbox" or "zip": a file instead of a mailbox
    to_address: str | None = None  # another mailbox (same servers); None: the mailbox itself
    folder: str | None = None
    since: datetime | None = None
    before: datetime | None = None
    sender: str | None = None
    subject: str | None = None

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("the restore time needs a UTC offset")
        if self.export is not None and self.export not in EXPORT_FORMATS:
            raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}")
        if self.export is not None and self.to_address is not None:
            raise ValueError("export and another mailbox exclude each other")

    @property
    def filter(self) -> Filter:
        return Filter(folder=self.folder, since=self.since, before=self.before, sender=self.sender,
                      subject=self.subject)

    def to_json(self) -> str:
        d = asdict(self)
        for k in ("at", "since", "before"):
            if d[k] is not None:
                d[k] = d[k].isoformat()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> RestoreRequest:
        d = json.loads(text)
        for k in ("at", "since", "before"):
            if d.get(k) is not None:
                d[k] = datetime.fromisoformat(d[k])
        return cls(**d)


OpenSession = Callable[[str, str, str], object]  # (where: "primary"|"standby", server name, address) -> session


class RestoreService:
    def __init__(self, store: Store, keeper: HistoryKeeper, bodies: BodyStore, open_session: OpenSession,
                 export_dir: Path, *, can_write_primary: Callable[[str], bool]) -> None:
        self.store = store
        self.keeper = keeper
        self.bodies = bodies
        self.open_session = open_session
        self.export_dir = Path(export_dir)
        self.can_write_primary = can_write_primary
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._slots = threading.Semaphore(PARALLEL_JOBS)

    # ------------------------------------------------------------------ jobs

    def submit(self, rid: int, req: RestoreRequest, who: str | None = None) -> str:
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            self._where(rep, req)  # refused now, not in the job, when the target cannot be reached
        self.keeper.at(rid, req.at)  # HistoryGap now when history does not reach that far
        job = uuid.uuid4().hex[:16]
        with self.store.tx() as s:
            s.add(RestoreJob(id=job, replica_id=rid, request=req.to_json(), state="running", created_by=who))
        self._start(job)
        return job

    def resume(self) -> list[str]:
        """Run again the jobs under way when the gateway stopped."""
        with self.store.read() as s:
            jobs = list(s.scalars(select(RestoreJob.id).where(RestoreJob.state == "running")))
        for job in jobs:
            log.info("restore %s was under way at the last stop: running it again", job)
            self._start(job)
        return jobs

    def stop(self) -> None:
        self._stopping.set()

    def status(self, job: str) -> dict | None:
        with self.store.read() as s:
            j = s.get(RestoreJob, job)
            if j is None:
                return None
            rep = s.get(Replica, j.replica_id)
            return {"job": j.id, "state": j.state, "address": rep.address, "server": rep.server,
                    "request": json.loads(j.request), "error": j.error,
                    "progress": {"messages_total": j.messages_total, "messages_done": j.messages_done,
                                 "bytes_total": j.bytes_total, "bytes_done": j.bytes_done},
                    "result": json.loads(j.result) if j.result else None,
                    "created_at": j.created_at.isoformat(), "created_by": j.created_by,
                    "finished_at": j.finished_at.isoformat() if j.finished_at else None}

    def export_file(self, job: str) -> Path | None:
        st = self.status(job)
        if st is None or st["state"] != "done" or not st["result"] or "file" not in st["result"]:
            return None
        return Path(st["result"]["file"])

    def _start(self, job: str) -> None:
        t = threading.Thread(target=self._run_logged, args=(job,), name=f"restore-{job}", daemon=True)
        with self._lock:
            self._threads[job] = t
        t.start()

    def wait(self, job: str, timeout: float | None = None) -> None:
        t = self._threads.get(job)
        if t is not None:
            t.join(timeout)

    def _run_logged(self, job: str) -> None:
        try:
            with self._slots:
                result = self.run(job)
        except Exception as exc:
            if self._stopping.is_set():
                return  # still "running": taken up again at the next start
            log.exception("restore %s failed", job)
            with self.store.tx() as s:
                j = s.get(RestoreJob, job)
                j.state, j.error, j.finished_at = "error", f"{exc.__class__.__name__}: {exc}", utcnow()
            return
        log.info("restore %s done: %s", job, result)

    # ------------------------------------------------------------------ one restore

    def run(self, job: str) -> dict:
        with self.store.read() as s:
            j = s.get(RestoreJob, job)
            req, rid = RestoreRequest.from_json(j.request), j.replica_id
            rep = s.get(Replica, rid)
            address, server = rep.address, rep.server
            where = self._where(rep, req)
        cat = self.keeper.at(rid, req.at)
        same = req.export is None and req.to_address is None
        p = plan(cat, req.at, prefix=restored_prefix(req.at) if same else None, flt=req.filter)
        self._progress(job, total=(len(p.items), p.total_bytes), done=(0, 0))
        writer = self._writer(job, req, where, server, address)
        try:
            result = self._apply(job, p, writer, req.filter)
        finally:
            close = getattr(getattr(writer, "session", None), "close", None)
            if close is not None:
                close()
        result.update(at=req.at.isoformat(), seq=p.seq, folders=len(p.folders),
                      prefix=restored_prefix(req.at) if same else None,
                      where=None if req.export else where, target=req.to_address or address)
        with self.store.tx() as s:
            j = s.get(RestoreJob, job)
            j.state, j.result, j.finished_at = "done", json.dumps(result), utcnow()
        return result

    def _where(self, rep: Replica, req: RestoreRequest) -> str:
        """Which copy a mailbox target is written on (see the module docstring)."""
        if req.export is not None:
            return "file"
        if rep.site_state in AT_DR:
            return "standby"
        if rep.site_state != SiteState.REPLICATING.value:
            raise RestoreRefused(f"{rep.address} is {rep.site_state}: restore into a mailbox once it settles "
                                 "(or export to a file)")
        if not self.can_write_primary(rep.server):
            raise RestoreRefused(f"the mailbox is served by primary server {rep.server!r}, which this gateway "
                                 "cannot reach: add it under [[primaries]], or export to a file")
        return "primary"

    def _writer(self, job: str, req: RestoreRequest, where: str, server: str, address: str):
        if req.export is not None:
            self.export_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self.export_dir / f"restore-{job}.{req.export}"
            cls = MboxWriter if req.export == "mbox" else ZipWriter
            return cls(path, req.at.isoformat())
        return MailboxWriter(self.open_session(where, server, req.to_address or address))

    def _apply(self, job: str, p: RestorePlan, writer, flt: Filter) -> dict:
        writer.folders(p.folders)
        done = nbytes = skipped = 0
        batch: list = []
        size = 0

        def flush() -> None:
            nonlocal done, nbytes, skipped, batch, size
            if not batch:
                return
            raws = self.bodies.load(sorted({m.sha256 for _, m in batch}))
            by_folder: dict[str, list] = {}
            for folder, m in batch:
                raw = raws[m.sha256]
                if flt.needs_headers and not flt.matches_headers(raw):
                    skipped += 1
                    continue
                by_folder.setdefault(folder, []).append((m, raw))
            for folder, items in by_folder.items():
                writer.write(folder, items)
            done += len(batch)
            nbytes += size
            self._progress(job, done=(done, nbytes))
            batch, size = [], 0

        for folder, m in p.items:
            if self._stopping.is_set():
                raise MailreplError("the gateway is stopping: the restore runs again at the next start",
                                    retryable=True)
            if batch and (batch[-1][0] != folder or len(batch) >= BATCH_MESSAGES or size + m.size > BATCH_BYTES):
                flush()
            batch.append((folder, m))
            size += m.size
        flush()
        out = writer.finish()
        out.update(messages=done - skipped, filtered_out=skipped)
        return out

    def _progress(self, job: str, *, total: tuple[int, int] | None = None, done: tuple[int, int]) -> None:
        with self.store.tx(durable=False) as s:
            j = s.get(RestoreJob, job)
            if total is not None:
                j.messages_total, j.bytes_total = total
            j.messages_done, j.bytes_done = done
