"""Failback, source side: learn each mailbox's site state, replay the standby's changes on the
primary, and re-base capture when the mailbox comes home.

The puller polls the recovery gateway (the source always calls, the recovery site never needs to
reach the primary site):

1. ``GET /api/v1/ingest/sites``: every mailbox not ``replicating`` and its state. A mailbox cut
   over is no longer captured nor shipped here (``active_site = dr``): users are elsewhere.
2. For a mailbox failing back, a *reverse replica* in this gateway's own replay tables. Its id map
   is seeded from the capture catalog (the messages the standby had at cutover carry the ids this
   side gave them; messages captured after the cutover point never reached the standby and are
   left out). If the primary's copy was wiped or recreated (a folder gone, UIDVALIDITY changed),
   the recovery gateway is asked for a full resync and the id map starts empty.
3. ``POST /api/v1/ingest/reverse``: report progress, receive the next batch (the same wire
   format, the same receiver checks), replay it on the primary with the same replay engine.
4. Once the admin confirmed and every standby change is applied (``switching-back``), *re-base*:
   the primary is listed once (flags, no bodies), the catalog is rebuilt from the reverse id map
   (messages keep their ids; those born at DR get new ones, reported to the recovery gateway),
   cursors are set to the primary's current state, so the replayer's own writes are never
   captured again. Messages on the primary the standby never had (late deliveries) are kept,
   listed in the failback report and captured as new, so they reach the standby afterwards;
   late expunges, flag changes, moves and folders follow as forward changes
   (``mailrepl.gateway.late_changes``). A full resync of a partly wiped primary claims what its intact
   folders still hold (the replay's orphans) instead of writing it twice.
"""
from __future__ import annotations

import json
import logging
from typing import Mapping

from sqlalchemy import delete, select

from mailrepl.shared.engines.receiver import Receiver
from mailrepl.shared.adapters.base import Adapter
from mailrepl.shared.runtime.background import Background
from mailrepl.shared.content.bodies import BodyStore
from mailrepl.shared.capture_state import (
    CaptureState, FolderListing, Fresh, IdMap, Keep, apply_rebuild, known_folders, pair_folders, plan_rebuild,
    seed_from_catalog,
)
from mailrepl.gateway import late_changes
from mailrepl.shared.errors import MailreplError, PeerRefused
from mailrepl.shared.model import Change
from mailrepl.shared.engines.replay import ReplayEngine, ReplayReport
from mailrepl.shared.site_state import SiteState
from mailrepl.shared.store import Store
from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.outbox import drop_unreferenced_bodies
from mailrepl.shared.store.models import Mailbox, Orphan, OutboxRow, Replica
from mailrepl.shared.protocol.messages import MailboxSite, ReverseProgress
from mailrepl.shared.protocol.peer_client import HttpClient, PeerClient, as_peer_client

__all__ = ["FailbackPuller"]

log = logging.getLogger("mailrepl.failback")

DEFAULT_INTERVAL = 1.0
BACK = (SiteState.FAILING_BACK.value, SiteState.SWITCHING_BACK.value)
_PRIVATE = ("rebase", "forward", "cutover_seq")  # kept with the reverse replica, not reported
KEPT_REASON = "deleted at DR; held mail delivered to the primary after the cutover"


