"""Changes that reached the primary after the cutover point and never the standby, found when a
mailbox is re-based at the end of failback, and the forward changes that bring the standby to
the primary's state.

The standby's changes were replayed on the primary first, so the primary now holds both sides'
work; what the standby lacks is the late part. Two sources tell what may differ: the copy queue
(changes the source captured after the cutover point, never shipped) and the primary's state
compared with the capture catalog (changes made after the source stopped capturing). Rules:

- a message delivered late is kept and replicated (captured as new; listed as ``late``);
- a late expunge is kept: the message is expunged on the standby too (an expunge wins over a
  change made on the other side, as in dsync; such a conflict is listed);
- a late flag change or move is kept, unless users changed the same message at DR: their change
  was replayed last and wins (a conflict the copy queue shows is listed);
- a folder created late is created on the standby; one deleted late is deleted there (a folder
  that received anything from the standby exists on the primary, so it is never deleted).

A message id the standby does not know makes a forward change a no-op there, so the candidates
may be generous; the report lists only what was really late.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from sqlalchemy import select

from mailrepl.shared.adapters.base import FolderInfo
from mailrepl.shared.model import Change, Kind
from mailrepl.shared.store.models import InboxRow, OutboxRow

__all__ = ["Queued", "queued_after", "changed_at_dr", "reconcile"]


@dataclass
class Queued:
    """The copy queue: changes captured after the cutover point."""

    adds: set[int] = field(default_factory=set)  # messages the standby never had
    mids: dict[int, str] = field(default_factory=dict)  # message -> folder of a later change to it
    created: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)


def queued_after(s, mailbox_id: int, seq: int) -> Queued:
    q = Queued()
    for text in s.scalars(select(OutboxRow.change).where(OutboxRow.mailbox_id == mailbox_id, OutboxRow.seq > seq)
                          .order_by(OutboxRow.seq)):
        ch = Change.from_dict(json.loads(text))
        if ch.kind.carries_body:
            q.adds.add(ch.mid)
            if ch.kind == Kind.MSG_REPLACE and ch.old_mid is not None and ch.old_mid not in q.adds:
                q.mids.setdefault(ch.old_mid, ch.folder)
        elif ch.kind in (Kind.MSG_EXPUNGE, Kind.MSG_FLAGS, Kind.MSG_MOVE) and ch.mid not in q.adds:
            q.mids.setdefault(ch.mid, ch.folder)
        elif ch.kind == Kind.FOLDER_CREATE:
            q.created.add(ch.folder)
        elif ch.kind == Kind.FOLDER_RENAME:
            q.deleted.add(ch.folder)
            q.created.add(ch.new_folder)
        elif ch.kind == Kind.FOLDER_DELETE:
            q.deleted.add(ch.folder)
    return q


def changed_at_dr(s, replica_id: int) -> tuple[set[int], set[int], set[str]]:
    """From the reverse replica's changes: messages users changed at DR, those they expunged,
    and the folders they created, renamed or deleted."""
    touched, expunged, folders = set(), set(), set()
    for text in s.scalars(select(InboxRow.change).where(InboxRow.replica_id == replica_id)):
        ch = Change.from_dict(json.loads(text))
        for mid in (ch.mid, ch.old_mid):
            if mid is not None:
                touched.add(mid)
        if ch.kind == Kind.MSG_EXPUNGE:
            expunged.add(ch.mid)
        elif ch.kind == Kind.MSG_REPLACE and ch.old_mid is not None:
            expunged.add(ch.old_mid)
        elif ch.kind in (Kind.FOLDER_CREATE, Kind.FOLDER_RENAME, Kind.FOLDER_DELETE):
            folders.update(x for x in (ch.folder, ch.new_folder) if x)
    return touched, expunged, folders


def reconcile(before: Mapping[int, tuple[str, str]], now: Mapping[int, tuple[str, str, int]], queued: Queued,
              at_dr: tuple[set[int], set[int], set[str]], old_folders: set[str],
              live: Sequence[FolderInfo]) -> tuple[list[Change], dict]:
    """``before``: the catalog at failback (message -> folder, flags); ``now``: the known messages
    on the primary after the standby's changes (message -> folder, flags, uid). Returns the
    forward changes, in order, and the report of late changes and conflicts."""
    touched, expunged, dr_folders = at_dr
    names = {f.name for f in live}
    report = dict(late_expunged=[], late_changed=[], late_folders_created=[], late_folders_deleted=[], conflicts=[])
    creates, messages, deletes = [], [], []
    # new here, created late, or touched at DR (a folder deleted there but kept here for its late
    # mail comes back on the standby); creating a folder the standby has is a no-op there
    create = (names - old_folders) | (queued.created & names) | (dr_folders & names)
    for info in sorted(live, key=lambda f: f.name.count("/")):
        if info.name in create:
            creates.append(Change(Kind.FOLDER_CREATE, info.name, special_use=tuple(sorted(info.special_use))))
            if info.name not in dr_folders:
                report["late_folders_created"].append(info.name)
    candidates = set(queued.mids) | {m for m, state in before.items() if m not in now or now[m][:2] != state}
    for mid in sorted(candidates - queued.adds - expunged):
        old_folder = before[mid][0] if mid in before else queued.mids[mid]
        if mid not in now:
            if old_folder in dr_folders and mid not in queued.mids:
                continue  # its folder was deleted (or renamed away) at DR: not a late change
            messages.append(Change(Kind.MSG_EXPUNGE, old_folder, mid=mid))
            entry = dict(folder=old_folder)
            if mid in touched:
                entry["conflict"] = "changed at DR as well; the expunge is kept"
            report["late_expunged"].append(entry)
            continue
        folder, flags, uid = now[mid]
        messages.append(Change(Kind.MSG_MOVE, old_folder, mid=mid, new_folder=folder, flags=tuple(flags.split())))
        if mid not in touched:
            report["late_changed"].append(dict(folder=folder, uid=uid, flags=flags, was=dict(
                zip(("folder", "flags"), before.get(mid, (old_folder, None))))))
        elif mid in queued.mids:
            report["conflicts"].append(dict(folder=folder, uid=uid, kept="the standby's change",
                                            detail="changed on the primary after the cutover point and at DR"))
    gone = (old_folders - names) | (queued.deleted - names)
    for name in sorted(gone, key=lambda n: -n.count("/")):
        if any(n.startswith(name + "/") for n in names):
            continue  # the folder's children are still there: deleting it would delete them
        deletes.append(Change(Kind.FOLDER_DELETE, name))
        if name not in dr_folders:
            report["late_folders_deleted"].append(name)
    return creates + messages + deletes, report
