"""Persisted site state of replicated mailboxes: transitions with their history, and lookups.

The legal moves are ``mailrepl.shared.site_state``'s; this module applies them to ``replica`` rows and
writes one ``site_transition`` row per change (who asked, when, why). Locks per mailbox keep
the replayer, the DR capture and the cutover/failback steps of one mailbox from overlapping.
"""
from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Callable, Sequence

from sqlalchemy import insert, select, update

from mailrepl.shared.errors import MailreplError
from mailrepl.shared.model import utcnow
from mailrepl.shared.site_state import Transition, next_state
from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.models import Replica, SiteTransition

__all__ = ["apply_action", "apply_action_all", "history", "find_replicas", "find_replica_ids", "report_of", "KeyedLocks", "NoSuchMailbox"]


class NoSuchMailbox(MailreplError):
    """No replicated mailbox matches (HTTP 404)."""


def apply_action(s, rep: Replica, action: str, actor: str, detail: str | None = None) -> Transition:
    """Move ``rep`` by ``action`` (IllegalTransition if not allowed); history row if it changed."""
    t = next_state(rep.site_state, action)
    if t.changed:
        rep.site_state = t.after.value
        rep.site_since = utcnow()
        s.add(SiteTransition(replica_id=rep.id, before=t.before.value, after=t.after.value, actor=actor,
                             detail=detail))
    return t


def apply_action_all(s, states: Sequence[tuple[int, str]], action: str, actor: str,
                     detail: str | Callable[[int], str | None] | None = None) -> dict[int, Transition]:
    """``apply_action`` for many replicas ((id, current state) each) in a few statements: every
    move is checked first (IllegalTransition, nothing written, if one is not allowed), then one
    UPDATE per chunk of those that change and one INSERT of their history rows. ``detail``: a
    text, or a replica id -> text. Returns each replica's transition."""
    by_state: dict[str, Transition] = {}  # the same few states over and over: each worked out once
    moves = {rid: by_state.get(state) or by_state.setdefault(state, next_state(state, action)) for rid, state in states}
    changed = [rid for rid, t in moves.items() if t.changed]
    now = utcnow()
    by_move: dict[tuple[str, str], list[int]] = {}
    for rid in changed:
        by_move.setdefault((moves[rid].before.value, moves[rid].after.value), []).append(rid)
    for (before, after), rids in by_move.items():
        for part in chunks(rids):
            s.execute(update(Replica).where(Replica.id.in_(part), Replica.site_state == before)
                      .values(site_state=after, site_since=now).execution_options(synchronize_session=False))
    if changed:
        s.execute(insert(SiteTransition), [
            {"replica_id": rid, "before": moves[rid].before.value, "after": moves[rid].after.value, "actor": actor,
             "detail": detail(rid) if callable(detail) else detail, "at": now} for rid in changed])
    return moves


def history(s, replica_id: int) -> list[dict]:
    rows = s.scalars(select(SiteTransition).where(SiteTransition.replica_id == replica_id).order_by(SiteTransition.id))
    return [dict(before=r.before, after=r.after, actor=r.actor, detail=r.detail, at=r.at.isoformat()) for r in rows]


def find_replicas(s, *, addresses: Sequence[str] = (), server: str | None = None,
                  all_of_server: bool = False) -> list[Replica]:
    """The replicas a cutover/failback request names: addresses (optionally of one primary server)
    or every mailbox of ``server``. NoSuchMailbox names what is unknown."""
    if all_of_server:
        if not server:
            raise NoSuchMailbox("name the primary server whose mailboxes to move")
        reps = list(s.scalars(select(Replica).where(Replica.server == server).order_by(Replica.address)))
        if not reps:
            raise NoSuchMailbox(f"no mailbox of primary server {server!r} is replicated here")
        return reps
    out: list[Replica] = []
    for address in addresses:
        q = select(Replica).where(Replica.address == address)
        if server:
            q = q.where(Replica.server == server)
        found = list(s.scalars(q))
        if not found:
            raise NoSuchMailbox(f"no replicated mailbox {address!r}" + (f" of server {server!r}" if server else ""))
        if len(found) > 1:
            raise NoSuchMailbox(f"{address!r} is replicated from several servers; name one with server")
        out.append(found[0])
    return out


def find_replica_ids(s, *, addresses: Sequence[str] = (), server: str | None = None,
                     all_of_server: bool = False) -> list[int]:
    """The ids of ``find_replicas``, in the same order; every mailbox of a server without loading
    each one (10,000 of them)."""
    if not all_of_server or not server:
        return [rep.id for rep in find_replicas(s, addresses=addresses, server=server, all_of_server=all_of_server)]
    ids = list(s.scalars(select(Replica.id).where(Replica.server == server).order_by(Replica.address)))
    if not ids:
        raise NoSuchMailbox(f"no mailbox of primary server {server!r} is replicated here")
    return ids


def report_of(rep: Replica) -> dict | None:
    return json.loads(rep.failback_report) if rep.failback_report else None


class KeyedLocks:
    """One lock per key (replica id), created on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict = defaultdict(threading.Lock)

    def __call__(self, key) -> threading.Lock:
        with self._guard:
            return self._locks[key]
