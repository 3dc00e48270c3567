"""Failback, recovery side: the changes users made on the standby flow back to the primary.

The recovery gateway cannot reach the primary site by itself; the source gateway asks
(``/api/v1/ingest/sites``, ``/reverse``, ``/resync``, ``/rebase``) and this module answers:

- **failback** (admin): ``active-at-dr -> failing-back``. The DR capture keeps running (users are
  still on the standby); the source pulls the captured changes and replays them on the primary.
- **reverse**: records how far the source holds and applied the reverse changes (the DR outbox
  is pruned like the source's is) and returns the next batch. Message ids are translated on the
  way: a standby message known since cutover travels with the source's own id (``mid_alias``),
  a message born at DR with its DR id negated, so the primary's side never confuses the two.
- **resync**: the primary's copy was wiped or recreated; the DR capture of that mailbox starts
  from nothing, so every folder and message travels (a full resync of that mailbox only).
- **confirm** (admin, or automatic when configured): ``failing-back -> switching-back``: users
  are sent to the primary, a last capture cycle runs on the standby and its last sequence number
  is what the source must apply before re-basing.
- **rebase**: the source has applied everything and re-based its capture on the primary; here the
  forward id map (source id -> standby message) is rebuilt from the DR catalog, the DR capture
  state is dropped and the mailbox is ``replicating`` again, without re-seeding.
"""
from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Callable, Iterable, Mapping, Sequence

from sqlalchemy import delete, select

from mailrepl.shared.engines.batch_builder import BatchBuilder
from mailrepl.recovery.site import KeyedLocks, apply_action
from mailrepl.shared.adapters.base import MailboxSession
from mailrepl.shared.capture_state import CaptureState, ReplicaFolders, aliases, drop_aliases, rebuild_from_catalog
from mailrepl.shared.engines.capture import CaptureEngine
from mailrepl.shared.errors import IllegalTransition, MailreplError
from mailrepl.shared.model import Change, utcnow
from mailrepl.shared.site_state import SiteState
from mailrepl.shared.store import Store
from mailrepl.shared.store.outbox import drop_unreferenced_bodies
from mailrepl.shared.store.models import (
    FolderState, InboxRow, Mailbox, Orphan, OutboxRow, Replica,
    ReplayIntent, SiteTransition,
)
from mailrepl.shared.protocol.wire import Batch, Segment

__all__ = ["FailbackService", "translate"]

log = logging.getLogger("mailrepl.failback")


def translate(change: Change, alias: Mapping[int, int]) -> Change:
    """A DR change as the primary's side will know its messages: source ids where aliased,
    negated DR ids for messages born at DR."""
    def tr(mid):
        return None if mid is None else alias.get(mid, -mid)

    if change.mid is None and change.old_mid is None:
        return change
    d = change.to_dict()
    for key in ("mid", "old_mid"):
        if key in d:
            d[key] = tr(d[key])
    return Change.from_dict(d)


