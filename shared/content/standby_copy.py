"""What a standby did to a message it was given (pure; no I/O).

- ``identity(body)``: Message-ID, subject and date from the header, for reports about a message
  (refused, altered) that people recognise; read from at most ``HEADER_LIMIT`` bytes, decoded
  leniently, each bounded, never an error.
- ``describe_change(sent, stored)``: what differs between the bytes sent and the bytes stored, in
  words (8-bit header bytes rewritten, line endings changed, header or body changed).
- ``standby_forms(sent)``: the SHA-256 of the forms a server is known to store a message in
  (as sent; 8-bit header bytes rewritten to ``X`` as Cyrus's ``munge8bit`` does; bare LF as
  CRLF), so that crash recovery recognises its own write even when the server altered it.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email.header import decode_header, make_header

__all__ = ["HEADER_LIMIT", "MessageIdentity", "describe_change", "identity", "munge_8bit_headers", "standby_forms"]

HEADER_LIMIT = 64 * 1024  # header bytes read for an identity
FIELD_LIMIT = 300  # characters kept of each field
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True)
class MessageIdentity:
    message_id: str | None = None
    subject: str | None = None
    date: str | None = None

    def describe(self) -> str:
        return ", ".join(f"{k} {v!r}" for k, v in (("Message-ID", self.message_id), ("subject", self.subject),
                                                     ("date", self.date)) if v) or "no Message-ID, subject or date"


def _header_block(body: bytes) -> bytes:
    head = body[:HEADER_LIMIT]
    end = _HEADER_END.search(head)
    return head[: end.start()] if end else head


def _fields(block: bytes) -> dict[str, bytes]:
    """First occurrence of each field, unfolded."""
    out: dict[str, bytes] = {}
    name, value = None, b""
    for line in re.split(rb"\r?\n", block):
        if line[:1] in (b" ", b"\t") and name is not None:
            value += b" " + line.strip()
            continue
        if name is not None and name not in out:
            out[name] = value
        name, sep, rest = line.partition(b":")
        if not sep:
            name = None
            continue
        name, value = name.strip().decode("latin-1").lower(), rest.strip()
    if name is not None and name not in out:
        out[name] = value
    return out


def _text(raw: bytes | None, *, words: bool = False) -> str | None:
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace")
    if words:
        try:
            text = str(make_header(decode_header(text)))
        except (ValueError, LookupError, UnicodeError):
            pass  # malformed encoded words: shown as they are
    text = " ".join(text.split())
    return text[:FIELD_LIMIT] or None


def identity(body: bytes) -> MessageIdentity:
    fields = _fields(_header_block(body))
    return MessageIdentity(_text(fields.get("message-id")), _text(fields.get("subject"), words=True),
                           _text(fields.get("date")))


def munge_8bit_headers(body: bytes) -> bytes:
    """Every 8-bit byte of the header replaced by ``X`` (Cyrus ``munge8bit``), the body kept."""
    end = _HEADER_END.search(body)
    cut = end.start() if end else len(body)
    return bytes(b if b < 0x80 else 0x58 for b in body[:cut]) + body[cut:]


def standby_forms(sent: bytes) -> dict[str, str]:
    """{SHA-256: what the server did} for the forms a server is known to store ``sent`` in."""
    forms = {hashlib.sha256(sent).hexdigest(): "stored as sent"}
    munged = munge_8bit_headers(sent)
    if munged != sent:
        forms.setdefault(hashlib.sha256(munged).hexdigest(), "8-bit header bytes rewritten")
    crlf = _BARE_LF.sub(b"\r\n", sent)
    if crlf != sent:
        forms.setdefault(hashlib.sha256(crlf).hexdigest(), "bare LF stored as CRLF")
    return forms


def describe_change(sent: bytes, stored: bytes) -> str:
    """What the standby changed, in words."""
    if stored == sent:
        return "unchanged"
    known = standby_forms(sent).get(hashlib.sha256(stored).hexdigest())
    if known and known != "stored as sent":
        return known
    sent_end, stored_end = _HEADER_END.search(sent), _HEADER_END.search(stored)
    sent_head = sent[: sent_end.start()] if sent_end else sent
    stored_head = stored[: stored_end.start()] if stored_end else stored
    parts = []
    if sent_head != stored_head:
        parts.append("header changed")
    if sent[len(sent_head):].lstrip(b"\r\n") != stored[len(stored_head):].lstrip(b"\r\n"):
        parts.append("body changed")
    return (", ".join(parts) or "bytes changed") + f" ({len(sent)} bytes sent, {len(stored)} stored)"
