"""After replay wrote messages: did the standby store what was sent?

The standby may alter a message on the way in (Cyrus's ``munge8bit`` rewrites 8-bit header
bytes, servers store bare LF as CRLF). :func:`check_written` compares what the server stored —
its size, and its digest where the server offers one (``stored_digests`` of the IMAP session,
Cyrus ``DIGEST.SHA1``), without reading the message — with what was sent, and reads back only
the messages that differ, to name the change and the standby's SHA-256. Sessions without
``stored_digests`` (EWS, the in-memory server) are not checked.

:func:`written_record` and :func:`rejected_record` turn findings into the rows and log lines
that report them, naming the mailbox and the message as people know it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from mailrepl.shared.content.standby_copy import MessageIdentity, describe_change, identity
from mailrepl.shared.model import Change

__all__ = ["Alteration", "check_written"]


@dataclass(frozen=True)
class Alteration:
    seq: int
    change: Change
    uid: int
    standby_sha256: str
    sent_size: int
    stored_size: int
    what: str
    who: MessageIdentity


def check_written(session, folder: str, written: Sequence[tuple[int, Change, bytes, int]]) -> list[Alteration]:
    """``written``: (seq, change, bytes sent, uid on the standby) -> the messages stored otherwise."""
    digests_of = getattr(session, "stored_digests", None)
    if digests_of is None or not written:
        return []
    digests = digests_of(folder, [uid for *_, uid in written])
    suspect = []
    for seq, ch, body, uid in written:
        d = digests.get(uid)
        if d is None:
            continue  # gone already (a later change of this pass): nothing to compare
        if d.size != len(body) or (d.sha1 is not None and d.sha1 != hashlib.sha1(body).hexdigest()):
            suspect.append((seq, ch, body, uid))
    if not suspect:
        return []
    stored = {m.uid: m.body for m in session.fetch(folder, [uid for *_, uid in suspect])}
    out = []
    for seq, ch, body, uid in suspect:
        got = stored.get(uid)
        if got is None or got == body:
            continue
        out.append(Alteration(seq, ch, uid, hashlib.sha256(got).hexdigest(), len(body), len(got),
                              describe_change(body, got), identity(body)))
    return out
