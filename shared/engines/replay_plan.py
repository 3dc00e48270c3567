"""Replay planning (pure): the next contiguous run of received changes cut into groups the
server can take in one command — consecutive adds to one folder -> one MULTIAPPEND; consecutive
expunges, flag sets or moves of one folder -> one UID command. Order is never changed."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from mailrepl.shared.model import Change, Kind

__all__ = ["DEFAULT_APPEND_BATCH", "DEFAULT_APPEND_BYTES", "Group", "by_folder", "plan", "runs"]

# Messages per APPEND (MULTIAPPEND) of a replay group, within DEFAULT_APPEND_BYTES. Each group
# costs a round trip, a check of what was stored and a commit: a seed of 2,000 ordinary messages
# took 5-10 % less time at 400 than at 100, on one host and across a 40 ms link.
DEFAULT_APPEND_BATCH = 400
DEFAULT_APPEND_BYTES = 8 * 1024 * 1024
_GROUPABLE = (Kind.MSG_ADD, Kind.MSG_EXPUNGE, Kind.MSG_FLAGS, Kind.MSG_MOVE)


@dataclass
class Group:
    kind: Kind
    folder: str
    items: list[tuple[int, Change]] = field(default_factory=list)

    @property
    def first_seq(self) -> int:
        return self.items[0][0]

    @property
    def last_seq(self) -> int:
        return self.items[-1][0]


def _group_key(ch: Change) -> tuple:
    if ch.kind == Kind.MSG_FLAGS:
        return (ch.kind, ch.folder, ch.flags)
    if ch.kind == Kind.MSG_MOVE:
        return (ch.kind, ch.folder, ch.new_folder)
    return (ch.kind, ch.folder)


def plan(
    changes: Sequence[tuple[int, Change]],
    *,
    append_batch: int = DEFAULT_APPEND_BATCH,
    append_bytes: int = DEFAULT_APPEND_BYTES,
    max_group: int = 500,
) -> list[Group]:
    """Group consecutive same-kind changes of one folder; never reorders. ``changes`` must be
    contiguous and ascending by sequence number (``ValueError`` otherwise)."""
    groups: list[Group] = []
    size = 0
    prev_seq = None
    for seq, ch in changes:
        if prev_seq is not None and seq != prev_seq + 1:
            raise ValueError(f"changes not contiguous: {prev_seq} then {seq}")
        prev_seq = seq
        last = groups[-1] if groups else None
        if (
            last is not None
            and ch.kind in _GROUPABLE
            and _group_key(last.items[-1][1]) == _group_key(ch)
            and len(last.items) < (append_batch if ch.kind == Kind.MSG_ADD else max_group)
            and not (ch.kind == Kind.MSG_ADD and size + (ch.size or 0) > append_bytes)
        ):
            last.items.append((seq, ch))
            size += ch.size or 0
            continue
        groups.append(Group(ch.kind, ch.folder, [(seq, ch)]))
        size = ch.size or 0
    return groups


def by_folder(entries) -> dict[tuple[str, int], list[int]]:
    """(folder, UIDVALIDITY) -> the UIDs of ``entries`` there."""
    out: dict[tuple[str, int], list[int]] = {}
    for e in entries:
        out.setdefault((e.folder, e.uidvalidity), []).append(e.uid)
    return out


def runs(changes: Sequence[tuple[int, Change]], held: frozenset[int]) -> Iterator[tuple[bool, list[tuple[int, Change]]]]:
    """Consecutive changes cut where they switch between held and played: (held?, run)."""
    run: list[tuple[int, Change]] = []
    for item in changes:
        if run and (item[0] in held) != (run[-1][0] in held):
            yield run[-1][0] in held, run
            run = []
        run.append(item)
    if run:
        yield run[-1][0] in held, run
