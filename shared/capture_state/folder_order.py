"""The order of one capture cycle's folder renames and creates (pure; no I/O).

Between two cycles a user may rename A to B and create a new A, rename A to C and B to A, swap
A and B through a name of their own, rename a parent and create a new parent of the old name
with children, or delete A and rename B to A. The cycle sees only the end: which known folder
has which name now, and which names are new. Applied naively (each known folder to its new
name, then the creates) a step takes a name still in use: the capture state's unique folder
names refuse it, and so does the standby (an IMAP RENAME onto an existing folder fails, a CREATE
of one is a no-op that loses the new folder).

:func:`order_folder_steps` gives steps each of which takes a free name, as both the capture state
and an IMAP server apply them: a rename takes the folder's subfolders with it (so a child whose
parent was renamed is already where it should be), a create makes one folder. Parents are placed
before children. Where every step left waits for a name another one holds (a swap, a cycle of
renames, a deleted folder whose name is reused, a folder renamed into a new folder of its old
name), the holder first moves to a temporary name no user folder has; a deleted folder stays
there until it is deleted (after the moves out of it), any other goes on to its own name.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["TEMP_PREFIX", "FolderStep", "order_folder_steps"]

TEMP_PREFIX = "mailrepl-renaming-"


@dataclass(frozen=True)
class FolderStep:
    """Rename known folder ``row`` (and its subfolders) from ``old`` to ``new``, or, with ``row``
    and ``old`` None, create folder ``new``."""

    row: int | None
    old: str | None
    new: str


def _depth(name: str) -> int:
    return name.count("/")


def _under(name: str, top: str) -> bool:
    return name == top or name.startswith(top + "/")


def order_folder_steps(names: Mapping[int, str], targets: Mapping[int, str], creates: Iterable[str],
                       temp_name: Callable[[], str] | None = None) -> list[FolderStep]:
    """Steps that take every known folder ``names`` (id -> name now) that has a target
    (``targets``: id -> name it must have) to it and create each of ``creates``, every step onto
    a free name. Known folders without a target were deleted (or are left as they are): they
    move only to free a name, to a temporary one. ``temp_name`` makes temporary names (default:
    ``TEMP_PREFIX`` and random hex), each checked against every name in play."""
    cur = dict(names)
    want = dict(targets)
    todo = sorted(set(creates), key=lambda n: (_depth(n), n))
    taken = set(cur.values()) | set(want.values()) | set(todo)
    steps: list[FolderStep] = []

    def fresh() -> str:
        while True:
            name = temp_name() if temp_name else TEMP_PREFIX + secrets.token_hex(6)
            if not any(_under(n, name) for n in taken):
                taken.add(name)
                return name

    def blockers(row: int | None, new: str) -> list[int]:
        """Known folders holding a name the step would take (the folder itself, if it would go
        inside itself)."""
        if row is None:
            return [r for r, n in cur.items() if n == new]
        old = cur[row]
        if _under(new, old):
            return [row]
        moved = [r for r, n in cur.items() if _under(n, old)]
        landing = {new + cur[r][len(old):] for r in moved}
        return [r for r, n in cur.items() if n in landing and r not in moved]

    def rename(row: int, new: str) -> None:
        old = cur[row]
        for r, n in cur.items():
            if _under(n, old):
                cur[r] = new + n[len(old):]
        steps.append(FolderStep(row, old, new))

    limit = 4 * (len(cur) + len(todo)) + 8
    while len(steps) <= limit:
        # what is left: (depth of the name it takes, name, a create?, known folder (0: none))
        left = sorted([(_depth(t), t, False, r) for r, t in want.items() if cur[r] != t]
                      + [(_depth(n), n, True, 0) for n in todo])
        if not left:
            return steps
        level = [x for x in left if x[0] == left[0][0]]
        for _, name, create, r in level:
            if not blockers(None if create else r, name):
                break
        else:
            _, name, create, r = level[0]
            holder = blockers(None if create else r, name)[0]
            # the holder goes straight to its own name if that is free, else out of the way
            own = want.get(holder)
            if own is not None and cur[holder] != own and not blockers(holder, own):
                rename(holder, own)
            else:
                rename(holder, fresh())
            continue
        if create:
            todo.remove(name)
            made = -1 - len(steps)  # known from now on, under an id no stored folder has
            cur[made] = want[made] = name  # moved with a parent that moves, it is moved back
            steps.append(FolderStep(None, None, name))
        else:
            rename(r, name)
    raise RuntimeError(f"folder renames found no order: {dict(names)} -> {dict(targets)}, new {sorted(creates)}")
