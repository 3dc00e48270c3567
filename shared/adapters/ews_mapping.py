"""Pure translations between IMAP-shaped contract values and Exchange item/folder properties.

No exchangelib here, so the mapping is unit-tested without a server:

- flags <-> item state: ``\\Seen`` = ``IsRead``; ``\\Flagged`` = PR_FLAG_STATUS (0x1090) 2
  (followupFlagged); ``\\Answered`` = PR_LAST_VERB_EXECUTED (0x1081) 102/103 (reply / reply
  all); ``\\Draft`` = MSGFLAG_UNSENT in PR_MESSAGE_FLAGS (0x0E07, settable only when the item is
  created); keywords = ``Categories``. ``\\Deleted`` has no Exchange counterpart (Exchange
  deletes at once) and is not stored; ``\\Recent`` is never stored.
- categories that are not valid IMAP keywords (spaces, parentheses, ...) cross to IMAP with
  those characters replaced by ``_``.
- folder identity: UIDVALIDITY is a 31-bit hash of the EWS FolderId (stable across renames and
  moves, new when a folder is recreated); the contract's folder id is a hex digest of it.
- folder names: display names joined with ``/``; a ``/`` inside a display name is shown as
  U+2215 (DIVISION SLASH) and turned back on the way in.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass
from typing import Iterable

__all__ = [
    "PR_ARTICLE_NUMBER",
    "PR_DELIVERY_TIME",
    "PR_FLAG_STATUS",
    "PR_LAST_VERB_EXECUTED",
    "PR_MESSAGE_FLAGS",
    "MSGFLAG_READ",
    "MSGFLAG_UNSENT",
    "FLAG_STATUS_FLAGGED",
    "VERB_REPLY",
    "ItemState",
    "flags_to_state",
    "state_to_flags",
    "category_to_keyword",
    "folder_uidvalidity",
    "folder_fid",
    "name_to_segment",
    "segment_to_name",
    "SPECIAL_USE",
]

PR_ARTICLE_NUMBER = 0x0E23  # PidTagInternetArticleNumber: per-folder, increasing (IMAP UIDs)
PR_DELIVERY_TIME = 0x0E06  # PidTagMessageDeliveryTime
PR_FLAG_STATUS = 0x1090  # PidTagFlagStatus: 0 none, 1 complete, 2 flagged
PR_LAST_VERB_EXECUTED = 0x1081  # PidTagLastVerbExecuted: 102 reply, 103 reply all, 104 forward
PR_MESSAGE_FLAGS = 0x0E07  # PidTagMessageFlags
MSGFLAG_READ, MSGFLAG_UNSENT = 0x1, 0x8
FLAG_STATUS_FLAGGED = 2
VERB_REPLY, VERB_REPLY_ALL = 102, 103

# distinguished folder id -> IMAP special-use flag (RFC 6154)
SPECIAL_USE = {
    "sentitems": "\\Sent",
    "drafts": "\\Drafts",
    "deleteditems": "\\Trash",
    "junkemail": "\\Junk",
}  # ("archive" is left out: older Exchange builds reject it as a DistinguishedFolderId)

_ATOM_SPECIALS = re.compile(r'[\x00-\x20\x7f()\{%*"\\\]]')


@dataclass(frozen=True)
class ItemState:
    """The Exchange side of an IMAP flag set."""

    is_read: bool = False
    flagged: bool = False
    answered: bool = False
    draft: bool = False
    categories: tuple[str, ...] = ()

    @property
    def flag_status(self) -> int | None:
        return FLAG_STATUS_FLAGGED if self.flagged else None

    @property
    def last_verb(self) -> int | None:
        return VERB_REPLY if self.answered else None

    @property
    def message_flags(self) -> int:
        return (MSGFLAG_READ if self.is_read else 0) | (MSGFLAG_UNSENT if self.draft else 0)


def flags_to_state(flags: Iterable[str]) -> ItemState:
    lower = {f.lower(): f for f in flags}
    keywords = sorted(f for f in flags if not f.startswith("\\"))
    return ItemState(
        is_read="\\seen" in lower,
        flagged="\\flagged" in lower,
        answered="\\answered" in lower,
        draft="\\draft" in lower,
        categories=tuple(keywords),
    )


def category_to_keyword(category: str) -> str | None:
    """An Exchange category as an IMAP keyword (None for one that is empty after cleaning)."""
    keyword = _ATOM_SPECIALS.sub("_", category.strip())
    return keyword or None


def state_to_flags(
    is_read: bool | None,
    flag_status: int | None,
    last_verb: int | None,
    message_flags: int | None,
    categories: Iterable[str] | None,
) -> frozenset[str]:
    flags: set[str] = set()
    if is_read:
        flags.add("\\Seen")
    if flag_status == FLAG_STATUS_FLAGGED:
        flags.add("\\Flagged")
    if last_verb in (VERB_REPLY, VERB_REPLY_ALL):
        flags.add("\\Answered")
    if message_flags is not None and message_flags & MSGFLAG_UNSENT:
        flags.add("\\Draft")
    for c in categories or ():
        keyword = category_to_keyword(c)
        if keyword:
            flags.add(keyword)
    return frozenset(flags)


def folder_uidvalidity(folder_id: str) -> int:
    return (zlib.crc32(folder_id.encode()) & 0x7FFFFFFF) or 1


def folder_fid(folder_id: str) -> str:
    return hashlib.sha256(folder_id.encode()).hexdigest()[:40]


def segment_to_name(display_name: str) -> str:
    return display_name.replace("/", "\u2215")


def name_to_segment(segment: str) -> str:
    return segment.replace("\u2215", "/")
