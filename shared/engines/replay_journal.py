"""What one replay pass wrote into the folders of a copy, as the replayer knows it.

The standby view (``mailrepl.recovery.standby_view``) catalogues every message the replayer
writes. For a folder that a pass appended to, stored flags in or expunged from, the replayer
already knows the outcome: each new message's UID (APPENDUID), flags, size and content hash,
the complete flag set it stored on a UID (``FLAGS.SILENT`` replaces them), the UIDs it removed.
Reading them back from the server (a QRESYNC delta: one FETCH response to tokenise per message)
would tell nothing new. The journal keeps that knowledge per folder, and says when it is *not*
the whole story, so that the view reads those folders back as before:

- a message moved into or out of the folder, an orphan claimed, a draft replaced: the folder is
  *touched*;
- a folder was created (one the listing at the start of the pass did not have), renamed,
  deleted or reset, or a crash was recovered from: the whole journal is void (``exact`` False);
- the appends do not chain: a MULTIAPPEND's UIDs are not ``UIDNEXT, UIDNEXT+1, …`` of the
  folder as read just before it, or the next append does not start where the last one ended
  (someone else appended in between); or the pass wrote the folder under two UIDVALIDITYs.

:meth:`PassJournal.delta` then checks the folder as listed after the pass against what the
view knew before it: same UIDVALIDITY, the view's UIDNEXT where the first append started (or
unchanged when nothing was appended), the listed UIDNEXT right after the last append, every
UID flagged or expunged below the view's UIDNEXT, and the listed message count the view's plus
the appends minus the expunged. Only then is the delta built from the journal (no read; its
cursor, HIGHESTMODSEQ included, is the folder as listed after the pass); a server that assigned
UIDs otherwise, or a message that came or went behind the replayer's back, makes the view read
the folder. A flag change made on the standby by someone else during a pass that wrote that
folder is not seen (nobody but the replayer writes a copy that replicates).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from collections.abc import Iterable, Sequence

from mailrepl.shared.adapters.base import AppendResult, FolderDelta, FolderInfo, MessageMeta
from mailrepl.shared.model import Change, Cursor

__all__ = ["FolderWrites", "PassJournal"]


@dataclass
class FolderWrites:
    """What one pass wrote into one folder: appends chained, flags stored, UIDs expunged."""

    uidvalidity: int
    uidnext: int | None = None  # the folder's UIDNEXT before the pass's first append (None: no append)
    after: int | None = None  # its UIDNEXT right after the pass's last append
    new: list[MessageMeta] = field(default_factory=list)
    changed: dict[int, frozenset[str]] = field(default_factory=dict)  # UID below the first append -> its flags now
    vanished: set[int] = field(default_factory=set)  # UIDs below the first append, expunged


@dataclass
class PassJournal:
    writes: dict[str, FolderWrites] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    exact: bool = True
    shas: dict[tuple[str, int], str] = field(default_factory=dict)  # (folder, UID) appended -> content hash
    # the folders as listed at the start of the pass: a folder's state before the pass's first
    # write into it (UIDVALIDITY and UIDNEXT move only by writes, and only the replayer writes)
    listed: dict[str, FolderInfo] = field(default_factory=dict)

    def created(self, folder: str) -> None:
        """The pass created ``folder``: the journal stays exact only if the listing at the start
        of the pass had it already (the CREATE changed nothing: a seed's first change creates
        INBOX, which every copy has); a folder that came is new to the view: void."""
        if folder not in self.listed:
            self.void()

    def touch(self, folders: Iterable[str]) -> None:
        self.touched.update(folders)

    def void(self) -> None:
        self.exact = False
        self.listed.clear()

    def listed_before(self, folder: str) -> FolderInfo | None:
        """``folder`` as listed at the start of the pass, once (None: ask the server): the
        caller is about to write it, after which the listing no longer says how it is."""
        return self.listed.pop(folder, None) if self.exact else None

    def written(self) -> set[str]:
        """Every folder the pass wrote (journalled or touched)."""
        return set(self.writes) | self.touched

    def _folder(self, folder: str, uidvalidity: int) -> FolderWrites | None:
        w = self.writes.get(folder)
        if w is None:
            w = self.writes[folder] = FolderWrites(uidvalidity)
        if w.uidvalidity != uidvalidity:
            self.touched.add(folder)
            return None
        return w

    def appended(self, folder: str, before: FolderInfo, result: AppendResult, changes: Sequence[Change]) -> None:
        """``changes`` were appended to ``folder`` (``before``: the folder just before)."""
        w = self._folder(folder, before.uidvalidity)
        if w is None:
            return
        if w.uidnext is None:
            w.uidnext = w.after = before.uidnext
        expected = w.after
        uids = tuple(result.uids)
        if (result.uidvalidity != w.uidvalidity or before.uidnext != expected
                or uids != tuple(range(expected, expected + len(changes)))):
            self.touched.add(folder)
            return
        w.new.extend(MessageMeta(uid, frozenset(c.flags or ()), 0, c.size or 0) for uid, c in zip(uids, changes))
        self.shas.update(((folder, uid), c.sha256) for uid, c in zip(uids, changes))
        w.after = expected + len(changes)

    def flags_stored(self, folder: str, uidvalidity: int, uids: Iterable[int], flags: frozenset[str]) -> None:
        """``flags`` (the complete set) were stored on ``uids`` of ``folder`` (of ``uidvalidity``)."""
        w = self._folder(folder, uidvalidity)
        if w is None:
            return
        new = {m.uid: i for i, m in enumerate(w.new)}
        for uid in uids:
            if uid in new:
                w.new[new[uid]] = dataclasses.replace(w.new[new[uid]], flags=flags)
            elif uid not in w.vanished:
                w.changed[uid] = flags

    def expunged(self, folder: str, uidvalidity: int, uids: Iterable[int]) -> None:
        """``uids`` of ``folder`` (of ``uidvalidity``) were expunged."""
        w = self._folder(folder, uidvalidity)
        if w is None:
            return
        gone = set(uids)
        written = gone & {m.uid for m in w.new}  # appended in this pass: never catalogued
        if written:
            w.new = [m for m in w.new if m.uid not in written]
            gone -= written
        for uid in gone:
            w.changed.pop(uid, None)
        w.vanished |= gone

    def delta(self, folder: str, known: Cursor | None, known_messages: int | None, live: FolderInfo) -> FolderDelta | None:
        """The folder's delta since ``known`` from the journal, or None: read it from the server."""
        w = self.writes.get(folder)
        if not self.exact or w is None or folder in self.touched or not (w.after or w.changed or w.vanished):
            return None
        if known is None or known.token or known_messages is None:
            return None
        now = live.cursor
        start = known.uidnext if w.uidnext is None else w.uidnext
        after = start if w.after is None else w.after
        below = all(u < start for u in (*w.changed, *w.vanished))
        if not (below and known.uidvalidity == w.uidvalidity == now.uidvalidity and known.uidnext == start
                and now.uidnext == after and live.messages == known_messages + len(w.new) - len(w.vanished)):
            return None
        changed = tuple(MessageMeta(uid, flags) for uid, flags in sorted(w.changed.items()))
        return FolderDelta(cursor=now, vanished=tuple(sorted(w.vanished)), changed=changed, new=tuple(w.new))
