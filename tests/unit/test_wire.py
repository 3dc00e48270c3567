"""The wire format: golden file, version checks, integrity checks."""
import hashlib
import struct
from pathlib import Path

import pytest
import zstandard

from mailrepl.shared.errors import UnsupportedVersion, WireError
from mailrepl.shared.model import Change, Kind, SeqRange
from mailrepl.shared.content.mime_split import reassemble, split_message, whole_skeleton
from mailrepl.shared.protocol.wire import WIRE_VERSION, Ack, Batch, Segment, SegmentResult, decode_batch, encode_batch

GOLDEN_V1 = Path(__file__).with_name("golden") / "batch-v1.bin"
GOLDEN = Path(__file__).with_name("golden") / "batch-v2.bin"
BODY = b"Subject: hi\r\n\r\nbody \x00\xff\r\n"
SHA = hashlib.sha256(BODY).hexdigest()
ATTACHMENT = bytes(range(256)) * 20
MIXED = (b'Subject: report\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nsee attached\r\n'
         b"--b\r\nContent-Type: application/octet-stream\r\n\r\n" + ATTACHMENT + b"\r\n--b--\r\n")
MIXED_SHA = hashlib.sha256(MIXED).hexdigest()


def _changes() -> tuple[Change, ...]:
    return (
        Change(Kind.FOLDER_CREATE, "Lists/dev", special_use=()),
        Change(Kind.MSG_ADD, "Lists/dev", mid=1, sha256=SHA, size=len(BODY), flags=("\\Seen",),
               internaldate="2024-01-02T03:04:05+00:00"),
        Change(Kind.MSG_MOVE, "Lists/dev", mid=1, new_folder="INBOX", flags=("\\Seen",)),
    )


def sample() -> Batch:
    """Version 2: one whole-message body, one split into a skeleton and a part."""
    changes = _changes() + (
        Change(Kind.MSG_ADD, "INBOX", mid=2, sha256=MIXED_SHA, size=len(MIXED), flags=(),
               internaldate="2024-01-02T03:04:05+00:00"),
    )
    seg = Segment("primary", "alice", SeqRange(1, 4), changes, captured=("2024-01-02T03:04:06+00:00",) * 4)
    split = split_message(MIXED)
    assert not split.whole
    return Batch("hq", (seg,), {SHA: whole_skeleton(BODY), MIXED_SHA: split.skeleton}, dict(split.blobs),
                 created="2024-01-02T03:04:07+00:00")


def test_golden_file_decodes_to_the_same_batch():
    # The golden file pins version 2 (written once by encode_batch(sample(), compress=False) and
    # committed): an encoder change that breaks old receivers fails here.
    assert decode_batch(GOLDEN.read_bytes()) == sample()
    assert encode_batch(sample(), compress=False) == GOLDEN.read_bytes()


def test_version_1_batches_are_still_read_as_whole_bodies():
    seg = Segment("primary", "alice", SeqRange(1, 3), _changes(), captured=("2024-01-02T03:04:06+00:00",) * 3)
    v1 = decode_batch(GOLDEN_V1.read_bytes())
    assert v1 == Batch("hq", (seg,), {SHA: whole_skeleton(BODY)}, {}, created="2024-01-02T03:04:07+00:00")
    assert reassemble(v1.messages[SHA], {}) == BODY


def test_compressed_round_trip():
    data = encode_batch(sample())
    assert data[:4] == b"MRPL" and data[4] == WIRE_VERSION
    assert decode_batch(data) == sample()


def test_parts_that_do_not_shrink_travel_stored_not_compressed():
    import json
    import os
    import struct

    import xxhash
    import zstandard

    jpeg_like = os.urandom(200_000)  # what a JPEG or ZIP stream looks like to zstd
    text_like = b"quarterly figures, region by region\r\n" * 5000
    base = sample()
    parts = dict(base.parts)
    parts[xxhash.xxh3_128(jpeg_like).hexdigest()] = jpeg_like
    parts[xxhash.xxh3_128(text_like).hexdigest()] = text_like
    batch = Batch(base.source, base.segments, base.messages, parts, created=base.created)
    data = encode_batch(batch)
    assert decode_batch(data) == batch
    (frame_len,) = struct.unpack_from(">Q", data, 6)
    frame = data[14 : 14 + frame_len]
    assert data[14 + frame_len :] == jpeg_like, "the incompressible part follows the frame as it is"
    payload = zstandard.ZstdDecompressor().decompressobj().decompress(frame)
    (hlen,) = struct.unpack_from(">I", payload)
    listed = json.loads(payload[4 : 4 + hlen])["parts"]
    assert [p.get("stored", False) for p in listed] == [False] * (len(listed) - 1) + [True]
    assert len(data) < len(jpeg_like) + len(text_like) // 20, "the text part is still compressed"
    # a frame length pointing past the end is refused
    broken = bytearray(data)
    struct.pack_into(">Q", broken, 6, len(data))
    with pytest.raises(WireError, match="truncated"):
        decode_batch(bytes(broken))


def test_newer_version_is_rejected_clearly():
    data = bytearray(encode_batch(sample()))
    data[4] = WIRE_VERSION + 1
    with pytest.raises(UnsupportedVersion, match=f"version {WIRE_VERSION + 1} is not supported"):
        decode_batch(bytes(data))


def test_corrupted_part_is_rejected():
    data = bytearray(encode_batch(sample(), compress=False))
    data[-3] ^= 0xFF  # inside the part, the last thing in the payload
    with pytest.raises(WireError, match="does not match its hash"):
        decode_batch(bytes(data))


