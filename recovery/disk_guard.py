"""The recovery gateway's disks: refuse a batch that cannot be stored, and the alarm.

Before a batch is taken in, the state directory (SQLite) and the blob store must each have at
least ``min_free_bytes`` free (a batch is at most ``max_batch_bytes`` on the wire); otherwise it
is refused at once. A batch whose store write still runs out of space (``DiskFull``: the blob
store removed its temporary files, the state store's transaction rolled back) is refused the
same way. Refused means HTTP 507 with ``Retry-After``: nothing of the batch is acknowledged,
the source keeps it and sends it again. The alarm clears with the next batch stored.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Mapping

from fastapi import APIRouter, Depends
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel

from mailrepl.shared.alerts.model import Alarm
from mailrepl.shared.errors import DiskFull
from mailrepl.shared.model import utcnow
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.authz import Authorizer
from mailrepl.shared.store.diskspace import free_bytes

__all__ = ["DiskGuard", "DiskCollector", "DiskAlarms", "disk_router", "DISK_FULL_RETRY_AFTER"]

log = logging.getLogger("mailrepl.disk")

DISK_FULL_RETRY_AFTER = 5.0  # seconds a source waits before it sends a refused batch again


class DiskGuard:
    def __init__(self, paths: Mapping[str, Path | None], min_free_bytes: int, *,
                 free: Callable[[Path], int | None] = free_bytes) -> None:
        self.paths = {what: p for what, p in paths.items() if p is not None}  # "state", "blobs"
        self.min_free_bytes = min_free_bytes
        self.free = free
        self.refused = 0  # batches refused for lack of space since start
        self._lock = threading.Lock()
        self._alarm: str | None = None

    def free_space(self) -> dict[str, int]:
        out = {}
        for what, path in self.paths.items():
            n = self.free(path)
            if n is not None:
                out[what] = n
        return out

    def check(self) -> None:
        """Raise ``DiskFull`` if a disk is under the floor (before anything of a batch is read)."""
        if not self.min_free_bytes:
            return
        for what, n in self.free_space().items():
            if n < self.min_free_bytes:
                raise DiskFull(f"{n} bytes free for the {what} ({self.paths[what]}), under min_free_bytes "
                               f"({self.min_free_bytes})", back_off=DISK_FULL_RETRY_AFTER)

    def refused_for(self, exc: DiskFull) -> str:
        """Note a batch refused for lack of space; the one-line reason the source is told."""
        reason = f"disk full at the recovery gateway: {' '.join(str(exc).split())[:300]}"
        with self._lock:
            self.refused += 1
            before, self._alarm = self._alarm, reason
        if before is None:
            log.error("%s; batches are refused (507) until space returns, nothing is lost", reason)
        return reason

    def stored(self) -> None:
        """A batch was stored: the disk has room again."""
        with self._lock:
            before, self._alarm = self._alarm, None
        if before is not None:
            log.warning("disk space is back: batches are taken in again")

    @property
    def alarm(self) -> str | None:
        return self._alarm


class DiskCollector:
    """``/metrics``: ``mailrepl_recovery_disk_full`` (1 while batches are refused for lack of
    space), ``mailrepl_recovery_free_bytes{what="state"|"blobs"}``,
    ``mailrepl_recovery_disk_full_refusals_total``."""

    def __init__(self, guard: DiskGuard) -> None:
        self.guard = guard

    def collect(self):
        yield GaugeMetricFamily("mailrepl_recovery_disk_full", "1 while batches are refused for lack of space",
                                value=int(self.guard.alarm is not None))
        free = GaugeMetricFamily("mailrepl_recovery_free_bytes", "Free space of the state directory and blob store",
                                 labels=["what"])
        for what, n in self.guard.free_space().items():
            free.add_metric([what], n)
        yield free
        yield CounterMetricFamily("mailrepl_recovery_disk_full_refusals", "Batches refused (507) for lack of space",
                                  value=self.guard.refused)


class DiskAlarms(BaseModel):
    alarms: list[str]
    disk_full: str | None
    free_bytes: dict[str, int]
    min_free_bytes: int
    refused_batches: int


def disk_router(guard: DiskGuard, authz: Authorizer) -> APIRouter:
    """``GET /api/v1/disk`` (viewer): the disk alarm, free space, the floor."""
    r = APIRouter(prefix="/api/v1", tags=["admin"], responses=ERROR_RESPONSES)

    @r.get("/disk", response_model=DiskAlarms, dependencies=[Depends(authz.require("viewer"))])
    def alarms() -> DiskAlarms:
        """Whether batches are refused for lack of space, and the free space of each disk."""
        return DiskAlarms(alarms=[guard.alarm] if guard.alarm else [], disk_full=guard.alarm,
                          free_bytes=guard.free_space(), min_free_bytes=guard.min_free_bytes,
                          refused_batches=guard.refused)

    return r


def disk_alarm_producer(guard: DiskGuard) -> Callable[[], list[Alarm]]:
    """``disk-full`` as a console/alert alarm while batches are refused for lack of space."""

    def produce() -> list[Alarm]:
        reason = guard.alarm
        return [Alarm("disk-full", "critical", reason[:300], since=utcnow())] if reason else []

    return produce
