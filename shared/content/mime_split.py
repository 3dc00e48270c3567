"""Split a raw message into a skeleton and its big leaf bodies, and put it back together.

Before a message (``BODY[]`` exactly as the IMAP server returned it) crosses the WAN, every leaf
part body of at least ``threshold`` bytes is cut out and travels as a *blob* keyed by the
XXH3-128 of its exact bytes (:func:`blob_key`). The receiver keeps a blob store, so an
attachment that appears in many messages or mailboxes crosses the WAN once. Headers,
delimiters, preamble, epilogue and the line ending before each delimiter stay in the skeleton
as literal bytes (they compress well). :func:`reassemble` gives back exactly the original bytes
or raises :class:`SkeletonError`, never anything else.

Skeleton layout (all integers big-endian)::

    b"MRSK1\\n"                      magic, version 1
    records, each u8 type + u64 length (struct ">BQ"), then:
      b"L"  literal    length bytes of the message, verbatim
      b"B"  blob ref   16 bytes: the XXH3-128 digest (the key as bytes); length = blob size
      b"E"  end        16 bytes: XXH3-128 of the whole message; length = message size.
                       Exactly once, last: a truncated skeleton lacks it.

The message bytes are only ever payloads behind a length, never scanned for markers, so any
input (NUL, bare CR/LF, text that looks like the magic) is unambiguous.

Splitting is a small byte-level MIME scanner (header block up to the first empty line,
``Content-Type`` and its ``boundary``, delimiter lines, nested multiparts and message/rfc822).
Whatever it does not understand stays literal. Whatever it returns is checked by reassembling
it (piece by piece against the message, no copy is built); a mismatch falls back to the whole
message as one literal (``Split.whole``). A message shorter than the threshold is not scanned:
no part of it can be cut out.
"""
from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import xxhash

from mailrepl.shared.errors import WireError

__all__ = [
    "BLOB_THRESHOLD",
    "SKELETON_MAGIC",
    "SkeletonError",
    "Split",
    "blob_key",
    "reassemble",
    "reassembled_digest",
    "skeleton_keys",
    "split_message",
    "whole_skeleton",
]

BLOB_THRESHOLD = 4096  # bytes: a leaf body at least this long travels as a blob
SKELETON_MAGIC = b"MRSK1\n"
MAX_DEPTH = 20  # MIME nesting deeper than this stays literal (the work is O(depth * size))

_RECORD = struct.Struct(">BQ")
_LITERAL, _BLOB, _END = ord("L"), ord("B"), ord("E")
_DIGEST_SIZE = 16

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_MEDIA_TYPE = re.compile(rb"(" + _TOKEN + rb"/" + _TOKEN + rb")")
_CONTENT_TYPE = re.compile(rb"^content-type[ \t]*:", re.IGNORECASE | re.MULTILINE)
_CTE = re.compile(rb"^content-transfer-encoding[ \t]*:", re.IGNORECASE | re.MULTILINE)
_LINE_BREAK = re.compile(rb"\r?\n")
_EMPTY_LINE = re.compile(rb"\n\r?\n")  # a line break, then an empty CRLF or LF line
# what follows "--boundary" on a delimiter line: "--" if it closes, transport padding, line end
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\n|\Z)")
_IDENTITY_CTE = (b"7bit", b"8bit", b"binary")
_EMBEDDED = (b"message/rfc822", b"message/global")


class SkeletonError(WireError):
    """A skeleton is malformed or truncated, or a blob it needs is missing or wrong."""

    retryable = False


@dataclass(frozen=True)
class Split:
    """A message cut into a skeleton and blobs.

    ``blobs`` lists ``(key, bytes)`` in order of appearance, a key again if the same body occurs
    twice. ``whole`` is True when nothing was cut out (the message did not parse, or no leaf body
    reached the threshold): the skeleton then holds the raw message as one literal.
    """

    skeleton: bytes
    blobs: tuple[tuple[str, bytes], ...]
    whole: bool

    def __post_init__(self) -> None:
        if self.whole == bool(self.blobs):
            raise ValueError("a whole message has no blobs, a split one has at least one")

    def keys(self) -> tuple[str, ...]:
        """The distinct blob keys, in order of first appearance."""
        return tuple(dict.fromkeys(key for key, _ in self.blobs))


def blob_key(data: bytes) -> str:
    """The blob key of ``data``: XXH3-128 of its exact bytes, 32 lowercase hex characters."""
    return xxhash.xxh3_128_hexdigest(data)