class FailbackService:
    def __init__(self, store: Store, capture: CaptureEngine, open_standby: Callable[[Replica], MailboxSession],
                 locks: KeyedLocks, gateway_id: str, *, hold_seconds: float = 0.0, max_changes: int = 2000,
                 max_bytes: int = 32 * 1024 * 1024) -> None:
        self.store = store
        self.capture = capture
        self.open_standby = open_standby
        self.locks = locks
        self.gateway_id = gateway_id
        self.hold_seconds = hold_seconds  # an automatic cutover stays at least this long
        self.max_changes = max_changes
        self.max_bytes = max_bytes

    # ------------------------------------------------------------------ admin

    def failback(self, replica_ids: Sequence[int], *, actor: str = "admin", confirm: bool = False) -> list[dict]:
        with self.store.tx() as s:
            for rid in replica_ids:
                rep = s.get(Replica, rid)
                self._check_hold(s, rep)
                apply_action(s, rep, "failback", actor, "replaying the standby's changes on the primary")
                self._mirror(s, rep)
        results = []
        for rid in replica_ids:
            if confirm:
                results.append(self.confirm(rid, actor=actor))
            else:
                results.append(self.status(rid))
        return results

    def abort(self, replica_ids: Sequence[int], *, actor: str = "admin") -> list[dict]:
        with self.store.tx() as s:
            for rid in replica_ids:
                rep = s.get(Replica, rid)
                apply_action(s, rep, "abort-failback", actor, "failback aborted; users stay at DR")
                self._mirror(s, rep)
        return [self.status(rid) for rid in replica_ids]

    def confirm(self, rid: int, *, actor: str = "admin") -> dict:
        """Switch users back to the primary; the standby's last changes are captured first."""
        with self.locks(rid):
            with self.store.tx() as s:
                rep = s.get(Replica, rid)
                t = apply_action(s, rep, "confirm", actor, "users switched back to the primary")
                self._mirror(s, rep)
            if t.changed:
                note = None
                try:
                    session = self.open_standby(rep)
                    try:
                        self.capture.cycle(self._dr_id(rep), session)
                    finally:
                        session.close()
                except MailreplError as exc:  # the standby is gone: what was captured is what goes back
                    note = f"last capture on the standby failed: {exc}"
                    log.warning("%s/%s: %s", rep.server, rep.address, note)
                with self.store.tx() as s:
                    rep = s.get(Replica, rid)
                    dr = s.get(Mailbox, self._dr_id(rep))
                    rep.final_seq = dr.last_seq
                    if note:
                        rep.error = note
        return self.status(rid)

    def status(self, rid: int) -> dict:
        with self.store.read() as s:
            rep = s.get(Replica, rid)
            dr = s.scalar(select(Mailbox).where(Mailbox.server == rep.server, Mailbox.address == rep.address))
            out = dict(server=rep.server, address=rep.address, state=rep.site_state, status="ok",
                       error=rep.error, final_seq=rep.final_seq)
            if dr is not None:
                out.update(dr_captured_seq=dr.last_seq, primary_received_seq=dr.acked_seq,
                           primary_applied_seq=dr.applied_seq, failback_queue=dr.last_seq - dr.applied_seq)
            if rep.failback_report:
                out["report"] = json.loads(rep.failback_report)
            return out

    def caught_up(self) -> list[int]:
        """Failing-back replicas whose standby changes have all been applied on the primary."""
        with self.store.read() as s:
            rows = s.execute(
                select(Replica.id).join(Mailbox, (Mailbox.server == Replica.server) & (Mailbox.address == Replica.address))
                .where(Replica.site_state == SiteState.FAILING_BACK.value, Mailbox.applied_seq == Mailbox.last_seq,
                       Mailbox.site_state == SiteState.FAILING_BACK.value)
            )
            return [r[0] for r in rows]

    def _check_hold(self, s, rep: Replica) -> None:
        if not self.hold_seconds or rep.site_state != SiteState.ACTIVE_AT_DR.value:
            return
        last = s.scalar(select(SiteTransition).where(
            SiteTransition.replica_id == rep.id, SiteTransition.after == SiteState.CUTTING_OVER.value
        ).order_by(SiteTransition.id.desc()).limit(1))
        if last is not None and last.actor == "auto":
            at = last.at if last.at.tzinfo else last.at.replace(tzinfo=utcnow().tzinfo)
            until = at + timedelta(seconds=self.hold_seconds)
            if utcnow() < until:
                raise IllegalTransition(f"{rep.address} was cut over automatically; it stays at DR until "
                                        f"{until.isoformat(timespec='seconds')} (minimum hold time)")

    @staticmethod
    def _mirror(s, rep: Replica) -> None:
        dr = s.scalar(select(Mailbox).where(Mailbox.server == rep.server, Mailbox.address == rep.address))
        if dr is not None:
            dr.site_state = rep.site_state

    def _dr_id(self, rep: Replica) -> int:
        with self.store.read() as s:
            dr = s.scalar(select(Mailbox.id).where(Mailbox.server == rep.server, Mailbox.address == rep.address))
        if dr is None:
            raise MailreplError(f"{rep.address} has no capture state at DR (was it cut over?)")
        return dr

    # ------------------------------------------------------------------ source gateway's side

    def sites(self, source: str) -> list[dict]:
        with self.store.read() as s:
            reps = s.scalars(select(Replica).where(Replica.source_id == source,
                                                   Replica.site_state != SiteState.REPLICATING.value))
            out = []
            for r in reps:
                dr = s.scalar(select(Mailbox.applied_seq).where(Mailbox.server == r.server, Mailbox.address == r.address))
                out.append(dict(server=r.server, address=r.address, state=r.site_state, cutover_seq=r.cutover_seq,
                                final_seq=r.final_seq, dr_applied=dr or 0))
            return out

    def record_progress(self, source: str, progress: Iterable[Mapping]) -> None:
        """The source holds reverse changes up to ``received`` and applied them up to ``applied``."""
        with self.store.tx() as s:
            for p in progress:
                rep = self._replica(s, source, p["server"], p["address"])
                dr = s.scalar(select(Mailbox).where(Mailbox.server == rep.server, Mailbox.address == rep.address))
                if dr is None:
                    continue
                received, applied = int(p["received"]), int(p["applied"])
                dr.acked_seq = max(min(received, dr.last_seq), dr.applied_seq)
                if applied > dr.applied_seq:
                    dr.applied_seq = min(applied, dr.last_seq)
                    done = (OutboxRow.mailbox_id == dr.id) & (OutboxRow.seq <= dr.applied_seq)
                    shas = set(s.scalars(select(OutboxRow.sha256).where(done, OutboxRow.sha256.is_not(None))))
                    s.execute(delete(OutboxRow).where(done))
                    drop_unreferenced_bodies(s, shas, self.store)

    def next_batch(self, source: str, ready: Iterable[tuple[str, str]]) -> Batch | None:
        """The next reverse batch for the mailboxes (server, address) the source is ready to replay
        (it has seeded their id map), among those failing back."""
        ready = set(ready)
        with self.store.read() as s:
            ids = [r[0] for r in s.execute(
                select(Mailbox.id, Mailbox.server, Mailbox.address)
                .join(Replica, (Mailbox.server == Replica.server) & (Mailbox.address == Replica.address))
                .where(Replica.source_id == source, Replica.site_state.in_(
                    [SiteState.FAILING_BACK.value, SiteState.SWITCHING_BACK.value]))
            ) if (r[1], r[2]) in ready]
        if not ids:
            return None
        builder = BatchBuilder(self.store, self.gateway_id, lambda shas, keys: (list(shas), list(keys)),
                               max_changes=self.max_changes, max_bytes=self.max_bytes, where=Mailbox.id.in_(ids))
        built = builder.build()
        if built is None:
            return None
        segments = []
        with self.store.read() as s:
            for seg in built.batch.segments:
                mbx = s.scalar(select(Mailbox.id).where(Mailbox.server == seg.server, Mailbox.address == seg.address))
                mids = {m for c in seg.changes for m in (c.mid, c.old_mid) if m is not None}
                alias = aliases(s, mbx, mids)
                segments.append(Segment(server=seg.server, address=seg.address, range=seg.range,
                                        changes=tuple(translate(c, alias) for c in seg.changes),
                                        captured=seg.captured))
        b = built.batch
        return Batch(source=b.source, segments=tuple(segments), messages=b.messages, parts=b.parts)

    def resync(self, source: str, server: str, address: str) -> int:
        """Start the DR capture of this mailbox from nothing; returns the sequence number after
        which the full copy follows."""
        with self.store.read() as s:
            rid = self._replica(s, source, server, address).id
        with self.locks(rid):
            with self.store.tx() as s:
                rep = s.get(Replica, rid)
                if rep.site_state not in (SiteState.FAILING_BACK.value, SiteState.SWITCHING_BACK.value):
                    raise IllegalTransition(f"a full resync of {address} needs a failback under way "
                                            f"(it is {rep.site_state})")
                dr = s.scalar(select(Mailbox).where(Mailbox.server == rep.server, Mailbox.address == rep.address))
                shas = set(s.scalars(select(OutboxRow.sha256).where(OutboxRow.mailbox_id == dr.id,
                                                                   OutboxRow.sha256.is_not(None))))
                s.execute(delete(OutboxRow).where(OutboxRow.mailbox_id == dr.id))
                drop_unreferenced_bodies(s, shas, self.store)
                drop_aliases(s, dr.id)
                CaptureState(s, dr.id).forget()
                dr.acked_seq = dr.applied_seq = dr.last_seq
                dr.phase = "seeding"
                dr.seed_msgs_total = dr.seed_msgs_done = dr.seed_bytes_total = dr.seed_bytes_done = 0
                s.add(SiteTransition(replica_id=rid, before=rep.site_state, after=rep.site_state, actor="source",
                                     detail="primary copy wiped or recreated: full resync from the standby"))
                log.warning("%s/%s: full resync of the primary from the standby", server, address)
                base, dr_id, switching = dr.last_seq, dr.id, rep.site_state == SiteState.SWITCHING_BACK.value
            if switching:  # users have left the standby: its whole content is captured once, now
                session = self.open_standby(rep)
                try:
                    self.capture.cycle(dr_id, session)
                finally:
                    session.close()
                with self.store.tx() as s:
                    s.get(Replica, rid).final_seq = s.get(Mailbox, dr_id).last_seq
            return base

    def rebase(self, source: str, server: str, address: str, *, base_seq: int, applied: int,
               born: Sequence[tuple[int, int]], report: Mapping) -> dict:
        """The source re-based its capture: rebuild the forward id map, back to replicating."""
        with self.store.read() as s:
            rid = self._replica(s, source, server, address).id
        with self.locks(rid):
            with self.store.tx() as s:
                rep = s.get(Replica, rid)
                if rep.site_state == SiteState.REPLICATING.value:
                    return dict(server=server, address=address, state=rep.site_state, status="ok",
                                note="already replicating")
                if rep.site_state != SiteState.SWITCHING_BACK.value:
                    raise IllegalTransition(f"{address} is {rep.site_state}: confirm the failback before re-basing")
                if rep.final_seq is None or applied < rep.final_seq:
                    raise IllegalTransition(f"{address}: the primary applied {applied} of {rep.final_seq} standby changes")
                dr = s.scalar(select(Mailbox).where(Mailbox.server == rep.server, Mailbox.address == rep.address))
                id_of = {dr_mid: src for src, dr_mid in born}
                id_of.update(aliases(s, dr.id))
                mapped = rebuild_from_catalog(s, rid, dr.id, id_of)
                # the standby copy's folders are the DR capture's now (users may have made or removed some)
                ReplicaFolders(s, rid).replace(s.scalars(select(FolderState.name).where(FolderState.mailbox_id == dr.id)))
                for model in (Orphan, ReplayIntent, InboxRow):
                    s.execute(delete(model).where(model.replica_id == rid))
                shas = set(s.scalars(select(OutboxRow.sha256).where(OutboxRow.mailbox_id == dr.id,
                                                                   OutboxRow.sha256.is_not(None))))
                s.delete(dr)  # the replay workers build the standby view afresh
                s.flush()
                rep.view_seq = None
                drop_unreferenced_bodies(s, shas, self.store)
                rep.received_seq = rep.applied_seq = max(base_seq, rep.applied_seq)
                rep.error = None
                full = dict(report)
                full.update(mapped_messages=mapped, finished_at=utcnow().isoformat())
                rep.failback_report = json.dumps(full)
                late = len(report.get("late", ()))
                apply_action(s, rep, "rebased", "source",
                             f"forward replication resumes at sequence {rep.applied_seq}"
                             + (f"; {late} message(s) delivered late to the primary kept" if late else ""))
                rep.cutover_seq = rep.final_seq = None
                log.info("%s/%s: failback done, replicating again (%d messages mapped)", server, address, mapped)
        return self.status(rid)

    @staticmethod
    def _replica(s, source: str, server: str, address: str) -> Replica:
        rep = s.scalar(select(Replica).where(Replica.source_id == source, Replica.server == server,
                                             Replica.address == address))
        if rep is None:
            raise IllegalTransition(f"{server}/{address} is not replicated from {source!r}")
        return rep
