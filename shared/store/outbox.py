"""Outbox housekeeping shared by every path that removes outbox rows (acknowledged, applied,
superseded by a re-base or a resync): a body stays while any outbox row refers to it."""
from __future__ import annotations

from typing import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mailrepl.shared.store.chunks import chunks
from mailrepl.shared.store.models import OutboxBody, OutboxRow

__all__ = ["drop_unreferenced_bodies"]


def drop_unreferenced_bodies(s: Session, shas: Iterable[str | None]) -> None:
    """Delete the outbox bodies among ``shas`` that no outbox row refers to any more."""
    for part in chunks(sorted({x for x in shas if x})):
        used = select(OutboxRow.sha256).where(OutboxRow.sha256.in_(part))
        s.execute(delete(OutboxBody).where(OutboxBody.sha256.in_(part), OutboxBody.sha256.not_in(used)))