class FailbackPuller:
    def __init__(self, store: Store, adapters: Mapping[str, Adapter], peer: PeerClient | HttpClient, *,
                 token: str | None = None, source_id: str, bodies: BodyStore, append_batch: int = 100,
                 interval: float = DEFAULT_INTERVAL, on_rebased=lambda: None, on_resync=lambda wanted: None) -> None:
        self.store = store
        self.adapters = adapters
        self.source_id = source_id
        # the recovery gateway; an HTTP client (base URL the recovery gateway) is wrapped with ``token``
        self.peer = as_peer_client(peer, token=token, source_id=source_id)
        self.bodies = bodies
        # a folder deleted at DR keeps the late mail in it (the standby never had it) and is reported
        self.replay = ReplayEngine(store, bodies, append_batch=append_batch, keep_unknown=True)
        self.receiver = Receiver(store, bodies, lambda server: server if server in adapters else None)
        self.interval = interval
        self.on_rebased = on_rebased
        self.on_resync = on_resync  # mailboxes whose standby copy must be read again from the primary
        self.last_error: str | None = None
        self._background = Background("failback", self._loop)
        self._stop = self._background.stopping

    @property
    def wire_bytes(self) -> int:
        """Bytes of reverse batches received, as they travelled."""
        return self.peer.reverse_bytes

    # ------------------------------------------------------------------ loop

    def start(self) -> None:
        self._background.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._background.stop(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - retried next round
                if str(exc) != self.last_error:  # once per distinct problem, not every round
                    log.warning("site states / failback: %s", exc)
                self.last_error = str(exc)
            self._stop.wait(self.interval)

    def step(self) -> None:
        """One round: learn states, start failbacks, pull and replay, re-base what is done."""
        answer = self.peer.sites()
        peer, sites = answer.gateway, answer.mailboxes
        if answer.resync:
            self.on_resync(answer.resync)
        changed = self._learn(sites)
        begun = set()
        problems: list[str] = []
        for site in sites:
            if site.state in BACK and site.server in self.adapters:
                if self._each(problems, site, self._begin, peer, site):
                    begun.add((site.server, site.address))
        self._pull(peer)
        listed = {(x.server, x.address) for x in sites}
        for site in sites:
            if (site.state == SiteState.SWITCHING_BACK.value and site.server in self.adapters
                    and (site.server, site.address) not in begun):
                self._each(problems, site, self._maybe_rebase, peer, site)
        # a re-base the recovery gateway finished but whose answer was lost: ask again
        with self.store.read() as s:
            stuck = [(m.server, m.address) for m in s.scalars(select(Mailbox).where(
                Mailbox.site_state == SiteState.SWITCHING_BACK.value))]
        for server, address in stuck:
            if (server, address) not in listed:
                site = MailboxSite(server=server, address=address, state=SiteState.SWITCHING_BACK.value)
                self._each(problems, site, self._maybe_rebase, peer, site)
        if changed:
            self.on_rebased()
        if problems:  # one mailbox's trouble (its primary still down) never holds up the others
            raise MailreplError("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))

    @staticmethod
    def _each(problems: list[str], site: MailboxSite, fn, *args):
        try:
            return fn(*args)
        except MailreplError as exc:
            problems.append(f"{site.server}/{site.address}: {exc}")
            return None

    # ------------------------------------------------------------------ states

    def _learn(self, sites: list[MailboxSite]) -> bool:
        changed = False
        with self.store.tx() as s:
            for site in sites:
                mbx = s.scalar(select(Mailbox).where(Mailbox.server == site.server, Mailbox.address == site.address))
                if mbx is None or mbx.site_state == site.state:
                    continue
                log.info("%s/%s is now %s", mbx.server, mbx.address, site.state)
                mbx.site_state = site.state
                mbx.active_site = "primary" if site.state == SiteState.REPLICATING.value else "dr"
                changed = True
        return changed

    # ------------------------------------------------------------------ reverse replica

    def _reverse(self, s, peer: str, server: str, address: str) -> Replica | None:
        return s.scalar(select(Replica).where(Replica.source_id == peer, Replica.server == server,
                                              Replica.address == address))

    def _begin(self, peer: str, site: MailboxSite) -> bool:
        """Create the reverse replica of a mailbox starting to fail back; True if it did."""
        server, address = site.server, site.address
        with self.store.read() as s:
            if self._reverse(s, peer, server, address) is not None:
                return False
            mbx = s.scalar(select(Mailbox).where(Mailbox.server == server, Mailbox.address == address))
            folders = known_folders(s, mbx.id)
        session = self.adapters[server].open(address)
        try:
            wiped = []
            for f in folders:
                if f.cursor is None:
                    continue
                info = session.folder_info(f.name)
                if info is None or info.uidvalidity != f.cursor.uidvalidity:
                    wiped.append(f.name)
            # a full resync must not add again what the intact folders still hold
            present = {f.name: (f.cursor.uidvalidity, {m.uid for m in session.changes_since(f.name, None).new})
                       for f in folders if wiped and f.cursor and f.name not in wiped}
        finally:
            session.close()
        if wiped:
            log.warning("%s/%s: the primary's copy was wiped or recreated (%s): full resync",
                        server, address, ", ".join(wiped[:5]))
            base = self.peer.resync(server, address)
            with self.store.tx() as s:
                rep = Replica(source_id=peer, server=server, address=address, target=server, received_seq=base,
                              applied_seq=base, phase="resync",
                              failback_report=json.dumps({"resync": True, "wiped_folders": wiped}))
                s.add(rep)
                s.flush()
                _seed_orphans(s, rep.id, mbx.id, present, late_changes.queued_after(s, mbx.id, site.cutover_seq or 0).adds)
            return True
        with self.store.tx() as s:
            mbx = s.scalar(select(Mailbox).where(Mailbox.server == server, Mailbox.address == address))
            cutover_seq = site.cutover_seq or 0
            late = late_changes.queued_after(s, mbx.id, cutover_seq).adds  # the standby never had them
            rep = Replica(source_id=peer, server=server, address=address, target=server,
                          received_seq=site.dr_applied, applied_seq=site.dr_applied,
                          phase="failback", failback_report=json.dumps({"resync": False, "cutover_seq": cutover_seq}))
            s.add(rep)
            s.flush()
            known = seed_from_catalog(s, rep.id, mbx.id, skip=late)
        log.info("%s/%s: failing back (%d messages known on both sides)", server, address, known)
        return True

    def _pull(self, peer: str, rounds: int = 50) -> None:
        with self.store.read() as s:  # left over from a round that failed (a primary was down)
            behind = [(r.server, r.address) for r in s.scalars(select(Replica).where(
                Replica.source_id == peer, Replica.applied_seq < Replica.received_seq))]
        for server, address in behind:
            try:
                self._replay(peer, server, address)
            except MailreplError as exc:
                log.warning("failback replay of %s/%s: %s", server, address, exc)
        for _ in range(rounds):
            with self.store.read() as s:
                reps = list(s.scalars(select(Replica).where(Replica.source_id == peer)))
                progress = [ReverseProgress(server=r.server, address=r.address, received=r.received_seq,
                                            applied=r.applied_seq) for r in reps]
            if not reps:
                return
            batch = self.peer.reverse(progress)  # counted in wire_bytes
            if batch is None:
                return
            ack = self.receiver.ingest(batch)
            for res in ack.results:
                if res.status != "ok":
                    log.warning("failback batch for %s/%s: %s %s", res.server, res.address, res.status, res.detail)
            for seg in batch.segments:
                try:
                    self._replay(peer, seg.server, seg.address)
                except MailreplError as exc:  # kept, replayed next round; the others go on
                    log.warning("failback replay of %s/%s: %s", seg.server, seg.address, exc)

    def _replay(self, peer: str, server: str, address: str) -> None:
        with self.store.read() as s:
            rep = self._reverse(s, peer, server, address)
            if rep is None or rep.applied_seq >= rep.received_seq:
                return
            rid = rep.id
        session = self.adapters[server].open(address)
        report = ReplayReport()
        try:
            self.replay.replay(rid, session, report)
        finally:
            session.close()
            if report.kept_folders:  # kept already, even if a later change failed: into the failback report
                with self.store.tx() as s:
                    row = s.get(Replica, rid)
                    pending = json.loads(row.failback_report or "{}")
                    kept = {k["folder"]: k for k in pending.get("kept_folders", [])}
                    kept.update((k["folder"], dict(k, reason=KEPT_REASON)) for k in report.kept_folders)
                    row.failback_report = json.dumps(dict(pending, kept_folders=list(kept.values())))

    # ------------------------------------------------------------------ re-base

    def _maybe_rebase(self, peer: str, site: MailboxSite) -> None:
        server, address = site.server, site.address
        with self.store.read() as s:
            rep = self._reverse(s, peer, server, address)
            if rep is None:
                return
            if site.final_seq is not None and rep.applied_seq < site.final_seq:
                return  # the last standby changes are still on their way
            pending = json.loads(rep.failback_report or "{}")
            rid = rep.id
        request = pending.get("rebase") or self._rebase_locally(rid, server, address, pending)
        try:
            answer = self.peer.rebase(request)
        except PeerRefused as exc:
            if exc.status_code == 409:  # refused, so not applied there: computed again next round
                with self.store.tx() as s:  # what the first computation found (late changes) stays
                    rep = s.get(Replica, rid)
                    saved = json.loads(rep.failback_report or "{}")
                    rep.failback_report = json.dumps({k: v for k, v in saved.items() if k != "rebase"})
            raise
        with self.store.tx() as s:
            mbx = s.scalar(select(Mailbox).where(Mailbox.server == server, Mailbox.address == address).with_for_update())
            mbx.site_state, mbx.active_site, mbx.phase, mbx.error = SiteState.REPLICATING.value, "primary", "replicating", None
            # late expunges, flag changes, moves and folders follow the re-base, in order
            for d in json.loads(s.get(Replica, rid).failback_report or "{}").get("forward", []):
                ch = Change.from_dict(d)
                mbx.last_seq += 1
                s.add(OutboxRow(mailbox_id=mbx.id, seq=mbx.last_seq, change=json.dumps(d, separators=(",", ":")),
                                digest=ch.digest(), sha256=None, size=0))
            s.execute(delete(Replica).where(Replica.id == rid))
        log.info("%s/%s: failback done (%s), capturing on the primary again", server, address, answer.state)
        self.on_rebased()

    def _rebase_locally(self, rid: int, server: str, address: str, pending: dict) -> dict:
        """Rebuild capture state of the mailbox from the primary as it is now; the request for the
        recovery gateway is kept with the reverse replica, so a retry sends the same again."""
        session = self.adapters[server].open(address)
        try:
            removed = self._drop_unclaimed(rid, session)
            if removed:
                pending = dict(pending, resync_removed=removed)
            live = session.list_folders()
            metas = {f.name: session.changes_since(f.name, None) for f in live}
        finally:
            session.close()
        with self.store.tx() as s:
            rep = s.get(Replica, rid)
            mbx = s.scalar(select(Mailbox).where(Mailbox.server == server, Mailbox.address == address))
            where = {(e.folder, e.uid): e for e in IdMap(s, rid).all().values()}
            known = known_folders(s, mbx.id)
            listed = CaptureState(s, mbx.id).catalog()
            catalog = {c.mid: c for c, _, _ in listed}
            before = {c.mid: (name, c.flags) for c, name, _ in listed}
            resync = bool(pending.get("resync"))
            queued = late_changes.queued_after(s, mbx.id, int(pending.get("cutover_seq") or 0))
            at_dr = late_changes.changed_at_dr(s, rid)

            def identify(folder: str, meta):
                e = where.get((folder, meta.uid))
                if e is None or (e.mid > 0 and e.mid not in catalog):
                    return None  # not known: late, unless its GUID says it moved (below)
                return Keep(e.mid) if e.mid > 0 else Fresh(e.sha256, tag=-e.mid)  # a negative id: born at DR

            # a known message the primary moved after the source stopped (same GUID): not late
            matches, gone = pair_folders(known, live, use_fid=False)
            plan = plan_rebuild([FolderListing(m, metas[m.info.name]) for m in matches], gone, identify,
                                catalogue=catalog, guid_claimable=set(catalog) - queued.adds)
            born = list(zip(apply_rebuild(s, mbx.id, plan), (a.tag for a in plan.added)))
            now = {x.mid: (x.folder, x.flags, x.uid) for x in plan.placed}
            late = [dict(folder=name, uid=m.uid, size=m.size,
                         internaldate=m.internaldate.isoformat() if m.internaldate else None)
                    for name, m in plan.unplaced]
            # late expunges, flag changes, moves and folders: forward changes after the re-base
            forward, late_report = ([], {}) if resync else late_changes.reconcile(
                before, now, queued, at_dr, {k.name for k in known}, live)
            # the forward queue restarts after what was captured: nothing of it is sent any more
            shas = set(s.scalars(select(OutboxRow.sha256).where(OutboxRow.mailbox_id == mbx.id,
                                                               OutboxRow.sha256.is_not(None))))
            s.execute(delete(OutboxRow).where(OutboxRow.mailbox_id == mbx.id))
            drop_unreferenced_bodies(s, shas, self.store)
            mbx.acked_seq = mbx.applied_seq = mbx.last_seq
            # a retry after a refused re-base finds the catalog rebuilt: what the first run found stays
            forward = _merged(pending.get("forward", []), [c.to_dict() for c in forward])
            report = {k: v for k, v in pending.items() if k not in _PRIVATE}
            for key, found in late_report.items():
                report[key] = _merged(report.get(key, []), found)
            report.update(late=late, kept_late=len(late), reverse_changes_applied=rep.applied_seq,
                          messages_on_primary=sum(len(d.new) for d in metas.values()))
            request = dict(source=self.source_id, server=server, address=address, base_seq=mbx.last_seq,
                           applied=rep.applied_seq, born=[[mid, dr_mid] for mid, dr_mid in born], report=report)
            rep.failback_report = json.dumps(dict(pending, rebase=request, forward=forward, **{
                k: report[k] for k in late_report}))
        if late:
            log.warning("%s/%s: %d message(s) reached the primary after the cutover point and never the "
                        "standby; kept and replicated now", server, address, len(late))
        return request

    def _drop_unclaimed(self, rid: int, session) -> int:
        """After a full resync: messages of intact folders the standby did not send again were
        deleted or moved there (late deliveries are never among them); expunged here too."""
        with self.store.read() as s:
            by_folder: dict[str, list[int]] = {}
            for o in s.scalars(select(Orphan).where(Orphan.replica_id == rid)):
                by_folder.setdefault(o.folder, []).append(o.uid)
        for folder, uids in by_folder.items():
            session.expunge(folder, uids)
        if by_folder:
            with self.store.tx() as s:
                s.execute(delete(Orphan).where(Orphan.replica_id == rid))
        return sum(len(u) for u in by_folder.values())


def _seed_orphans(s, rid: int, mailbox_id: int, present: Mapping[str, tuple[int, set[int]]], late: set[int]) -> None:
    """Messages of the intact folders as the replay's orphans: the full resync's adds claim them
    (same folder, same SHA-256) instead of writing them a second time."""
    rows = []
    for c, name, _ in CaptureState(s, mailbox_id).catalog():
        uv, uids = present.get(name, (None, ()))
        if c.uid in uids and c.mid not in late:
            rows.append(dict(replica_id=rid, folder=name, uidvalidity=uv, uid=c.uid, sha256=c.sha256))
    for part in chunks(rows, 1000):
        s.execute(Orphan.__table__.insert(), part)


def _merged(first: list[dict], then: list[dict]) -> list[dict]:
    """``first`` and then what of ``then`` it does not hold already."""
    seen = {json.dumps(d, sort_keys=True) for d in first}
    return first + [d for d in then if json.dumps(d, sort_keys=True) not in seen]

