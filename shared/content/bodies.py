"""Received message bodies: skeletons in the state store, their parts in the blob store.

A body arrives as a skeleton (``mailrepl.shared.content.mime_split``) plus the parts the recovery gateway does
not hold yet. Before anything is stored, every body is reassembled and must hash to its SHA-256;
parts are made durable in the blob store before the transaction that records the skeleton and
its part references commits, so an acknowledged body is always complete.

Bodies are kept while a standby message (id map), a change waiting to be applied, or — for the
mailboxes whose history is kept (``history_of``) — a kept applied change or a history snapshot
refers to them; that is what lets a later message with the same content — or the same attachment in a new
message — cross the WAN without its bytes. ``collect_garbage`` removes the rest, then the parts
no kept skeleton refers to.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from sqlalchemy import delete, select

from mailrepl.shared.content.blobstore import BlobCorrupt, BlobMissing, BlobStore
from mailrepl.shared.errors import StoreError
from mailrepl.shared.content.mime_split import SkeletonError, reassemble, reassembled_digest, skeleton_keys
from mailrepl.shared.store import Store
from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.sealing import SealError, UnknownKey
from mailrepl.shared.store.models import HistorySnapshotBody, IdMapEntry, InboxBody, InboxPart, InboxRow
from mailrepl.shared.store.row_writes import insert_rows

__all__ = ["BodyStore", "BodyCorrupt", "Staged", "GcReport"]

log = logging.getLogger("mailrepl.bodies")

_BODY = InboxBody.__table__  # Core: rows are read as tuples


class BodyCorrupt(StoreError):
    """A stored body no longer reassembles to its hash (disk damage): it must come again."""

    def __init__(self, message: str, *, sha256: str) -> None:
        super().__init__(message, retryable=False)
        self.sha256 = sha256


@dataclass
class Staged:
    """Bodies of one segment, checked and ready to store (see ``BodyStore.stage``)."""

    skeletons: dict[str, tuple[bytes, int, tuple[str, ...]]]  # sha256 -> (skeleton, size, part keys)
    parts: dict[str, bytes]  # parts to write (not yet in the blob store)
    missing: list[str]  # message SHA-256s / part keys neither in the batch nor held
    whole: list[str] = field(default_factory=list)  # bodies that do not reassemble: send them unsplit


@dataclass(frozen=True)
class GcReport:
    bodies_deleted: int
    parts_scanned: int
    parts_deleted: int
    bytes_freed: int
    parts_kept_recent: int


class BodyStore:
    def __init__(self, store: Store, blobs: BlobStore, *, lock: threading.Lock | None = None) -> None:
        self.store = store
        self.blobs = blobs
        self.lock = lock or threading.Lock()  # held by ingest writes and by garbage collection

    # ------------------------------------------------------------------ ingest

    def missing(self, shas: Sequence[str], keys: Sequence[str]) -> tuple[list[str], list[str]]:
        """Which of these bodies (SHA-256) and parts (XXH3-128) this side does not hold."""
        held: set[str] = set()
        wanted = sorted(set(shas))
        with self.store.read() as s:
            for part in chunks(wanted):
                held.update(s.scalars(select(InboxBody.sha256).where(InboxBody.sha256.in_(part))))
        return [sha for sha in dict.fromkeys(shas) if sha not in held], self.blobs.missing(keys)

    def stage(self, s, shas: Iterable[str], messages: Mapping[str, bytes], parts: Mapping[str, bytes]) -> Staged:
        """Check the bodies ``shas`` that are not held yet, inside the receiver's transaction."""
        wanted = sorted(set(shas))
        held: set[str] = set()
        for part in chunks(wanted):
            held.update(s.scalars(select(InboxBody.sha256).where(InboxBody.sha256.in_(part))))
        staged = Staged(skeletons={}, parts={}, missing=[])
        for sha in wanted:
            if sha in held:
                continue
            skeleton = messages.get(sha)
            if skeleton is None:
                staged.missing.append(sha)
                continue
            try:
                keys = tuple(skeleton_keys(skeleton))
            except SkeletonError as exc:
                log.warning("body %s… has a malformed skeleton (%s): asking for it whole", sha[:16], exc)
                staged.whole.append(sha)
                continue
            found: dict[str, bytes] = {}
            for key in keys:
                data = parts.get(key)
                if data is None:
                    try:
                        data = self.blobs.get(key)
                    except (BlobMissing, BlobCorrupt):
                        staged.missing.append(key)
                        continue
                else:
                    staged.parts[key] = data
                found[key] = data
            if len(found) != len(keys):
                continue
            try:
                size, digest = reassembled_digest(skeleton, found)  # checked as reassembled, not built
            except SkeletonError as exc:
                log.warning("body %s… does not reassemble (%s): asking for it whole", sha[:16], exc)
                staged.whole.append(sha)
                continue
            if digest != sha:
                log.warning("body %s… does not reassemble to its hash: asking for it whole", sha[:16])
                staged.whole.append(sha)
                continue
            staged.skeletons[sha] = (skeleton, size, keys)
        return staged

    def store_staged(self, s, staged: Staged) -> None:
        """Parts durable first (files, fsync), then the skeleton rows in the caller's transaction."""
        if staged.parts:
            self.blobs.put_many(staged.parts.items())
        if staged.skeletons:
            insert_rows(s, InboxBody.__table__, ("sha256", "size", "data"), [
                (sha, size, self.store.sealer.seal(skeleton, sha))
                for sha, (skeleton, size, _) in staged.skeletons.items()
            ])
            insert_rows(s, InboxPart.__table__, ("sha256", "key"),
                        [(sha, key) for sha, (_, _, keys) in staged.skeletons.items() for key in set(keys)])

    # ------------------------------------------------------------------ replay

    def load(self, shas: Sequence[str]) -> dict[str, bytes]:
        """The whole bodies, each checked against its SHA-256 (BodyCorrupt if one fails)."""
        out: dict[str, bytes] = {}
        with self.store.read() as s:
            rows = list(s.execute(select(_BODY.c.sha256, _BODY.c.data).where(_BODY.c.sha256.in_(set(shas)))))
        for sha, stored in rows:
            try:
                skeleton = self.store.sealer.open(stored, sha)
                keys = skeleton_keys(skeleton)
                raw = reassemble(skeleton, {key: self.blobs.get(key) for key in set(keys)})
            except UnknownKey:
                raise  # not damage: the key is missing from the configuration
            except (SkeletonError, BlobMissing, BlobCorrupt, SealError) as exc:
                raise BodyCorrupt(f"stored body {sha[:16]}… is damaged: {exc}", sha256=sha) from exc
            if hashlib.sha256(raw).hexdigest() != sha:
                raise BodyCorrupt(f"stored body {sha[:16]}… does not match its hash", sha256=sha)
            out[sha] = raw
        missing = set(shas) - set(out)
        if missing:
            raise StoreError(f"body {sorted(missing)[0][:16]}… not received", retryable=False)
        return out

    def forget(self, sha: str) -> None:
        """Drop a damaged body so that it is asked for again (its parts are re-checked on arrival)."""
        with self.lock, self.store.tx() as s:
            s.execute(delete(InboxPart).where(InboxPart.sha256 == sha))
            s.execute(delete(InboxBody).where(InboxBody.sha256 == sha))

    # ------------------------------------------------------------------ garbage collection

    def collect_garbage(self, *, grace_seconds: float, history_of: Sequence[int] = ()) -> GcReport:
        """Delete bodies nothing refers to any more, then the parts no kept body refers to.
        ``history_of``: replicas whose kept changes (any state) count as references, as do all
        history snapshots (pruning, not this, enforces retention).

        Runs under the ingest lock, so a batch being stored cannot lose a part it relies on;
        the grace period also spares parts written moments ago by another process.
        """
        with self.lock:
            with self.store.tx() as s:
                in_use = select(IdMapEntry.sha256)
                # waiting to be applied, or held by a gate (``ReplayEngine.gate``) until released
                waiting = select(InboxRow.sha256).where(InboxRow.state.in_(("received", "held")),
                                                        InboxRow.sha256.is_not(None))
                dead = set(s.scalars(
                    select(InboxBody.sha256).where(InboxBody.sha256.not_in(in_use), InboxBody.sha256.not_in(waiting))
                ))
                if dead:
                    for part in chunks(sorted(history_of)):
                        dead -= set(s.scalars(select(InboxRow.sha256).where(
                            InboxRow.replica_id.in_(part), InboxRow.sha256.is_not(None)).distinct()))
                    dead -= set(s.scalars(select(HistorySnapshotBody.sha256).distinct()))
                dead = sorted(dead)
                for part in chunks(dead):
                    s.execute(delete(InboxPart).where(InboxPart.sha256.in_(part)))
                    s.execute(delete(InboxBody).where(InboxBody.sha256.in_(part)))
            with self.store.read() as s:
                referenced = set(s.scalars(select(InboxPart.key).distinct()))
            sweep = self.blobs.sweep(referenced, grace_seconds=grace_seconds)
        report = GcReport(bodies_deleted=len(dead), parts_scanned=sweep.scanned, parts_deleted=sweep.deleted,
                          bytes_freed=sweep.bytes_freed, parts_kept_recent=sweep.kept_recent)
        log.info("garbage collection: %s", report)
        return report
