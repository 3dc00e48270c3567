"""What one replay pass wrote into the folders of a copy, as the replayer knows it.

The standby view (``mailrepl.recovery.standby_view``) catalogues every message the replayer
writes. For a folder that a pass only appended to, the replayer already knows each new
message: its UID (APPENDUID), flags, size and content hash; reading them back from the server
(a QRESYNC delta: one FETCH response to tokenise per message) would tell nothing new. The
journal keeps that knowledge per folder, and says when it is *not* the whole story, so that
the view reads those folders back as before:

- anything but an append touched the folder in the pass (flags stored, messages expunged or
  moved, an orphan claimed, a draft replaced): the folder is *touched*;
- a folder was created, renamed, deleted or reset, or a crash was recovered from: the whole
  journal is void (``exact`` False);
- the appends do not chain: a MULTIAPPEND's UIDs are not ``UIDNEXT, UIDNEXT+1, …`` of the
  folder as read just before it, or the next append does not start where the last one ended
  (someone else appended in between).

:meth:`PassJournal.delta` then checks the folder as listed after the pass against what the
view knew before it: same UIDVALIDITY, the view's UIDNEXT where the first append started, the
listed UIDNEXT right after the last one, and the listed message count the view's plus the
appends. Only then is the delta built from the journal (no read); a server that assigned UIDs
otherwise, or a message that came or went behind the replayer's back, makes the view read the
folder. A flag change made on the standby by someone else during a pass that only appended
to that folder is not seen (nobody but the replayer writes a copy that replicates).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterable, Sequence

from mailrepl.shared.adapters.base import AppendResult, FolderDelta, FolderInfo, MessageMeta
from mailrepl.shared.model import Change, Cursor

__all__ = ["FolderWrites", "PassJournal"]


@dataclass
class FolderWrites:
    """The appends of one pass into one folder, chained."""

    uidvalidity: int
    uidnext: int  # the folder's UIDNEXT before the pass's first append into it
    new: list[MessageMeta] = field(default_factory=list)


@dataclass
class PassJournal:
    writes: dict[str, FolderWrites] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    exact: bool = True

    def touch(self, folders: Iterable[str]) -> None:
        self.touched.update(folders)

    def void(self) -> None:
        self.exact = False

    def appended(self, folder: str, before: FolderInfo, result: AppendResult, changes: Sequence[Change]) -> None:
        """``changes`` were appended to ``folder`` (``before``: the folder just before)."""
        w = self.writes.get(folder)
        if w is None:
            w = self.writes[folder] = FolderWrites(before.uidvalidity, before.uidnext)
        expected = w.new[-1].uid + 1 if w.new else w.uidnext
        uids = tuple(result.uids)
        if (before.uidvalidity != w.uidvalidity or result.uidvalidity != w.uidvalidity
                or before.uidnext != expected or uids != tuple(range(expected, expected + len(changes)))):
            self.touched.add(folder)
            return
        w.new.extend(MessageMeta(uid, frozenset(c.flags or ()), 0, c.size or 0) for uid, c in zip(uids, changes))

    def delta(self, folder: str, known: Cursor | None, known_messages: int | None, live: FolderInfo) -> FolderDelta | None:
        """The folder's delta since ``known`` from the journal, or None: read it from the server."""
        w = self.writes.get(folder)
        if not self.exact or w is None or folder in self.touched or not w.new:
            return None
        if known is None or known.token or known_messages is None:
            return None
        now = live.cursor
        if not (known.uidvalidity == w.uidvalidity == now.uidvalidity and known.uidnext == w.uidnext
                and now.uidnext == w.new[-1].uid + 1 and live.messages == known_messages + len(w.new)):
            return None
        return FolderDelta(cursor=now, new=tuple(w.new))
