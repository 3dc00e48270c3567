"""The wire format between gateways: one versioned, compressed batch document.

Layout of an encoded batch (all integers big-endian)::

    b"MRPL"            magic
    u8  version        WIRE_VERSION; 1 is still read, anything else is refused (UnsupportedVersion)
    u8  codec          0 = none, 1 = zstd
    version 2, codec 1: u64 frame_len, then frame_len bytes of one zstd frame holding the
        payload below except the *stored* parts, then the stored parts as they are
    otherwise:          the payload, compressed with the codec (version 1: one zstd frame)

    payload:
        u32 header_len
        header_len bytes of UTF-8 JSON header
        version 2: the skeletons, then the part bodies that are not stored, then the stored
        ones, each in the order the header lists them; version 1: the whole message bodies

A part is *stored* (``"stored": true`` in its header entry) when a sample of it does not
shrink under zstd — a JPEG, ZIP or PDF stream sent in binary: it is not compressed again.

Header JSON (version 2)::

    {"source": "<gateway id>", "created": "<ISO 8601>",
     "segments": [{"server": "...", "address": "...", "range": "FIRST-LAST",
                   "captured": ["<ISO 8601>", ...],        # one per change
                   "changes": [<Change.to_dict()>, ...]}],  # exactly len(range) changes
     "messages": [{"sha256": "<hex>", "size": N}, ...],     # skeleton of each message
     "parts": [{"key": "<xxh3-128 hex>", "size": N, "stored": true?}, ...]}  # part bodies the skeletons refer to

A message body travels as its *skeleton* (see :mod:`mailrepl.shared.content.mime_split`: MIME structure and small
parts literal, large part bodies as references to content-addressed parts). Every part's bytes
must hash to its key (XXH3-128); the whole message, reassembled, must hash to its ``sha256`` —
the receiver checks that before it stores anything. A body a change refers to, or a part a
skeleton refers to, that the receiver already holds does not travel again (the sender asks first,
see ``/api/v1/ingest/missing``). Version 1 carried ``"blobs": [{"sha256", "size"}]`` of whole
bodies; they are read as whole-message skeletons.

The acknowledgement is JSON (see :class:`Ack`): per segment the highest sequence number the
receiver holds durably (``acked``), how far it has applied (``applied``), and a status:
``ok``, ``gap`` (``resend_from`` says where to resume), ``missing`` (a body or part it was told
it had is gone: ``missing`` lists them; the sender asks again and re-sends) or ``conflict``
(``detail`` says which sequence number carries different content).
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import xxhash
import zstandard

from mailrepl.shared.errors import UnsupportedVersion, WireError
from mailrepl.shared.content.mime_split import whole_skeleton
from mailrepl.shared.model import Change, SeqRange
from mailrepl.shared.protocol.wire_header import read_header

__all__ = [
    "WIRE_VERSION",
    "MEDIA_TYPE",
    "MAX_DECODED_BYTES",
    "Segment",
    "Batch",
    "SegmentResult",
    "Ack",
    "encode_batch",
    "decode_batch",
]

WIRE_VERSION = 2
READABLE_VERSIONS = (1, 2)
MEDIA_TYPE = "application/vnd.mailrepl.batch"
MAGIC = b"MRPL"
CODEC_NONE, CODEC_ZSTD = 0, 1
MAX_DECODED_BYTES = 1 << 30  # refuse to inflate a batch beyond 1 GiB
_PREFIX = struct.Struct(">4sBB")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
# zstd level of a batch: measured on a 2,000-message realistic corpus (7.7 MB) and on generated mail
# with 20 % base64 attachments, one frame per batch as sent: level 1 compresses at 541 / 748 MB/s to
# 0.208 / 0.673 of the size, level 3 at 294 / 591 MB/s to 0.184 / 0.672. On mail, level 3 buys
# 2-13 % fewer bytes for 25-85 % more CPU in the source gateway; the link takes the difference
# easily at any rate where the gateway's CPU is the limit, so level 1 it is.
DEFAULT_LEVEL = 1
STORE_MIN = 16 * 1024  # parts smaller than this are always compressed (the sample test costs more)
_SAMPLE = 64 * 1024
_SHRINK = 0.97  # a sample that zstd cannot bring below this fraction of its size: stored
_INFLATE_CHUNK = 1 << 20  # decompressed per step; the limit is checked after each


@dataclass(frozen=True)
class Segment:
    server: str
    address: str
    range: SeqRange
    changes: tuple[Change, ...]
    captured: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.changes) != len(self.range):
            raise WireError(
                f"segment {self.server}/{self.address} {self.range}: {len(self.changes)} changes for {len(self.range)} numbers"
            )
        if self.captured and len(self.captured) != len(self.changes):
            raise WireError("segment: one capture time per change")


@dataclass(frozen=True)
class Batch:
    source: str
    segments: tuple[Segment, ...]
    messages: dict[str, bytes] = field(default_factory=dict)  # whole-message SHA-256 -> skeleton
    parts: dict[str, bytes] = field(default_factory=dict)  # XXH3-128 key -> part body (decoded: a view)
    created: str = ""


@dataclass(frozen=True)
class SegmentResult:
    server: str
    address: str
    status: str  # ok | gap | missing | conflict | error
    acked: int  # highest contiguous sequence number held durably
    applied: int = 0
    resend_from: int | None = None
    detail: str | None = None
    rejected: tuple[dict[str, Any], ...] = ()
    missing: tuple[str, ...] = ()  # status "missing": message SHA-256s / part keys to send again
    whole: tuple[str, ...] = ()  # status "missing": message SHA-256s to send again unsplit
    dr_error: str | None = None  # what blocks the mailbox at the DR site (replay), None: nothing

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if v is not None}
        d["rejected"] = list(self.rejected)
        d["missing"] = list(self.missing)
        d["whole"] = list(self.whole)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SegmentResult":
        d = dict(d)
        d["rejected"] = tuple(d.get("rejected") or ())
        d["missing"] = tuple(d.get("missing") or ())
        d["whole"] = tuple(d.get("whole") or ())
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})  # fields of newer peers are ignored


MAX_TOKEN = 40  # characters of a progress answer's token


@dataclass(frozen=True)
class Ack:
    results: tuple[SegmentResult, ...]
    version: int = WIRE_VERSION
    # progress answers: the recovery gateway's applied-progress token (``progress_signal``),
    # named by the next query to wait for what is applied after it; absent from older peers
    token: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": self.version, "results": [r.to_dict() for r in self.results]}
        if self.token is not None:
            d["token"] = self.token
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Ack":
        if d.get("v") not in READABLE_VERSIONS:
            raise UnsupportedVersion(f"acknowledgement version {d.get('v')!r}, this gateway speaks {WIRE_VERSION}")
        token = d.get("token")
        if token is not None and (not isinstance(token, str) or len(token) > MAX_TOKEN):
            raise WireError(f"malformed acknowledgement: token must be a string of at most {MAX_TOKEN} characters")
        try:
            return cls(tuple(SegmentResult.from_dict(r) for r in d["results"]), token=token)
        except (KeyError, TypeError) as exc:
            raise WireError(f"malformed acknowledgement: {exc}") from exc


def encode_batch(batch: Batch, *, level: int = DEFAULT_LEVEL, compress: bool = True) -> bytes:
    header = {
        "source": batch.source,
        "created": batch.created or datetime.now().astimezone().isoformat(timespec="seconds"),
        "segments": [
            {
                "server": seg.server,
                "address": seg.address,
                "range": seg.range.format(),
                "captured": list(seg.captured),
                "changes": [c.to_dict() for c in seg.changes],
            }
            for seg in batch.segments
        ],
        "messages": [{"sha256": sha, "size": len(data)} for sha, data in batch.messages.items()],
        "parts": [],
    }
    stored = {key for key, data in batch.parts.items() if not _shrinks(data)} if compress else set()
    packed = [key for key in batch.parts if key not in stored]
    for key in packed:
        header["parts"].append({"key": key, "size": len(batch.parts[key])})
    for key in batch.parts:
        if key in stored:
            header["parts"].append({"key": key, "size": len(batch.parts[key]), "stored": True})
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    chunks = [_U32.pack(len(head)), head, *batch.messages.values(), *(batch.parts[k] for k in packed)]
    if compress:
        # one frame, fed piece by piece (no joined copy of the payload), declaring its size,
        # written straight into the encoded batch as it comes out (no list of pieces joined
        # into a second copy at the end); its length is filled in once known
        out = io.BytesIO()
        out.write(_PREFIX.pack(MAGIC, WIRE_VERSION, CODEC_ZSTD))
        out.write(_U64.pack(0))
        zc = zstandard.ZstdCompressor(level=level).compressobj(size=sum(len(c) for c in chunks))
        for c in chunks:
            out.write(zc.compress(c))
        out.write(zc.flush())
        frame_len = out.tell() - _PREFIX.size - _U64.size
        for key in batch.parts:
            if key in stored:
                out.write(batch.parts[key])
        out.seek(_PREFIX.size)
        out.write(_U64.pack(frame_len))
        return out.getvalue()  # the buffer itself, not a copy
    return _PREFIX.pack(MAGIC, WIRE_VERSION, CODEC_NONE) + b"".join(chunks)


def _shrinks(data: bytes) -> bool:
    """Whether zstd makes ``data`` noticeably smaller, judged on a sample from its middle."""
    if len(data) < STORE_MIN:
        return True
    mid = max(0, len(data) // 2 - _SAMPLE // 2)
    sample = data[mid : mid + _SAMPLE]
    return len(zstandard.ZstdCompressor(level=1).compress(sample)) < _SHRINK * len(sample)


def decode_batch(data: bytes, *, max_bytes: int = MAX_DECODED_BYTES, born_ids: bool = False) -> Batch:
    """The batch in ``data``; ``WireError`` (``UnsupportedVersion``) for anything else. The
    decoded batch (compressed payload inflated, plus the stored parts) may not exceed
    ``max_bytes``: inflating is streamed and stops there. Every header field is checked
    (``wire_header``); ``born_ids``: a reverse batch, whose negative message ids are DR-born."""
    if len(data) < _PREFIX.size:
        raise WireError("batch too short")
    magic, version, codec = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise WireError("not a mailrepl batch (bad magic)")
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersion(
            f"batch wire version {version} is not supported (this gateway reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade the recovery gateway first"
        )
    body = memoryview(data)[_PREFIX.size :]
    tail = memoryview(b"")  # parts stored as they are, after the compressed frame
    if codec == CODEC_ZSTD:
        if version >= 2:
            if len(body) < _U64.size:
                raise WireError("batch too short")
            (frame_len,) = _U64.unpack_from(body)
            if frame_len > len(body) - _U64.size:
                raise WireError("batch truncated inside its compressed frame")
            frame, tail = body[_U64.size : _U64.size + frame_len], body[_U64.size + frame_len :]
        else:
            frame = body
        room = max_bytes - len(tail)  # the stored parts count towards the limit too
        if room < 0:
            raise WireError(f"batch inflates beyond {max_bytes} bytes")
        payload = memoryview(_inflate(frame, room, max_bytes))
    elif codec == CODEC_NONE:
        if len(body) > max_bytes:
            raise WireError(f"batch inflates beyond {max_bytes} bytes")
        payload = body
    else:
        raise WireError(f"unknown codec {codec}")
    # the inflated frame and the stored parts read as one stream, never joined into a copy
    total = len(payload) + len(tail)
    if total < 4:
        raise WireError("batch payload truncated")
    (hlen,) = _U32.unpack(_span(payload, tail, 0, 4))
    if hlen > total - 4:
        raise WireError("batch truncated inside its header")
    try:
        header = json.loads(bytes(_span(payload, tail, 4, hlen)))
    except (ValueError, RecursionError) as exc:  # RecursionError: brackets nested beyond reason
        raise WireError(f"malformed batch header: not JSON ({str(exc)[:100]})") from None
    source, created, seg_fields, listed, part_list = read_header(header, version, born_ids=born_ids)
    segments = tuple(Segment(server=srv, address=addr, range=rng, changes=changes, captured=captured)
                     for srv, addr, rng, changes, captured in seg_fields)
    if sum(size for _, size in listed) + sum(size for _, size in part_list) > total - 4 - hlen:
        raise WireError("batch truncated: its header lists more bytes than it carries")
    off = 4 + hlen
    messages: dict[str, bytes] = {}
    for sha, size in listed:
        chunk = bytes(_span(payload, tail, off, size))
        if version == 1:  # whole bodies: check them here and carry them as whole skeletons
            if hashlib.sha256(chunk).hexdigest() != sha:
                raise WireError(f"message {sha[:16]}… does not match its hash")
            chunk = whole_skeleton(chunk)
        messages[sha] = chunk
        off += size
    # parts are views into the received and the inflated bytes, not copies: the largest share
    # of a batch, on their way to the blob store's files
    parts: dict[str, bytes | memoryview] = {}
    for key, size in part_list:
        chunk = _span(payload, tail, off, size)
        if xxhash.xxh3_128(chunk).hexdigest() != key:
            raise WireError(f"part {key[:16]}… does not match its hash")
        parts[key] = chunk
        off += size
    if off != total:
        raise WireError("trailing bytes after the last part")
    return Batch(source=source, segments=segments, messages=messages, parts=parts, created=created)


def _span(first: memoryview, second: memoryview, off: int, size: int) -> bytes | memoryview:
    """``size`` bytes at ``off`` of ``first`` followed by ``second``: a view into one of them, or
    a copy of the two pieces for an item that straddles the boundary (the encoder never writes
    one; the offsets and sizes come from a checked header, within the total)."""
    cut = len(first)
    if off + size <= cut:
        return first[off : off + size]
    if off >= cut:
        return second[off - cut : off - cut + size]
    return bytes(first[off:]) + bytes(second[: off + size - cut])


def _inflate(frame: memoryview, room: int, limit: int) -> bytes:
    """The zstd ``frame`` decompressed; refused (``WireError``) beyond ``room`` bytes. A frame
    that declares its size (ours always do) is checked against ``room`` before anything is
    allocated and inflated in one call, outside the interpreter lock, into a buffer of exactly
    that size (zstd fails if the frame does not hold what it declares). Otherwise it is streamed
    and refused as soon as it passes ``room``, so a small frame that inflates to gigabytes never
    takes more than ``room`` plus one chunk of memory."""
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise WireError(f"batch does not decompress: {exc}") from exc
    if declared > room:
        raise WireError(f"batch inflates beyond {limit} bytes")
    try:
        if declared >= 0:
            out = zstandard.ZstdDecompressor().decompress(frame)
            if len(out) != declared:
                raise WireError("batch does not decompress: frame shorter than it declares")
            return out
        pieces: list[bytes] = []
        size = 0
        with zstandard.ZstdDecompressor().stream_reader(frame, read_across_frames=False) as reader:
            while True:
                chunk = reader.read(min(_INFLATE_CHUNK, room - size + 1))
                if not chunk:
                    break
                pieces.append(chunk)
                size += len(chunk)
                if size > room:
                    raise WireError(f"batch inflates beyond {limit} bytes")
    except zstandard.ZstdError as exc:
        raise WireError(f"batch does not decompress: {exc}") from exc
    return b"".join(pieces)
