"""Where a mailbox is served from, and the legal moves between sites (pure; no I/O).

::

    replicating --cutover--> cutting-over --drained--> active-at-dr --failback--> failing-back
         ^                                                  ^   (abort)               |
         |                                                  +-------------------------+
         |                                                                            | confirm
         +------------------------ rebased ----------- switching-back <---------------+

- *replicating*: users on the primary; the source captures, the recovery gateway replays.
- *cutting-over*: the recovery gateway drains its replay queue into the standby.
- *active-at-dr*: users on the standby; the recovery gateway captures there; nothing replays
  into the standby any more (fencing), the source stops capturing.
- *failing-back*: still active at DR; the changes captured on the standby since cutover are
  replayed on the primary (the one time a gateway writes into a copy users do not use... yet).
- *switching-back*: the admin confirmed (or automatic): users go to the primary, the last standby
  changes are replayed there, then both sides re-base their id maps and forward replication
  resumes without re-seeding.

Asking for the state a mailbox is already in or moving to is a no-op (idempotent), never an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mailrepl.shared.errors import IllegalTransition

__all__ = [
    "SiteState",
    "IllegalTransition",
    "Transition",
    "next_state",
    "active_site",
    "replays_into_standby",
    "captures_at_dr",
]


class SiteState(str, Enum):
    REPLICATING = "replicating"
    CUTTING_OVER = "cutting-over"
    ACTIVE_AT_DR = "active-at-dr"
    FAILING_BACK = "failing-back"
    SWITCHING_BACK = "switching-back"


S = SiteState
# action -> {from state: to state}
_MOVES: dict[str, dict[SiteState, SiteState]] = {
    "cutover": {S.REPLICATING: S.CUTTING_OVER},
    "drained": {S.CUTTING_OVER: S.ACTIVE_AT_DR},
    "failback": {S.ACTIVE_AT_DR: S.FAILING_BACK},
    "abort-failback": {S.FAILING_BACK: S.ACTIVE_AT_DR},
    "confirm": {S.FAILING_BACK: S.SWITCHING_BACK},
    "rebased": {S.SWITCHING_BACK: S.REPLICATING},
}
# action -> states in which asking again does nothing (already done or under way)
_ALREADY: dict[str, frozenset[SiteState]] = {
    "cutover": frozenset({S.CUTTING_OVER, S.ACTIVE_AT_DR}),
    "drained": frozenset({S.ACTIVE_AT_DR}),
    "failback": frozenset({S.FAILING_BACK, S.SWITCHING_BACK}),
    "abort-failback": frozenset({S.ACTIVE_AT_DR}),
    "confirm": frozenset({S.SWITCHING_BACK}),
    "rebased": frozenset({S.REPLICATING}),
}
_WHY = {
    "cutover": "cutover is possible from replicating only",
    "drained": "only a mailbox cutting over can become active at DR",
    "failback": "failback is possible once the mailbox is active at DR (cut over first)",
    "abort-failback": "only a failback under way can be aborted",
    "confirm": "switching back needs a failback under way (start it with failback first)",
    "rebased": "only a mailbox switching back can resume replication",
}


@dataclass(frozen=True)
class Transition:
    before: SiteState
    after: SiteState

    @property
    def changed(self) -> bool:
        return self.before != self.after


def next_state(current: SiteState | str, action: str) -> Transition:
    """The state after ``action``; the same state when it was done already; else IllegalTransition."""
    cur = SiteState(current)
    if action not in _MOVES:
        raise ValueError(f"unknown action {action!r}")
    if cur in _ALREADY[action]:
        return Transition(cur, cur)
    after = _MOVES[action].get(cur)
    if after is None:
        raise IllegalTransition(f"cannot {action} a mailbox that is {cur.value}: {_WHY[action]}")
    return Transition(cur, after)


def active_site(state: SiteState | str) -> str:
    """Which site serves users: "primary" or "dr"."""
    return "primary" if SiteState(state) in (S.REPLICATING, S.SWITCHING_BACK) else "dr"


def replays_into_standby(state: SiteState | str) -> bool:
    """Fencing: the replay workers write into the standby only while users are on the primary
    (once cutting over, the cutover's own drain is the last write)."""
    return SiteState(state) == S.REPLICATING


def captures_at_dr(state: SiteState | str) -> bool:
    """The standby copy is the one users change: capture runs there."""
    return SiteState(state) in (S.ACTIVE_AT_DR, S.FAILING_BACK)
