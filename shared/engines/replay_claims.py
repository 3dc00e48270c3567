"""Which copies a folder reset keeps on this side's server (the replay engine's claims).

A folder reset (``FOLDER_RESET`` … adds … ``FOLDER_RESET_DONE``) turns the id map's entries of
the folder into orphans; each add of the reset first looks for an orphan that is already the
message it adds, so that the server keeps that copy (and gets the flags) instead of a second
one. :func:`same_copy` finds the likely one by UIDVALIDITY, UID, internal date and size, from one
listing of the folder per replay pass; :func:`proven` keeps a claim only where the message at
that UID has the very bytes (read back and hashed), since a folder recreated with its old
UIDVALIDITY (a server that takes it from the clock, its record of used values wiped with the
folder) holds other messages at old UIDs.
"""
from __future__ import annotations

import hashlib

from mailrepl.shared.adapters.base import MailboxSession
from mailrepl.shared.errors import FolderNotFound
from mailrepl.shared.model import Change, parse_internaldate
from mailrepl.shared.store.models import Orphan

__all__ = ["Dates", "proven", "same_copy"]

Dates = dict[str, tuple[int, dict[int, tuple[int | None, int]]]]  # folder -> (UIDVALIDITY, UID -> (internal date in s, size))


def proven(claims: list[tuple[int, Change, Orphan]], folder: str, session: MailboxSession):
    """The claims whose UID holds the message's very bytes (read back and hashed), and the changes
    of the others: date and size only make a claim likely (a folder recreated with its old
    UIDVALIDITY may hold another message of the same size and second at that UID)."""
    actual = {m.uid: hashlib.sha256(m.body).hexdigest() for m in session.fetch(folder, [o.uid for _, _, o in claims])}
    good = [(seq, ch, o) for seq, ch, o in claims if actual.get(o.uid) == ch.sha256]
    wrong = [(seq, ch) for seq, ch, o in claims if actual.get(o.uid) != ch.sha256]
    return good, wrong


def same_copy(bucket: list[Orphan], ch: Change, folder: str, session: MailboxSession,
               dates: Dates) -> Orphan | None:
    """The orphan (same folder, same SHA-256) that is the message ``ch`` adds in everything but its
    flags, which a flag store fixes: it must still be there, in a folder of the same UIDVALIDITY
    (a folder recreated on this server gives its UIDs to other messages), with the same internal
    date (to the second), since no server lets an internal date change. None: the message is
    written again and the orphan goes when the reset is done. The folder's UIDVALIDITY and dates
    are read once per replay pass."""
    known = dates.get(folder)
    if known is None:
        try:
            delta = session.changes_since(folder, None)
            uidvalidity, listed = delta.cursor.uidvalidity, delta.new
        except FolderNotFound:  # gone meanwhile: nothing to keep, the adds create it again
            uidvalidity, listed = -1, ()
        known = dates[folder] = (uidvalidity, {m.uid: ((int(m.internaldate.timestamp()) if m.internaldate else None),
                                                       m.size) for m in listed})
    uidvalidity, by_uid = known
    want = int(parse_internaldate(ch.internaldate).timestamp()) if ch.internaldate else None
    for o in reversed(bucket):
        if o.uidvalidity != uidvalidity or o.uid not in by_uid:
            continue
        date, size = by_uid[o.uid]
        # the size too: a folder recreated with its old UIDVALIDITY may hold another message at that UID
        if (want is None or date == want) and (not size or not ch.size or size == ch.size):
            return o
    return None