# --- split ------------------------------------------------------------------------------------

def split_message(raw: bytes, *, threshold: int = BLOB_THRESHOLD) -> Split:
    """Cut every leaf body of at least ``threshold`` bytes out of ``raw``. Never raises on content."""
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1 byte, not {threshold}")
    raw = bytes(raw)
    if len(raw) < threshold:  # no part of it can be that long: nothing to scan
        return _whole(raw)
    try:
        cuts = _Scanner(raw, threshold).scan()
    except Exception:  # noqa: BLE001 - a scanner bug may cost the dedupe, never the message
        cuts = []
    if not cuts:
        return _whole(raw)
    skeleton, blobs = _encode(raw, cuts)
    # The safety net: whatever the scanner decided, only a skeleton that gives back exactly
    # ``raw`` leaves this function. Keep this check.
    try:
        same = _gives_back(skeleton, dict(blobs), raw)
    except SkeletonError:
        same = False
    if not same:
        return _whole(raw)
    return Split(skeleton, blobs, whole=False)


def whole_skeleton(raw: bytes) -> bytes:
    """The skeleton of ``raw`` as one literal (no parts): for bodies that travel whole."""
    return _whole(bytes(raw)).skeleton


def _whole(raw: bytes) -> Split:
    skeleton = b"".join((SKELETON_MAGIC, _RECORD.pack(_LITERAL, len(raw)), raw, _end_record(raw)))
    return Split(skeleton, (), whole=True)


def _end_record(raw: bytes) -> bytes:
    return _RECORD.pack(_END, len(raw)) + xxhash.xxh3_128_digest(raw)


def _encode(raw: bytes, cuts: list[tuple[int, int]]) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
    """The skeleton and blobs for ``raw`` with the byte ranges ``cuts`` (in order) cut out."""
    view = memoryview(raw)
    pieces: list[bytes | memoryview] = [SKELETON_MAGIC]
    blobs: list[tuple[str, bytes]] = []
    pos = 0
    for start, end in cuts:
        if start > pos:
            pieces += (_RECORD.pack(_LITERAL, start - pos), view[pos:start])
        digest = xxhash.xxh3_128_digest(view[start:end])
        pieces += (_RECORD.pack(_BLOB, end - start), digest)
        blobs.append((digest.hex(), raw[start:end]))
        pos = end
    if pos < len(raw):
        pieces += (_RECORD.pack(_LITERAL, len(raw) - pos), view[pos:])
    pieces.append(_end_record(raw))
    return b"".join(pieces), tuple(blobs)


class _Scanner:
    """Finds the byte ranges of the leaf bodies worth cutting out; understands only what it must."""

    def __init__(self, raw: bytes, threshold: int):
        self.raw = raw
        self.threshold = threshold
        self.cuts: list[tuple[int, int]] = []

    def scan(self) -> list[tuple[int, int]]:
        self._entity(0, len(self.raw), 0, in_digest=False)
        return self.cuts

    def _entity(self, start: int, end: int, depth: int, *, in_digest: bool) -> bool:
        """Scan the entity (header block + body) in ``raw[start:end]``.

        False when it has no header/body separator; the caller decides what that means.
        """
        if depth > MAX_DEPTH:
            return True
        header_end, body_start = self._header_end(start, end)
        if body_start < 0:
            return False
        headers = self.raw[start:header_end]
        value = _field(headers, _CONTENT_TYPE)
        media = _MEDIA_TYPE.match(value) if value is not None else None
        if media:
            ctype = media.group(1).lower()
        else:
            ctype = b"message/rfc822" if in_digest else b"text/plain"
        if ctype.startswith(b"multipart/"):
            boundary = _boundary(value) if value is not None else None
            if boundary is not None:  # else unsplittable: stays literal
                self._multipart(body_start, end, boundary, depth, in_digest=ctype == b"multipart/digest")
            return True
        if ctype in _EMBEDDED:
            cte = _field(headers, _CTE)
            if (cte is None or cte.lower() in _IDENTITY_CTE) and self._entity(
                    body_start, end, depth + 1, in_digest=False):
                return True
        self._leaf(body_start, end)
        return True

    def _header_end(self, start: int, end: int) -> tuple[int, int]:
        """(end of the header block, start of the body); (-1, -1) without an empty line."""
        raw = self.raw
        if raw.startswith(b"\r\n", start, end):
            return start, start + 2
        if raw.startswith(b"\n", start, end):
            return start, start + 1
        found = _EMPTY_LINE.search(raw, start, end)  # stops at the first: O(header block)
        if found is None:
            return -1, -1
        return found.start() + 1, found.end()

    def _multipart(self, start: int, end: int, boundary: bytes, depth: int, *, in_digest: bool) -> None:
        """Scan the parts between the delimiter lines; an unterminated last part stays literal."""
        raw = self.raw
        # A delimiter line: "--boundary", "--" again if it closes, transport padding, line end.
        # It counts only at the start of a line; the body starts after one (its header block's
        # empty line), so the search starts on that line break.
        prefix = b"\n--" + boundary
        part = -1  # where the part after the previous delimiter line starts
        pos = max(start - 1, 0)
        while (hit := raw.find(prefix, pos, end)) >= 0:  # find skips fast, one static regex checks
            tail = _DELIMITER_TAIL.match(raw, hit + len(prefix), end)
            if tail is None:  # "--boundary" followed by more text: not a delimiter line
                pos = hit + 1
                continue
            if part >= 0:
                self._entity(part, _before_line_break(raw, part, hit + 1), depth + 1, in_digest=in_digest)
            if tail.group(1):  # close delimiter: the rest is epilogue
                return
            part = tail.end()
            pos = part - 1

    def _leaf(self, start: int, end: int) -> None:
        if end - start >= self.threshold:
            self.cuts.append((start, end))


