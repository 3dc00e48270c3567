"""Verify: list one folder of a mailbox through its adapter, message by message.

Bodies are streamed (the adapter buffers a bounded number) and only their SHA-256 and
Message-ID are kept, so a listing costs memory per message, not per byte. Both gateways list
their own server with this: the source gateway the primary, the recovery gateway the standby.
"""
from __future__ import annotations

import hashlib
import re
from typing import Callable, Mapping

from mailrepl.shared.adapters.base import MailboxSession
from mailrepl.shared.engines.verify_compare import Listed, utc_seconds
from mailrepl.shared.errors import FolderNotFound

__all__ = ["list_folder", "message_id_of", "FETCH_CHUNK"]

FETCH_CHUNK = 200  # UIDs per fetch request
HEADER_SCAN = 64 * 1024  # bytes of a message searched for its Message-ID
MESSAGE_ID_MAX = 250
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*((?:[^\r\n]|\r?\n[ \t])*)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def message_id_of(body: bytes) -> str:
    """The Message-ID header of a raw message ('' without one), unfolded and bounded."""
    head = body[:HEADER_SCAN]
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    if end >= 0:
        head = head[:end + 2]
    m = _MESSAGE_ID.search(head)
    if m is None:
        return ""
    text = m.group(1).decode("utf-8", "replace")
    return _CONTROL.sub("", " ".join(text.split()))[:MESSAGE_ID_MAX]


def list_folder(session: MailboxSession, folder: str, mid_of: Mapping[int, int] | None = None,
                on_message: Callable[[], None] | None = None) -> list[Listed] | None:
    """Every message of ``folder`` (None if the folder is gone): SHA-256 of its bytes, flags,
    internal date, Message-ID, and its replication id where ``mid_of`` (uid -> id) knows it."""
    mid_of = mid_of or {}
    try:
        uids = [m.uid for m in session.changes_since(folder, None).new]
    except FolderNotFound:
        return None
    out: list[Listed] = []
    for i in range(0, len(uids), FETCH_CHUNK):
        for msg in session.fetch(folder, uids[i:i + FETCH_CHUNK]):
            out.append(Listed(uid=msg.uid, sha256=hashlib.sha256(msg.body).hexdigest(), flags=frozenset(msg.flags),
                              internaldate=utc_seconds(msg.internaldate), mid=mid_of.get(msg.uid),
                              message_id=message_id_of(msg.body), modseq=msg.modseq))
            if on_message is not None:
                on_message()
    return out
