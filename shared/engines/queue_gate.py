"""Back-pressure of the copy queue: whether capture may take more work, and the alarms.

The *queue* is what the source's outbox holds: changes captured and not yet applied at DR
(acknowledged ones stay until applied, so a lost recovery store can be refilled), counted in
changes and in the bytes of the message bodies they carry. It is bounded twice:

- **gateway-wide** (``max_changes``, ``max_bytes``): the outbox shares one disk; this bound is
  what protects it;
- **per mailbox** (``mailbox_max_changes``, ``mailbox_max_bytes``): one large mailbox being
  seeded over a slow link must not take the whole gateway-wide bound, or every other mailbox's
  live mail would wait behind it.

Levels: ``ok``; ``warning`` from ``warn_ratio`` of a bound (alarm in status, metrics and log);
``full`` at the bound: capture takes no more work for the mailbox (its folder cursors stay
where they are; the server keeps the changes and capture resumes from the cursors). The check
is made *before* taking work, never in the middle of a chunk, so one chunk per capture worker
may overshoot a bound (the gateway-wide measure is also up to ``cache_seconds`` old), and a
queue that is empty is never held back: a message larger than the bound still goes. The queue
drains without capture (the shipper sends whatever is queued, whatever its size), so a pause
cannot deadlock. Mailboxes whose users are served at DR (cut over) and unprotected ones are not
counted gateway-wide: their queue does not drain until failback (it is replaced there), and an
operator can unprotect a mailbox whose queue cannot drain (set aside by the recovery gateway)
to release the others.

A full disk is an alarm of its own: a write that failed with ``DiskFull`` (noted by the capture
engine), or the state directory's free space under ``min_free_bytes`` (checked before work is
taken). It clears on the next write that succeeds, or when space returns.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sqlalchemy import bindparam, func, select

from mailrepl.shared.store import Store
from mailrepl.shared.store.diskspace import free_bytes
from mailrepl.shared.store.models import Mailbox, OutboxRow

__all__ = [
    "QueueLimits", "QueueUsage", "QueueGate", "QueueReport", "level_of", "LEVELS",
    "DEFAULT_QUEUE_MAX_CHANGES", "DEFAULT_QUEUE_MAX_BYTES", "DEFAULT_MAILBOX_QUEUE_MAX_CHANGES",
    "DEFAULT_MAILBOX_QUEUE_MAX_BYTES", "DEFAULT_QUEUE_WARN_RATIO", "DEFAULT_MIN_FREE_BYTES",
]

log = logging.getLogger("mailrepl.queue")

DEFAULT_QUEUE_MAX_CHANGES = 2_000_000
DEFAULT_QUEUE_MAX_BYTES = 8 << 30  # 8 GiB of queued message bodies
DEFAULT_MAILBOX_QUEUE_MAX_CHANGES = 500_000
DEFAULT_MAILBOX_QUEUE_MAX_BYTES = 2 << 30
DEFAULT_QUEUE_WARN_RATIO = 0.8
DEFAULT_MIN_FREE_BYTES = 64 << 20  # leaves the shipper room to record acknowledgements

LEVELS = ("ok", "warning", "full")

# one mailbox's counters and queued bytes: built once (it runs at every capture cycle; a
# statement built per call costs more CPU than the query itself)
_HOLD_QUERY = select(
    Mailbox.server, Mailbox.address, Mailbox.last_seq, Mailbox.applied_seq,
    select(func.coalesce(func.sum(OutboxRow.size), 0)).where(OutboxRow.mailbox_id == bindparam("mailbox_id"))
    .scalar_subquery(),
).where(Mailbox.id == bindparam("mailbox_id"))


@dataclass(frozen=True, kw_only=True)
class QueueLimits:
    max_changes: int = DEFAULT_QUEUE_MAX_CHANGES
    max_bytes: int = DEFAULT_QUEUE_MAX_BYTES
    mailbox_max_changes: int = DEFAULT_MAILBOX_QUEUE_MAX_CHANGES
    mailbox_max_bytes: int = DEFAULT_MAILBOX_QUEUE_MAX_BYTES
    warn_ratio: float = DEFAULT_QUEUE_WARN_RATIO
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES  # of the state directory; 0: no floor


@dataclass(frozen=True)
class QueueUsage:
    changes: int = 0
    bytes: int = 0


def level_of(usage: QueueUsage, max_changes: int, max_bytes: int, warn_ratio: float) -> str:
    """``ok``, ``warning`` (from ``warn_ratio`` of either bound) or ``full`` (at either bound;
    never for an empty queue)."""
    fill = max(usage.changes / max_changes, usage.bytes / max_bytes)
    if usage.changes and fill >= 1.0:
        return "full"
    if usage.changes and fill >= warn_ratio:
        return "warning"
    return "ok"


@dataclass(frozen=True)
class QueueReport:
    """The gateway-wide view: usage, bounds, level, and the disk."""

    usage: QueueUsage
    limits: QueueLimits
    level: str
    disk_full: str | None  # why, while the state store's disk is full
    free_bytes: int | None  # of the state directory (None: not a local file)

    def alarms(self) -> list[str]:
        out = []
        if self.level != "ok":
            out.append(f"copy queue {self.level}: {self.usage.changes} changes / {self.usage.bytes} bytes "
                       f"(bound {self.limits.max_changes} / {self.limits.max_bytes})")
        if self.disk_full:
            out.append(f"disk full: {self.disk_full}")
        return out


class QueueGate:
    """Answers "may capture take more work for this mailbox now?" and keeps the alarms.

    ``state_dir``: the directory of a SQLite state store (its free space is checked against
    ``min_free_bytes``, as is the outbox spool's), None for PostgreSQL. The gateway-wide usage
    is measured at most every ``cache_seconds`` (one aggregate over the outbox)."""

    def __init__(self, store: Store, limits: QueueLimits, *, state_dir: Path | None = None,
                 cache_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 free: Callable[[Path], int | None] = free_bytes) -> None:
        self.store = store
        self.limits = limits
        self.state_dir = state_dir
        spool = store.spool.root if store.spool is not None else None
        # the directories whose free space is checked: the SQLite file's and the outbox spool's
        self.watched = tuple(dict.fromkeys(d for d in (state_dir, spool) if d is not None))
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.free = free
        self._lock = threading.Lock()
        self._total: tuple[float, QueueUsage] | None = None
        self._levels: dict[object, str] = {}  # last level logged per mailbox id / "gateway"
        self._disk: dict[str, str] = {}  # "write": a write failed; "floor": free space under the floor

    # ------------------------------------------------------------------ measuring

    def total(self, fresh: bool = False) -> QueueUsage:
        with self._lock:
            if not fresh and self._total is not None and self.clock() - self._total[0] < self.cache_seconds:
                return self._total[1]
        counted = Mailbox.protected.is_(True) & (Mailbox.site_state == "replicating")
        with self.store.read() as s:
            changes = s.scalar(select(func.coalesce(func.sum(Mailbox.last_seq - Mailbox.applied_seq), 0))
                               .where(counted)) or 0
            size = s.scalar(select(func.coalesce(func.sum(OutboxRow.size), 0))
                            .join(Mailbox, Mailbox.id == OutboxRow.mailbox_id).where(counted)) or 0
        usage = QueueUsage(int(changes), int(size))
        with self._lock:
            self._total = (self.clock(), usage)
        return usage

    @staticmethod
    def usage_of(s, mbx: Mailbox) -> QueueUsage:
        """One mailbox's queue, in the caller's transaction."""
        size = s.scalar(select(func.coalesce(func.sum(OutboxRow.size), 0)).where(OutboxRow.mailbox_id == mbx.id)) or 0
        return QueueUsage(max(0, mbx.last_seq - mbx.applied_seq), int(size))

    def mailbox_level(self, usage: QueueUsage) -> str:
        lim = self.limits
        return level_of(usage, lim.mailbox_max_changes, lim.mailbox_max_bytes, lim.warn_ratio)

    def gateway_level(self, usage: QueueUsage) -> str:
        lim = self.limits
        return level_of(usage, lim.max_changes, lim.max_bytes, lim.warn_ratio)

    def free_space(self) -> int | None:
        return self.free(self.state_dir) if self.state_dir is not None else None

    # ------------------------------------------------------------------ the gate

    def hold(self, mailbox_id: int, s=None) -> str | None:
        """Why capture must not take more work for ``mailbox_id`` now, or None. Asked in the read
        transaction ``s`` if given (a capture cycle's first read), else in one of its own."""
        floor = self._under_floor()
        if floor:  # a write that failed for lack of space does not hold: the next cycle tries again
            return f"disk full: {floor}"
        args = {"mailbox_id": mailbox_id}
        if s is not None:
            row = s.execute(_HOLD_QUERY, args).first()
        else:
            with self.store.read() as own:  # one query, no ORM load: this runs at every capture cycle
                row = own.execute(_HOLD_QUERY, args).first()
        if row is None:
            return None
        server, address, last_seq, applied_seq, size = row
        own = QueueUsage(max(0, last_seq - applied_seq), int(size or 0))
        where = f"{server}/{address}"
        own_level = self.mailbox_level(own)
        self._log_level(mailbox_id, where, own_level, own)
        total = self.total()
        gw_level = self.gateway_level(total)
        self._log_level("gateway", "gateway-wide", gw_level, total)
        if own_level == "full":
            return (f"copy queue of this mailbox at its bound ({own.changes} changes / {own.bytes} bytes, "
                    f"bound {self.limits.mailbox_max_changes} / {self.limits.mailbox_max_bytes}): capture paused")
        if gw_level == "full":
            return (f"gateway-wide copy queue at its bound ({total.changes} changes / {total.bytes} bytes, "
                    f"bound {self.limits.max_changes} / {self.limits.max_bytes}): capture paused")
        return None

    def _under_floor(self) -> str | None:
        floor = self.limits.min_free_bytes
        if not floor or not self.watched:
            return None
        reason = None
        for where in self.watched:
            free = self.free(where)
            if free is not None and free < floor:
                reason = f"{free} bytes free in {where}, under min_free_bytes ({floor})"
                break
        self._set_disk("floor", reason)
        return reason

    # ------------------------------------------------------------------ disk alarm

    def disk_full(self, exc: BaseException) -> None:
        """A write failed for lack of space (it rolled back): alarm until a write succeeds."""
        self._set_disk("write", " ".join(str(exc).split())[:300])

    def disk_ok(self) -> None:
        """A write succeeded: whatever filled the disk is over."""
        self._set_disk("write", None)

    def _set_disk(self, kind: str, reason: str | None) -> None:
        with self._lock:
            before = self.disk_alarm
            if reason is None:
                self._disk.pop(kind, None)
            else:
                self._disk[kind] = reason
            after = self.disk_alarm
        if before is None and after is not None:
            log.error("state store disk full, capture stopped (nothing acknowledged that is not stored): %s", after)
        elif before is not None and after is None:
            log.warning("state store disk has space again: capture resumes")

    @property
    def disk_alarm(self) -> str | None:
        return "; ".join(self._disk[k] for k in sorted(self._disk)) or None

    # ------------------------------------------------------------------ status

    def report(self, fresh: bool = False) -> QueueReport:
        """The gateway-wide view (the usage measured at most ``cache_seconds`` ago unless ``fresh``)."""
        usage = self.total(fresh=fresh)
        return QueueReport(usage=usage, limits=self.limits, level=self.gateway_level(usage),
                           disk_full=self.disk_alarm, free_bytes=self.free_space())

    def _log_level(self, key: object, where: str, level: str, usage: QueueUsage) -> None:
        with self._lock:
            before = self._levels.get(key, "ok")
            self._levels[key] = level
        if before == level:
            return
        if level == "ok":
            log.warning("%s: copy queue back under its alarm threshold (%d changes, %d bytes)",
                        where, usage.changes, usage.bytes)
        elif level == "warning":
            log.warning("%s: copy queue at %d %% of its bound or more (%d changes, %d bytes): the recovery gateway "
                        "or the standby is not keeping up", where, round(100 * self.limits.warn_ratio),
                        usage.changes, usage.bytes)
        else:
            log.error("%s: copy queue at its bound (%d changes, %d bytes): capture paused until it drains",
                      where, usage.changes, usage.bytes)