@pytest.mark.parametrize("data", [b"", b"MRP", b"XXXX\x01\x01", b"MRPL\x01\x07abc", b"MRPL\x01\x01notzstd",
                                  b"MRPL\x02\x01abc", b"MRPL\x02\x01" + (3).to_bytes(8, "big") + b"abc"])
def test_garbage_is_a_wire_error(data):
    with pytest.raises(WireError):
        decode_batch(data)


def test_segment_must_hold_one_change_per_number():
    with pytest.raises(WireError):
        Segment("p", "a", SeqRange(1, 2), (Change(Kind.FOLDER_DELETE, "X"),))


def test_ack_round_trip_and_version():
    ack = Ack((SegmentResult("p", "a", "gap", 4, 2, resend_from=5, detail="x"),))
    assert Ack.from_json(ack.to_json()) == ack
    with pytest.raises(UnsupportedVersion):
        Ack.from_json({"v": 99, "results": []})


def _zstd_batch(payload: bytes, *, declare: bool) -> bytes:
    """A version-2 batch whose frame does or does not declare its decompressed size."""
    frame = zstandard.ZstdCompressor(level=1, write_content_size=declare).compress(payload)
    return b"MRPL" + bytes([WIRE_VERSION, 1]) + struct.pack(">Q", len(frame)) + frame


@pytest.mark.parametrize("declare", [True, False])
def test_inflating_past_the_limit_is_refused_whether_the_frame_declares_its_size_or_not(declare):
    whole = encode_batch(sample(), compress=False)[6:]  # the payload (header, bodies, parts)
    data = _zstd_batch(whole, declare=declare)
    assert decode_batch(data).segments == sample().segments
    with pytest.raises(WireError, match="inflates beyond"):
        decode_batch(data, max_bytes=len(whole) - 1)
    bomb = _zstd_batch(b"\x00" * (64 << 20), declare=declare)  # 64 MiB of zeros in a few KiB
    with pytest.raises(WireError, match="inflates beyond"):
        decode_batch(bomb, max_bytes=1 << 20)


def test_a_frame_that_holds_less_than_it_declares_is_refused():
    frame = bytearray(zstandard.ZstdCompressor(level=1).compress(b"x" * 5000))
    params = zstandard.get_frame_parameters(bytes(frame))
    assert params.content_size == 5000
    truncated = bytes(frame[: len(frame) - 4])  # its last block cut short
    data = b"MRPL" + bytes([WIRE_VERSION, 1]) + struct.pack(">Q", len(truncated)) + truncated
    with pytest.raises(WireError):
        decode_batch(data)


def test_encoding_holds_one_copy_of_the_encoded_batch():
    # The compressed frame is written into the encoded batch as it comes out: building an
    # 8 MiB batch of hardly compressible bodies (plus a part that travels stored) allocates the
    # encoded bytes once, not its pieces and then their joined copy.
    import base64
    import dataclasses
    import os
    import tracemalloc

    bodies = {hashlib.sha256(b"%d" % i).hexdigest(): b"Subject: x\r\n\r\n" + base64.encodebytes(os.urandom(38_000))
              for i in range(160)}
    from mailrepl.shared.content.mime_split import blob_key

    stored = os.urandom(200_000)
    batch = dataclasses.replace(sample(), messages=bodies, parts={blob_key(stored): stored})
    tracemalloc.start()
    try:
        data = encode_batch(batch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data) > 5 * 2**20 and data.endswith(stored)
    assert peak < 1.3 * len(data), (peak, len(data))
    decoded = decode_batch(data)
    assert decoded.messages == bodies and decoded.parts == {blob_key(stored): stored}


def test_decoding_copies_neither_the_stored_parts_nor_the_inflated_frame():
    # A batch of incompressible attachments (travelling stored, after the frame) and text parts
    # (compressed): decoding allocates the inflated frame once and hands out every part as a
    # view into it or into the received bytes, not the frame and the stored parts joined, and
    # then each part copied again.
    import os
    import tracemalloc

    from mailrepl.shared.content.mime_split import blob_key

    stored = [os.urandom(300_000) for _ in range(8)]
    texts = [(b"line %d of a long text part\r\n" % i) * 4000 for i in range(4)]
    parts = {blob_key(p): p for p in stored + texts}
    batch = Batch(sample().source, sample().segments, sample().messages, parts, created=sample().created)
    data = encode_batch(batch)
    inflated = sum(map(len, texts))
    tracemalloc.start()
    try:
        decoded = decode_batch(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded == batch
    assert peak < inflated + 256 * 1024, (peak, inflated, sum(map(len, stored)))
    view = decoded.parts[blob_key(stored[0])]
    assert isinstance(view, memoryview) and view.obj is data, "a stored part is read in place"


def test_an_item_straddling_the_frame_and_the_stored_tail_is_read_whole():
    # our encoder never writes one, but the format allows it: the bytes are the same either way
    import json
    import os

    import xxhash

    part = os.urandom(10_000)
    key = xxhash.xxh3_128(part).hexdigest()
    base = sample()
    head = json.dumps({"source": base.source, "created": base.created, "segments": [], "messages": [],
                       "parts": [{"key": key, "size": len(part)}]}).encode()
    frame = zstandard.ZstdCompressor().compress(struct.pack(">I", len(head)) + head + part[:4000])
    data = b"MRPL" + bytes([WIRE_VERSION, 1]) + struct.pack(">Q", len(frame)) + frame + part[4000:]
    assert bytes(decode_batch(data).parts[key]) == part
    with pytest.raises(WireError, match="trailing"):
        decode_batch(data + b"x")
    with pytest.raises(WireError, match="truncated"):
        decode_batch(data[:-1])
