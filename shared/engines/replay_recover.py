"""Replay's crash recovery: a write of messages whose bookkeeping a crash cut off.

A group that creates messages (add, replace, move) first commits a ``replay_intent`` (folder,
UIDVALIDITY, UIDNEXT before the write). If the process died after the server stored the
messages but before the id map was recorded, the messages at UID >= that UIDNEXT are read back,
matched by SHA-256 (or a form the standby may have stored the body in) to the intended changes
and recorded instead of written again; a move cut between its copy and its expunge loses its
original. The intent is removed in the same transaction."""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence

from sqlalchemy import bindparam, delete, select

from mailrepl.shared.adapters.base import MailboxSession
from mailrepl.shared.capture_state import IdMap, MapEntry
from mailrepl.shared.content.standby_copy import standby_forms
from mailrepl.shared.engines.replay_journal import PassJournal
from mailrepl.shared.model import Change, Kind
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import InboxRow, ReplayIntent

__all__ = ["reconcile"]

log = logging.getLogger("mailrepl.replay")

_INTENT = ReplayIntent.__table__
_INTENT_ROW = select(_INTENT).where(_INTENT.c.replica_id == bindparam("rid"))


def reconcile(store: Store, load_bodies: Callable[[Sequence[str]], dict[str, bytes]], rid: int,
              session: MailboxSession, journal: PassJournal, intent=None) -> int:
    """Recover replica ``rid`` from a crash between a write and its bookkeeping (``intent``: its
    intent row, when the caller has just read it; else looked up here). Returns how many
    messages were found written and recorded."""
    with store.read() as s:
        if intent is None:
            intent = s.execute(_INTENT_ROW, {"rid": rid}).first()
        if intent is None:
            return 0
        journal.void()  # recovering from a crash: the view reads the copy back
        rows = list(
            s.scalars(
                select(InboxRow.change).where(
                    InboxRow.replica_id == rid, InboxRow.seq >= intent.first_seq, InboxRow.seq <= intent.last_seq
                ).order_by(InboxRow.seq)
            )
        )
        folder, uv, uidnext = intent.folder, intent.uidvalidity, intent.uidnext
        wanted: list[tuple[int, str]] = []  # (mid, sha) in order
        moving: dict[int, MapEntry] = {}  # mid -> where a move took the message from
        mapped = IdMap(s, rid).all()
        for text in rows:
            ch = Change.from_dict(json.loads(text))
            if ch.kind.carries_body and ch.mid not in mapped:
                wanted.append((ch.mid, ch.sha256))
            elif ch.kind == Kind.MSG_MOVE and ch.mid in mapped and mapped[ch.mid].folder != folder:
                wanted.append((ch.mid, mapped[ch.mid].sha256))
                moving[ch.mid] = mapped[ch.mid]
    found: list[MapEntry] = []
    info = session.folder_info(folder)
    if wanted and info is not None and info.uidvalidity == uv and info.uidnext > uidnext:
        on_server = [
            (m.uid, hashlib.sha256(m.body).hexdigest())
            for m in session.fetch(folder, list(range(uidnext, info.uidnext)))
        ]
        used: set[int] = set()
        forms: dict[str, set[str]] = {}  # the forms the standby may have stored a body in
        for mid, sha in wanted:
            for exact in (True, False):
                if not exact and sha not in forms:
                    body = load_bodies([sha]).get(sha) if any(u not in used for u, _ in on_server) else None
                    forms[sha] = set(standby_forms(body)) if body is not None else set()
                hit = next((uid for uid, got in on_server if uid not in used
                            and (got == sha if exact else got in forms[sha])), None)
                if hit is not None:
                    used.add(hit)
                    found.append(MapEntry(mid=mid, folder=folder, uidvalidity=uv, uid=hit, sha256=sha))
                    break
    # a move is a copy and an expunge: a crash between them leaves the message in both
    # folders; the copy is the one kept (found above), the original goes now
    left: dict[str, list[MapEntry]] = {}
    for e in found:
        old = moving.get(e.mid)
        if old is not None:
            left.setdefault(old.folder, []).append(old)
    for src, olds in left.items():
        src_info = session.folder_info(src)
        stale = [o.uid for o in olds if src_info is not None and o.uidvalidity == src_info.uidvalidity]
        if stale:
            session.expunge(src, stale)  # a no-op for the UIDs the move did expunge
    with store.tx() as s:
        IdMap(s, rid).put(found)
        s.execute(delete(ReplayIntent).where(ReplayIntent.replica_id == rid))
    if found:
        log.info("recovered %d message(s) written before a crash in %r", len(found), folder)
    return len(found)
