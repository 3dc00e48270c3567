"""Verify one mailbox: its primary copy (read here, through the adapter) against its standby copy
(listed by the recovery gateway over the gateway link), while replication runs.

1. **Cheap pass**, per folder pair: a folder is equal without reading a body when the capture
   state is current with the primary's folder (same UIDVALIDITY, HIGHESTMODSEQ, UIDNEXT, no
   capture work pending), the standby view is current with the standby's (its cursor and the
   view matches everything applied), both hold as many messages, and the digests of what each
   catalogued (SHA-256 and flags of every message) are the same.
2. **Drill down**: every other folder is listed message by message on both sides (bodies
   streamed, hashed, dropped) and compared (``mailrepl.shared.engines.verify_compare``).
3. **In flight**: differences may be changes still in the copy queue (captured, not received) or
   the replay queue (received, not applied), or not yet captured. The check waits, up to its
   bound, until a whole capture cycle has run since and everything captured is applied at DR,
   then lists the differing folders again. A difference the first look found and every one of
   :data:`CONFIRM_LOOKS` looks found again (the queues settled before each) is reported; one that
   only a later look finds appeared while the check ran and is not; nor is a flag difference of
   a primary message changed (higher MODSEQ) after the capture cursor everything applied at DR
   reaches (flags can change back and forth). Differences whose queues never settle within the
   bound make the verdict ``in_flight``.

Verdicts: ``equal``, ``different`` (with the differences), ``in_flight``, ``error`` (with why).
A retryable failure (the recovery gateway or the server not answering in time: a link that just
came back, a busy server) starts the mailbox's check again after its back-off, up to
:data:`ATTEMPTS` times within the settle bound; only then, or at once for any other failure,
is the verdict ``error``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from sqlalchemy import select

from mailrepl.shared.adapters.base import Adapter, FolderInfo, MailboxSession
from mailrepl.shared.capture_state import known_folders, pair_folders
from mailrepl.shared.engines.verify_compare import (
    Difference, FolderSide, Listed, compare_folder, pair_folder_names, summary_digest,
)
from mailrepl.shared.engines.verify_listing import list_folder
from mailrepl.shared.errors import MailreplError
from mailrepl.shared.model import Cursor
from mailrepl.shared.protocol.messages import VerifyAnswer, VerifyFolder
from mailrepl.shared.protocol.peer_client import PeerClient
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import CatalogEntry, Mailbox

__all__ = ["MailboxVerifier", "MailboxReport", "Progress"]

log = logging.getLogger("mailrepl.verify")

SETTLE_POLL = 0.2  # seconds between looks at the queues while waiting for changes in flight
CONFIRM_LOOKS = 3  # a difference is reported once found this many times, with the queues settled between
ATTEMPTS = 3  # checks of one mailbox started, when the ones before failed for a retryable reason


@dataclass
class Progress:
    """Counters a running check advances (read by the job's status)."""

    messages_checked: int = 0

    def message(self) -> None:
        self.messages_checked += 1


@dataclass
class MailboxReport:
    server: str
    address: str
    verdict: str = "equal"
    folders_checked: int = 0
    folders_listed: int = 0
    messages_checked: int = 0
    rounds: int = 1
    error: str | None = None
    differences: list[Difference] = field(default_factory=list)
    repair: dict | None = None  # what --repair did
    mailbox_id: int | None = None
    standby_uidvalidity: dict[str, int] = field(default_factory=dict)  # of the last look, for a repair

    def as_dict(self) -> dict:
        return dict(address=self.address, server=self.server, verdict=self.verdict,
                    folders_checked=self.folders_checked, folders_listed=self.folders_listed,
                    messages_checked=self.messages_checked, rounds=self.rounds, error=self.error,
                    differences=[d.as_dict() for d in self.differences],
                    **({"repair": self.repair} if self.repair is not None else {}))


@dataclass
class _PrimaryFolder:
    info: FolderInfo
    cursor: Cursor | None
    pending: bool
    digest: str | None
    mid_of: dict[int, int]


class MailboxVerifier:
    """Checks mailboxes of the primary servers ``adapters`` against their standby copies.

    ``wake_capture(mailbox_id)`` makes the capture workers look at that mailbox now; ``cycles_caught_up``
    counts the capture cycles of a mailbox that ended caught up with its server (the capture
    engine's); ``settle_timeout`` bounds the wait for changes in flight (per mailbox)."""

    def __init__(self, store: Store, adapters: Mapping[str, Adapter], peer: PeerClient, *,
                 cycles_caught_up: Callable[[int], int], wake_capture: Callable[[int], None] = lambda _: None,
                 settle_timeout: float = 60.0) -> None:
        self.store = store
        self.adapters = adapters
        self.peer = peer
        self.cycles_caught_up = cycles_caught_up
        self.wake_capture = wake_capture
        self.settle_timeout = settle_timeout

    def verify(self, server: str, address: str, progress: Progress | None = None,
               settle_timeout: float | None = None) -> MailboxReport:
        progress = progress or Progress()
        deadline = time.monotonic() + (self.settle_timeout if settle_timeout is None else settle_timeout)
        attempt = 0
        while True:
            attempt += 1
            report = MailboxReport(server, address)
            start = progress.messages_checked
            try:
                self._verify(report, progress, max(0.0, deadline - time.monotonic()))
            except MailreplError as exc:
                report.verdict, report.error = "error", f"{exc.__class__.__name__}: {exc}"
                report.differences = []
                wait = max(exc.back_off, 1.0)
                if exc.retryable and attempt < ATTEMPTS and time.monotonic() + wait < deadline:
                    log.info("verify of %s/%s: %s; checking it again in %.0f s", server, address, report.error, wait)
                    time.sleep(wait)
                    continue
            report.messages_checked = progress.messages_checked - start
            return report

    # ------------------------------------------------------------------ the check

    def _verify(self, report: MailboxReport, progress: Progress, settle_timeout: float) -> None:
        server, address = report.server, report.address
        with self.store.read() as s:
            mbx = s.scalar(select(Mailbox).where(Mailbox.server == server, Mailbox.address == address))
            if mbx is None or not mbx.protected:
                raise MailreplError(f"mailbox {address!r} of {server!r} is not protected")
            if mbx.site_state != "replicating":
                raise MailreplError(f"mailbox {address!r} is {mbx.site_state}, not replicating: users may be at DR")
            mbx_id = report.mailbox_id = mbx.id
        adapter = self.adapters.get(server)
        if adapter is None:
            raise MailreplError(f"server {server!r} is not configured")
        session = adapter.open(address)
        try:
            deadline = time.monotonic() + settle_timeout
            diffs = self._check(report, progress, session, mbx_id, focus=None)
            looks = {_key(d): 1 for d in diffs}
            while diffs and not all(looks[_key(d)] >= CONFIRM_LOOKS for d in diffs):
                settled = self._settle(mbx_id, deadline)
                if settled is None:
                    report.verdict, report.differences = "in_flight", diffs
                    return
                report.rounds += 1
                focus = {d.folder for d in diffs} | {d.standby_folder for d in diffs if d.standby_folder}
                again = self._check(report, progress, session, mbx_id, focus=focus, settled=settled)
                # only what the first look found can be a difference: anything else appeared
                # while the check ran, i.e. changes made since, on their way
                looks = {_key(d): looks[_key(d)] + 1 for d in again if _key(d) in looks}
                diffs = [d for d in again if _key(d) in looks]
        finally:
            session.close()
        report.differences = diffs
        report.verdict = "different" if diffs else "equal"

    def _check(self, report: MailboxReport, progress: Progress, session: MailboxSession, mbx_id: int,
               focus: set[str] | None, settled: Mapping[str, Cursor] | None = None) -> list[Difference]:
        """One look at both copies: every folder's status, and the folders the cheap pass cannot
        prove equal (or, with ``focus``, those of ``focus``) message by message. ``settled``: the
        capture cursors everything up to which is applied at DR; a flag difference of a primary
        message changed after its folder's (a higher MODSEQ) is in flight, not a difference (flags
        can change back and forth, so the same difference may be seen again while in flight)."""
        primary = self._primary_folders(session, mbx_id)
        standby = self.peer.verify(report.server, report.address)
        report.standby_uidvalidity = {f.name: f.uidvalidity for f in standby.folders}
        by_name = {f.name: f for f in standby.folders}
        pairs, diffs = pair_folder_names([FolderSide(n) for n in primary],
                                         [FolderSide(f.name, f.known_as) for f in standby.folders])
        if focus is None:
            report.folders_checked = len(pairs)
        for p_name, s_name in pairs:
            if focus is not None and p_name not in focus and s_name not in focus:
                continue
            p, s = primary[p_name], by_name[s_name]
            if focus is None and _cheap_equal(p, s, standby):
                progress.messages_checked += p.info.messages  # proven equal by their digests
                continue
            report.folders_listed += 1
            p_msgs = list_folder(session, p_name, p.mid_of, on_message=progress.message)
            s_msgs = _standby_messages(self.peer.verify(report.server, report.address, [s_name]), s_name)
            if p_msgs is None or s_msgs is None:  # gone meanwhile: the next look sees the folders as they are
                diffs.append(Difference("folder_missing" if p_msgs is not None else "folder_extra", p_name,
                                        standby_folder=s_name, detail="gone while it was being listed"))
                continue
            found = compare_folder(p_name, s_name, p_msgs, s_msgs)
            if settled is not None:
                modseq = {m.uid: m.modseq for m in p_msgs}
                found = [d for d in found if not _flags_changed_since(d, modseq, settled.get(p_name))]
            diffs.extend(found)
        if focus is not None:
            diffs = [d for d in diffs if d.folder in focus or (d.standby_folder or "") in focus
                     or d.kind in ("folder_missing", "folder_extra")]
        return diffs

    def _primary_folders(self, session: MailboxSession, mbx_id: int) -> dict[str, _PrimaryFolder]:
        live = session.list_folders()
        with self.store.read() as s:
            known = known_folders(s, mbx_id)
            rows: dict[int, list[tuple[int, int, str, str]]] = {}
            for folder_id, mid, uid, sha, flags in s.execute(
                    select(CatalogEntry.folder_id, CatalogEntry.mid, CatalogEntry.uid, CatalogEntry.sha256,
                           CatalogEntry.flags).where(CatalogEntry.mailbox_id == mbx_id)):
                rows.setdefault(folder_id, []).append((mid, uid, sha, flags))
        matches, _ = pair_folders(known, live, session.features.folder_id)
        out = {}
        for m in matches:
            k = m.known
            entries = rows.get(k.id, []) if k is not None else []
            same_copy = k is not None and k.cursor is not None and k.cursor.uidvalidity == m.info.uidvalidity
            out[m.info.name] = _PrimaryFolder(
                info=m.info, cursor=k.cursor if k is not None else None, pending=k is None or k.pending,
                digest=summary_digest((sha, flags) for _, _, sha, flags in entries) if k is not None else None,
                mid_of={uid: mid for mid, uid, _, _ in entries} if same_copy else {})
        return out

    def _settle(self, mbx_id: int, deadline: float) -> dict[str, Cursor] | None:
        """Wait until a whole capture cycle ran from now and every change it captured is applied
        at DR; the capture cursors of the folders then (by name: everything up to them is applied),
        or None if that does not happen before ``deadline``."""
        def look() -> tuple:
            with self.store.read() as s:
                m = s.get(Mailbox, mbx_id)
                return m.last_capture_at, m.last_seq, m.applied_seq

        start = done = self.cycles_caught_up(mbx_id)
        self.wake_capture(mbx_id)
        while done < start + 2:  # the first cycle to end may have started before now
            if time.monotonic() >= deadline:
                return None
            time.sleep(SETTLE_POLL)
            now = self.cycles_caught_up(mbx_id)
            if now != done:
                done = now
                self.wake_capture(mbx_id)
        with self.store.read() as s:  # the cursors and what they were captured up to, as one snapshot
            target = s.get(Mailbox, mbx_id).last_seq  # later changes are not waited for
            cursors = {k.name: k.cursor for k in known_folders(s, mbx_id) if k.cursor is not None}
        while True:
            applied = look()[2]
            if applied >= target:
                return cursors
            if time.monotonic() >= deadline:
                return None
            time.sleep(SETTLE_POLL)


def _cheap_equal(p: _PrimaryFolder, s: VerifyFolder, standby: VerifyAnswer) -> bool:
    """The cheap pass: both states current with their servers and the same digest."""
    live = p.info
    if p.pending or p.cursor is None or p.digest is None or s.view_digest is None or s.view_cursor is None:
        return False
    if (p.cursor.uidvalidity, p.cursor.highestmodseq, p.cursor.uidnext) != (
            live.uidvalidity, live.highestmodseq, live.uidnext):
        return False
    try:
        view = Cursor.parse(s.view_cursor)
    except ValueError:
        return False
    return (standby.view_fresh and s.known_as == s.name
            and (view.uidvalidity, view.highestmodseq, view.uidnext) == (s.uidvalidity, s.highestmodseq, s.uidnext)
            and live.messages == s.messages and p.digest == s.view_digest)


def _flags_changed_since(d: Difference, modseq: Mapping[int, int], mark: Cursor | None) -> bool:
    """A flag difference of a primary message changed after ``mark`` (None: its folder had no
    capture cursor then) was changed while the check ran: in flight."""
    if d.kind != "flags":
        return False
    return mark is None or modseq.get(d.primary_uid or 0, 0) > mark.highestmodseq


def _standby_messages(answer: VerifyAnswer, name: str) -> list[Listed] | None:
    for f in answer.folders:
        if f.name == name:
            if f.messages_listed is None:
                return None
            return [Listed(uid=e.uid, sha256=e.sha256, flags=frozenset(e.flags), internaldate=e.internaldate,
                           mid=e.mid, message_id=e.message_id) for e in f.messages_listed]
    return None


def _key(d: Difference) -> tuple:
    return (d.kind, d.folder, d.standby_folder, d.sha256, d.primary_uid, d.standby_uid,
            d.detail if d.kind in ("flags", "internal_date") else "")