def _before_line_break(raw: bytes, start: int, delimiter: int) -> int:
    """End of the part before the delimiter line at ``delimiter``: its line break belongs to it."""
    if delimiter - 2 >= start and raw[delimiter - 2:delimiter] == b"\r\n":
        return delimiter - 2
    return max(start, delimiter - 1)


def _field(headers: bytes, pattern: re.Pattern[bytes]) -> bytes | None:
    """The unfolded value of the first header field matching ``pattern``."""
    found = pattern.search(headers)
    if found is None:
        return None
    end = headers.find(b"\n", found.end())
    while end >= 0 and headers[end + 1:end + 2] in (b" ", b"\t"):
        end = headers.find(b"\n", end + 1)
    value = headers[found.end():] if end < 0 else headers[found.end():end]
    return _LINE_BREAK.sub(b"", value).strip()


def _boundary(value: bytes) -> bytes | None:
    """The ``boundary`` parameter of a Content-Type value; None if absent or ambiguous."""
    found: bytes | None = None
    n = len(value)
    i = value.find(b";")
    while 0 <= i < n:
        i += 1
        eq, semi = value.find(b"=", i), value.find(b";", i)
        if eq < 0 or 0 <= semi < eq:  # a parameter without a value
            i = semi
            continue
        name = value[i:eq].strip().lower()
        j = eq + 1
        while j < n and value[j] in b" \t":
            j += 1
        if j < n and value[j] == 0x22:  # quoted-string, with quoted-pairs
            text = bytearray()
            j += 1
            while j < n and value[j] != 0x22:
                if value[j] == 0x5C and j + 1 < n:
                    j += 1
                text.append(value[j])
                j += 1
            if j >= n:
                return None  # unterminated quote
            param = bytes(text)
            i = value.find(b";", j + 1)
        else:
            i = semi
            words = value[j:n if semi < 0 else semi].split()
            param = words[0] if words else b""
        if name.startswith(b"boundary*"):  # RFC 2231: not worth guessing
            return None
        if name == b"boundary":
            if found is not None and found != param:
                return None
            found = param
    if not found or b"\r" in found or b"\n" in found:
        return None
    return found


# --- reassemble -------------------------------------------------------------------------------

def reassemble(skeleton: bytes, blobs: Mapping[str, bytes]) -> bytes:
    """The original message from ``skeleton`` and the blobs it references.

    Every blob is checked against its key and the result against the end record; any mismatch,
    a missing blob or a malformed or truncated skeleton raises :class:`SkeletonError`.
    """
    pieces, digest = _pieces(skeleton, blobs)
    message = b"".join(pieces)
    if xxhash.xxh3_128_digest(message) != digest:
        raise SkeletonError("reassembled message does not match the skeleton's checksum")
    return message


def reassembled_digest(skeleton: bytes, blobs: Mapping[str, bytes]) -> tuple[int, str]:
    """(size, SHA-256 hex) of what :func:`reassemble` gives, with the same checks and errors,
    without building the message: for a receiver that only checks a body before storing it."""
    pieces, digest = _pieces(skeleton, blobs)
    check, sha = xxhash.xxh3_128(), hashlib.sha256()
    size = 0
    for piece in pieces:
        check.update(piece)
        sha.update(piece)
        size += len(piece)
    if check.digest() != digest:
        raise SkeletonError("reassembled message does not match the skeleton's checksum")
    return size, sha.hexdigest()


