"""The wire format between gateways: one versioned, compressed batch document.

Layout of an encoded batch (all integers big-endian)::

    b"MRPL"            magic
    u8  version        WIRE_VERSION (a receiver rejects any other with UnsupportedVersion)
    u8  codec          0 = none, 1 = zstd
    ...                payload, compressed with the codec:
        u32 header_len
        header_len bytes of UTF-8 JSON header
        the blob bytes, concatenated in the order the header lists them

Header JSON (version 1)::

    {"source": "<gateway id>", "created": "<ISO 8601>",
     "segments": [{"server": "...", "address": "...", "range": "FIRST-LAST",
                   "captured": ["<ISO 8601>", ...],        # one per change
                   "changes": [<Change.to_dict()>, ...]}],  # exactly len(range) changes
     "blobs": [{"sha256": "<hex>", "size": N}, ...]}

A segment is a contiguous range of one mailbox's sequence numbers. Every blob's bytes must hash
to its ``sha256``; every body a change refers to (``sha256``) must either travel in the batch
or already be held by the receiver (``Batch.blobs`` then simply lacks it).

The acknowledgement is JSON (see :class:`Ack`): per segment the highest sequence number the
receiver holds durably (``acked``), how far it has applied (``applied``), and a status:
``ok``, ``gap`` (``resend_from`` says where to resume) or ``conflict`` (``detail`` says which
sequence number carries different content).
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import zstandard

from shared.errors import UnsupportedVersion, WireError
from shared.model import Change, SeqRange

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

WIRE_VERSION = 1
MEDIA_TYPE = "application/vnd.mailrepl.batch"
MAGIC = b"MRPL"
CODEC_NONE, CODEC_ZSTD = 0, 1
MAX_DECODED_BYTES = 1 << 30  # refuse to inflate a batch beyond 1 GiB
_PREFIX = struct.Struct(">4sBB")
_U32 = struct.Struct(">I")


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
    blobs: dict[str, bytes] = field(default_factory=dict)
    created: str = ""


@dataclass(frozen=True)
class SegmentResult:
    server: str
    address: str
    status: str  # ok | gap | conflict | error
    acked: int  # highest contiguous sequence number held durably
    applied: int = 0
    resend_from: int | None = None
    detail: str | None = None
    rejected: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if v is not None}
        d["rejected"] = list(self.rejected)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SegmentResult":
        d = dict(d)
        d["rejected"] = tuple(d.get("rejected") or ())
        return cls(**d)


@dataclass(frozen=True)
class Ack:
    results: tuple[SegmentResult, ...]
    version: int = WIRE_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"v": self.version, "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Ack":
        if d.get("v") != WIRE_VERSION:
            raise UnsupportedVersion(f"acknowledgement version {d.get('v')!r}, this gateway speaks {WIRE_VERSION}")
        try:
            return cls(tuple(SegmentResult.from_dict(r) for r in d["results"]))
        except (KeyError, TypeError) as exc:
            raise WireError(f"malformed acknowledgement: {exc}") from exc


def encode_batch(batch: Batch, *, level: int = 3, compress: bool = True) -> bytes:
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
        "blobs": [{"sha256": sha, "size": len(data)} for sha, data in batch.blobs.items()],
    }
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    parts = [_U32.pack(len(head)), head, *batch.blobs.values()]
    if compress:
        cctx = zstandard.ZstdCompressor(level=level)
        payload = cctx.compress(b"".join(parts))
        return _PREFIX.pack(MAGIC, WIRE_VERSION, CODEC_ZSTD) + payload
    return _PREFIX.pack(MAGIC, WIRE_VERSION, CODEC_NONE) + b"".join(parts)


def decode_batch(data: bytes, *, max_bytes: int = MAX_DECODED_BYTES) -> Batch:
    if len(data) < _PREFIX.size:
        raise WireError("batch too short")
    magic, version, codec = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise WireError("not a mailrepl batch (bad magic)")
    if version != WIRE_VERSION:
        raise UnsupportedVersion(
            f"batch wire version {version} is not supported (this gateway speaks version {WIRE_VERSION}); "
            "upgrade the recovery gateway first"
        )
    body = memoryview(data)[_PREFIX.size :]
    if codec == CODEC_ZSTD:
        try:
            dobj = zstandard.ZstdDecompressor().decompressobj()
            payload = dobj.decompress(body)
        except zstandard.ZstdError as exc:
            raise WireError(f"batch does not decompress: {exc}") from exc
        if len(payload) > max_bytes:
            raise WireError(f"batch inflates beyond {max_bytes} bytes")
    elif codec == CODEC_NONE:
        payload = bytes(body)
    else:
        raise WireError(f"unknown codec {codec}")
    if len(payload) < 4:
        raise WireError("batch payload truncated")
    (hlen,) = _U32.unpack_from(payload)
    try:
        header = json.loads(payload[4 : 4 + hlen])
        segments = tuple(
            Segment(
                server=s["server"],
                address=s["address"],
                range=SeqRange.parse(s["range"]),
                changes=tuple(Change.from_dict(c) for c in s["changes"]),
                captured=tuple(s.get("captured") or ()),
            )
            for s in header["segments"]
        )
        blob_list = header["blobs"]
        source = header["source"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"malformed batch header: {exc}") from exc
    blobs: dict[str, bytes] = {}
    off = 4 + hlen
    view = memoryview(payload)
    for b in blob_list:
        size = int(b["size"])
        chunk = bytes(view[off : off + size])
        if len(chunk) != size:
            raise WireError("batch truncated inside a blob")
        if hashlib.sha256(chunk).hexdigest() != b["sha256"]:
            raise WireError(f"blob {b['sha256'][:16]}… does not match its hash")
        blobs[b["sha256"]] = chunk
        off += size
    if off != len(payload):
        raise WireError("trailing bytes after the last blob")
    return Batch(source=source, segments=segments, blobs=blobs, created=header.get("created", ""))
