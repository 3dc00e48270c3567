"""Protected mailboxes of the source gateway: discovery, protection toggles and status views."""
from __future__ import annotations

import json
import logging
from typing import Mapping

from sqlalchemy import case, func, literal, select, update

from mailrepl.shared.adapters.base import Adapter
from mailrepl.shared.engines.queue_gate import QueueGate, QueueUsage
from mailrepl.shared.runtime.api_common import ByteCounts, FolderStatus, MailboxDetail, MailboxStatus, RejectedInfo, SeedingProgress
from mailrepl.shared.errors import AdapterError, DiskFull, MailboxNotFound, MailreplError
from mailrepl.shared.model import UidSet, utcnow
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import FolderState, Mailbox, OutboxRow

__all__ = ["Registry", "NotFound", "Ambiguous"]

log = logging.getLogger("mailrepl.registry")


def dr_problem(dr_error: str | None) -> str | None:
    """What blocks the mailbox at the DR site (the recovery gateway's replay), as shown here."""
    return f"at the DR site: {dr_error}" if dr_error else None


class NotFound(MailreplError):
    """No such server or mailbox (HTTP 404)."""


class Ambiguous(MailreplError):
    """The address exists on several servers; the request must name one (HTTP 409)."""


class Registry:
    def __init__(self, store: Store, adapters: Mapping[str, Adapter], shipper_error=lambda: None,
                 queue_fields=None) -> None:
        self.store = store
        self.adapters = adapters
        self.shipper_error = shipper_error
        # (QueueUsage, protected, site_state) -> back-pressure fields of a status, or None
        self.queue_fields = queue_fields
        # (server, address) -> None, called before the first mailbox of a server is protected
        self.before_first_protection = None

    # ------------------------------------------------------------------ discovery

    def discover(self) -> int:
        """Register every mailbox the servers can list (configured user lists); returns how many are new."""
        added = 0
        for name, adapter in self.adapters.items():
            try:
                listed = adapter.list_mailboxes() or []
            except AdapterError as exc:
                log.warning("server %s: cannot list mailboxes: %s", name, exc)
                continue
            with self.store.tx() as s:
                known = set(s.scalars(select(Mailbox.address).where(Mailbox.server == name)))
                for address in listed:
                    if address not in known:
                        s.add(Mailbox(server=name, address=address))
                        added += 1
        return added

    def resolve(self, address: str, server: str | None) -> tuple[str, str]:
        """(server, address) for a request; raises NotFound / Ambiguous with a clear message."""
        if server is not None:
            if server not in self.adapters:
                raise NotFound(f"unknown server {server!r} (configured: {', '.join(sorted(self.adapters))})")
            return server, address
        with self.store.read() as s:
            servers = sorted(set(s.scalars(select(Mailbox.server).where(Mailbox.address == address))))
        servers = [x for x in servers if x in self.adapters]
        if len(servers) > 1:
            raise Ambiguous(f"{address!r} exists on servers {', '.join(servers)}; name one with ?server=")
        if servers:
            return servers[0], address
        if len(self.adapters) == 1:
            return next(iter(self.adapters)), address
        raise NotFound(f"no configured server lists mailbox {address!r}; name the server with ?server=")

    # ------------------------------------------------------------------ protection

    def set_protection(self, server: str, address: str, enabled: bool) -> MailboxStatus:
        with self.store.read() as s:
            mbx = s.scalar(select(Mailbox).where(Mailbox.server == server, Mailbox.address == address))
        if mbx is None:
            if not enabled:
                raise NotFound(f"mailbox {address!r} is not known on server {server!r}")
            self._check_exists(server, address)
            with self.store.tx() as s:
                s.add(Mailbox(server=server, address=address))
        if enabled and self.before_first_protection is not None:
            with self.store.read() as s:
                first = not s.scalar(select(func.count()).select_from(Mailbox).where(Mailbox.server == server,
                                                                                    Mailbox.protected.is_(True)))
            if first:
                self.before_first_protection(server, address)  # the pre-flight check (never raises)
        with self.store.tx() as s:
            mbx = s.scalar(select(Mailbox).where(Mailbox.server == server, Mailbox.address == address))
            if enabled and not mbx.protected:
                seeded = s.scalar(select(func.count()).select_from(FolderState).where(FolderState.mailbox_id == mbx.id))
                mbx.protected = True
                mbx.phase = "replicating" if seeded else "seeding"
                mbx.error = None
                if not seeded:
                    mbx.seed_msgs_total = mbx.seed_msgs_done = mbx.seed_bytes_total = mbx.seed_bytes_done = 0
                log.info("protection enabled for %s/%s", server, address)
            elif not enabled and mbx.protected:
                mbx.protected = False
                mbx.phase = "idle"
                log.info("protection disabled for %s/%s", server, address)
            return self._status(s, mbx)

    def set_server_protection(self, server: str, enabled: bool) -> list[MailboxStatus]:
        if server not in self.adapters:
            raise NotFound(f"unknown server {server!r} (configured: {', '.join(sorted(self.adapters))})")
        self.discover()
        # every mailbox of the server in one transaction (10,000 mailboxes: one flush, not 10,000)
        on_server = Mailbox.server == server
        with self.store.tx() as s:
            if enabled:
                seeded = select(FolderState.mailbox_id).distinct()
                todo = on_server & Mailbox.protected.is_(False)
                changed = s.execute(update(Mailbox).where(todo, Mailbox.id.in_(seeded))
                                    .values(protected=True, phase="replicating", error=None)).rowcount or 0
                changed += s.execute(update(Mailbox).where(todo, Mailbox.id.not_in(seeded))
                                     .values(protected=True, phase="seeding", error=None, seed_msgs_total=0,
                                             seed_msgs_done=0, seed_bytes_total=0, seed_bytes_done=0)).rowcount or 0
            else:
                changed = s.execute(update(Mailbox).where(on_server, Mailbox.protected.is_(True))
                                    .values(protected=False, phase="idle")).rowcount or 0
        log.info("protection %s for %d mailbox(es) of server %s", "enabled" if enabled else "disabled", changed, server)
        return sorted((st for st in self.list_status() if st.server == server), key=lambda st: st.address)

    def _check_exists(self, server: str, address: str) -> None:
        adapter = self.adapters[server]
        listed = adapter.list_mailboxes()
        try:
            session = adapter.open(address)
        except MailboxNotFound as exc:
            raise NotFound(f"server {server!r} has no mailbox {address!r}: {exc}") from exc
        session.close()
        if listed is not None and address not in listed:
            log.info("%s/%s is not in the configured user list but the server has it", server, address)

    # ------------------------------------------------------------------ status

    def list_status(self) -> list[MailboxStatus]:
        """Every mailbox's status in one query (the same values as ``_status``: 10,000 mailboxes
        are listed for the console and ``/metrics`` in a fraction of what loading each costs)."""
        oldest = (select(OutboxRow.created_at)
                  .where(OutboxRow.mailbox_id == Mailbox.id, OutboxRow.seq == Mailbox.applied_seq + 1)
                  .correlate(Mailbox).scalar_subquery())
        queued = (select(func.coalesce(func.sum(OutboxRow.size), 0)).where(OutboxRow.mailbox_id == Mailbox.id)
                  .correlate(Mailbox).scalar_subquery())
        m = Mailbox
        q = select(m.server, m.address, m.protected, m.phase, m.active_site, m.last_seq, m.acked_seq, m.applied_seq,
                   m.error, m.ship_error, m.rejected, m.captured_bytes, m.shipped_raw_bytes, m.shipped_payload_bytes,
                   m.shipped_wire_bytes, m.site_state, m.dr_error,
                   case((m.applied_seq < m.last_seq, oldest), else_=None),
                   queued if self.queue_fields is not None else literal(0)).order_by(m.server, m.address)
        now = utcnow()
        out = []
        shipper_error = None
        with self.store.read() as s:
            rows = s.execute(q).all()
        for (server, address, protected, phase, active_site, last, acked, applied, error, ship_error, rejected,
             captured, raw, payload, wire, site_state, dr_error, since, queued_bytes) in rows:
            lag = 0.0
            if since is not None:
                if since.tzinfo is None:
                    since = since.replace(tzinfo=now.tzinfo)
                lag = max(0.0, (now - since).total_seconds())
            shown = ship_error or error or dr_problem(dr_error)
            if shown is None and acked < last:
                shipper_error = shipper_error or self.shipper_error() or ""
                shown = shipper_error or None
            if error or ship_error or dr_error:
                phase = "error"
            elif not protected:
                phase = "idle"
            # built from our own typed columns: not validated again (10,000 mailboxes: 0.2 s saved)
            counts = ByteCounts.model_construct(
                captured=captured, shipped_raw=raw, sent_before_compression=payload, wire=wire,
                saved_by_dedup=max(0, raw - payload), saved_by_compression=max(0, payload - wire))
            out.append(MailboxStatus.model_construct(
                address=address, server=server, protected=protected, phase=phase,
                active_site="primary" if active_site == "primary" else "dr",
                copy_queue=last - acked, replay_queue=acked - applied, lag_seconds=round(lag, 3),
                last_captured_seq=last, last_applied_seq=applied, error=shown,
                rejected=len(json.loads(rejected)) if rejected else 0, bytes=counts, site_state=site_state,
                **(self.queue_fields(QueueUsage(max(0, last - applied), int(queued_bytes or 0)), protected, site_state)
                   if self.queue_fields is not None else {})))
        return out

    def detail(self, server: str, address: str) -> MailboxDetail:
        with self.store.read() as s:
            mbx = s.scalar(select(Mailbox).where(Mailbox.server == server, Mailbox.address == address))
            if mbx is None:
                raise NotFound(f"mailbox {address!r} is not known on server {server!r}")
            base = self._status(s, mbx)
            folders = [
                FolderStatus(
                    name=f.name, cursor=f.cursor, messages=f.messages,
                    pending=len(UidSet.parse(f.pending_uids)) if f.pending_uids else 0,
                )
                for f in s.scalars(select(FolderState).where(FolderState.mailbox_id == mbx.id).order_by(FolderState.name))
            ]
            rejected = [RejectedInfo(**r) for r in json.loads(mbx.rejected or "[]")]
            return MailboxDetail(
                **base.model_dump(),
                folders=folders,
                seeding=SeedingProgress(
                    messages_done=mbx.seed_msgs_done, messages_total=mbx.seed_msgs_total,
                    bytes_done=mbx.seed_bytes_done, bytes_total=mbx.seed_bytes_total,
                ),
                rejected_messages=rejected,
            )

    def _status(self, s, mbx: Mailbox) -> MailboxStatus:
        lag = 0.0
        if mbx.applied_seq < mbx.last_seq:
            oldest = s.scalar(
                select(OutboxRow.created_at).where(OutboxRow.mailbox_id == mbx.id, OutboxRow.seq == mbx.applied_seq + 1)
            )
            if oldest is not None:
                if oldest.tzinfo is None:
                    oldest = oldest.replace(tzinfo=utcnow().tzinfo)
                lag = max(0.0, (utcnow() - oldest).total_seconds())
        error = mbx.ship_error or mbx.error or dr_problem(mbx.dr_error)
        if error is None and mbx.acked_seq < mbx.last_seq:
            error = self.shipper_error()
        phase = mbx.phase if mbx.protected else "idle"
        if mbx.error or mbx.ship_error or mbx.dr_error:
            phase = "error"
        return MailboxStatus(
            address=mbx.address,
            server=mbx.server,
            protected=mbx.protected,
            phase=phase,
            active_site="primary" if mbx.active_site == "primary" else "dr",
            copy_queue=mbx.last_seq - mbx.acked_seq,
            replay_queue=mbx.acked_seq - mbx.applied_seq,
            lag_seconds=round(lag, 3),
            last_captured_seq=mbx.last_seq,
            last_applied_seq=mbx.applied_seq,
            error=error,
            rejected=len(json.loads(mbx.rejected or "[]")),
            bytes=ByteCounts.of(mbx.captured_bytes, mbx.shipped_raw_bytes, mbx.shipped_payload_bytes,
                                mbx.shipped_wire_bytes),
            site_state=mbx.site_state,
            **(self.queue_fields(QueueGate.usage_of(s, mbx), mbx.protected, mbx.site_state)
               if self.queue_fields is not None else {}),
        )

    def record_error(self, mailbox_id: int, exc: BaseException) -> None:
        if isinstance(exc, DiskFull):
            return  # nothing can be written now (the alarm is the queue gate's)
        with self.store.tx() as s:
            mbx = s.get(Mailbox, mailbox_id)
            if mbx is not None:
                mbx.error = f"{exc.__class__.__name__}: {exc}"
                mbx.last_capture_at = utcnow()
