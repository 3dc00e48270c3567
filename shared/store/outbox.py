"""Outbox housekeeping shared by every path that removes outbox rows (acknowledged, applied,
superseded by a re-base or a resync): a body stays while any outbox row refers to it, a spool
segment while any body is stored in it."""
from __future__ import annotations

from typing import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mailrepl.shared.store.db import Store
from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.models import OutboxBody, OutboxRow

__all__ = ["drop_unreferenced_bodies", "spooled_segments", "sweep_spool"]


def drop_unreferenced_bodies(s: Session, shas: Iterable[str | None], store: Store) -> None:
    """Delete the outbox bodies among ``shas`` that no outbox row refers to any more; the spool
    segments that held the last of them are removed once the transaction has committed durably
    (``Store.once_durable``)."""
    spool = store.spool
    touched: set[str] = set()
    for part in chunks(sorted({x for x in shas if x})):
        used = select(OutboxRow.sha256).where(OutboxRow.sha256.in_(part))
        gone = OutboxBody.sha256.in_(part) & OutboxBody.sha256.not_in(used)
        if spool is not None:  # without one no segment can be removed: not asked
            touched.update(s.scalars(select(OutboxBody.segment)
                                     .where(gone, OutboxBody.segment.is_not(None)).distinct()))
        s.execute(delete(OutboxBody).where(gone))
    emptied = set(touched)
    for part in chunks(sorted(touched)):
        emptied.difference_update(s.scalars(select(OutboxBody.segment).where(OutboxBody.segment.in_(part)).distinct()))
    if emptied:
        names = sorted(emptied)
        store.once_durable(s, lambda: spool.discard(names))


def spooled_segments(s: Session) -> set[str]:
    """The segments some outbox body is stored in (what a spool sweep keeps)."""
    return set(s.scalars(select(OutboxBody.segment).where(OutboxBody.segment.is_not(None)).distinct()))


def sweep_spool(store: Store) -> list[str]:
    """Remove the spool segments no outbox body is stored in (a crash between a segment's write
    and its commit); the names removed. Only while nothing writes to the outbox (start-up)."""
    if store.spool is None:
        return []
    with store.read() as s:
        keep = spooled_segments(s)
    return store.spool.sweep(keep)