def _gives_back(skeleton: bytes, blobs: Mapping[str, bytes], raw: bytes) -> bool:
    """Whether :func:`reassemble` gives exactly ``raw`` (SkeletonError where it would raise),
    compared piece by piece against ``raw`` instead of building a copy of it."""
    pieces, digest = _pieces(skeleton, blobs)
    pos = 0
    for piece in pieces:
        if not raw.startswith(piece, pos):
            return False
        pos += len(piece)
    if pos != len(raw):
        return False
    if xxhash.xxh3_128_digest(raw) != digest:
        raise SkeletonError("reassembled message does not match the skeleton's checksum")
    return True


def _pieces(skeleton: bytes, blobs: Mapping[str, bytes]) -> tuple[list[bytes | memoryview], bytes]:
    """The pieces of the message in order and its XXH3-128 from the end record; every record
    and blob checked as :func:`reassemble` documents (the end checksum is the caller's)."""
    view = memoryview(skeleton)
    size = len(view)
    if bytes(view[:len(SKELETON_MAGIC)]) != SKELETON_MAGIC:
        raise SkeletonError("not a message skeleton (bad magic)")
    pos = len(SKELETON_MAGIC)
    pieces: list[bytes | memoryview] = []
    total = 0
    verified: set[str] = set()
    while True:
        if pos + _RECORD.size > size:
            raise SkeletonError(f"skeleton truncated at byte {pos} (no end record)")
        kind, length = _RECORD.unpack_from(view, pos)
        pos += _RECORD.size
        if kind == _LITERAL:
            if pos + length > size:
                raise SkeletonError(f"skeleton truncated inside a {length}-byte literal at byte {pos}")
            pieces.append(view[pos:pos + length])
            pos += length
            total += length
            continue
        if kind not in (_BLOB, _END):
            raise SkeletonError(f"unknown skeleton record type {kind} at byte {pos - _RECORD.size}")
        if pos + _DIGEST_SIZE > size:
            raise SkeletonError(f"skeleton truncated inside a record at byte {pos}")
        digest = bytes(view[pos:pos + _DIGEST_SIZE])
        pos += _DIGEST_SIZE
        if kind == _END:
            break
        key = digest.hex()
        try:
            data = blobs[key]
        except KeyError:
            raise SkeletonError(f"blob {key} is missing") from None
        if len(data) != length:
            raise SkeletonError(f"blob {key} has {len(data)} bytes, the skeleton says {length}")
        if key not in verified:
            if xxhash.xxh3_128_digest(data) != digest:
                raise SkeletonError(f"blob {key} does not match its key")
            verified.add(key)
        pieces.append(data)
        total += length
    if pos != size:
        raise SkeletonError(f"{size - pos} bytes after the skeleton's end record")
    if total != length:
        raise SkeletonError(f"skeleton gives {total} bytes, its end record says {length}")
    return pieces, digest


def skeleton_keys(skeleton: bytes) -> list[str]:
    """The part keys ``skeleton`` refers to, in order (repeats kept); SkeletonError if malformed.

    Reads the record structure only (no part is needed): what the receiver checks before it
    asks for, or looks up, the parts a body needs.
    """
    view = memoryview(skeleton)
    size = len(view)
    if bytes(view[:len(SKELETON_MAGIC)]) != SKELETON_MAGIC:
        raise SkeletonError("not a message skeleton (bad magic)")
    pos = len(SKELETON_MAGIC)
    keys: list[str] = []
    while True:
        if pos + _RECORD.size > size:
            raise SkeletonError(f"skeleton truncated at byte {pos} (no end record)")
        kind, length = _RECORD.unpack_from(view, pos)
        pos += _RECORD.size
        if kind == _LITERAL:
            pos += length
            continue
        if kind not in (_BLOB, _END) or pos + _DIGEST_SIZE > size:
            raise SkeletonError(f"malformed skeleton record at byte {pos - _RECORD.size}")
        digest = bytes(view[pos:pos + _DIGEST_SIZE])
        pos += _DIGEST_SIZE
        if kind == _END:
            break
        keys.append(digest.hex())
    if pos != size:
        raise SkeletonError(f"{size - pos} bytes after the skeleton's end record")
    return keys
