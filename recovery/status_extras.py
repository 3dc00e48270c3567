"""What history, the mass-delete guard and lagged copies add to a mailbox's status on the
recovery gateway (``history_bytes``, ``held_deletions``, ``replay_delay_seconds``,
``delayed_changes``): for one replica (its detail) or for every one of a listing at once (a few
queries whatever the number of mailboxes, the same values)."""
from __future__ import annotations

from collections.abc import Sequence

from mailrepl.recovery.delete_guard import DeleteGuard
from mailrepl.recovery.history import HistoryKeeper, HistorySpace
from mailrepl.recovery.replay_gate import ReplayGate

__all__ = ["StatusExtras"]


class StatusExtras:
    def __init__(self, history: HistoryKeeper, guard: DeleteGuard, gate: ReplayGate, lagged: bool) -> None:
        self.history, self.guard, self.gate = history, guard, gate
        self.lagged = lagged  # some mailbox has a replay delay ([lag])

    def of(self, rid: int) -> dict:
        guard = self.guard.status(rid)
        lag = self.gate.waiting(rid) if self.lagged else None
        return _fields(self.history.space(rid), guard["held"] if guard is not None else None, lag)

    def of_all(self, replicas: Sequence[tuple[int, str, str]]) -> dict[int, dict]:
        """(replica id, server, address) -> the same fields as :meth:`of`, for each of ``replicas``."""
        held = self.guard.held_counts()  # a replica tripped or holding changes; others: None
        lags = self.gate.waiting_all(replicas) if self.lagged else {}
        return {rid: _fields(self.history.space_of(rid, server, address), held.get(rid), lags.get(rid))
                for rid, server, address in replicas}


def _fields(space: HistorySpace | None, held: int | None, lag: dict | None) -> dict:
    return {"history_bytes": space.total_bytes if space is not None else None,
            "held_deletions": held,
            "replay_delay_seconds": lag["replay_delay_seconds"] if lag else None,
            "delayed_changes": lag["not_yet_due"] if lag else None}
