"""Fuzzing (hypothesis) of what arrives over the network: the wire decoder and MIME split/reassembly.

- ``decode_batch`` on arbitrary bytes and on mutated valid batches (flipped, inserted, deleted,
  truncated bytes; mutated header JSON): only ``WireError`` (or a subclass) escapes, and with a
  small ``max_bytes`` a batch that decodes never holds more than that;
- ``split_message`` / ``reassemble`` on arbitrary bytes and on mutated corpus messages:
  ``reassemble(split(x)) == x`` exactly, or the split is the explicit whole-body form.
"""
from __future__ import annotations

import hashlib
import json
import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from mailrepl.shared.content.mime_split import Split, reassemble, split_message
from mailrepl.shared.errors import WireError
from mailrepl.shared.model import Change, Kind, SeqRange
from mailrepl.shared.protocol.wire import MAGIC, Batch, Segment, decode_batch, encode_batch
from tests.support.mailcompare import corpus_files

FAST = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
LIMIT = 256 * 1024  # max_bytes of the decoder under fuzzing


def _mime(attachment: bytes) -> bytes:
    return (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: fuzz\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="XYZ"\r\n\r\npreamble\r\n--XYZ\r\n'
            b"Content-Type: text/plain\r\n\r\nhello\r\n--XYZ\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"\r\n--XYZ--\r\nepilogue\r\n")


def _seeds() -> list[bytes]:
    seeds = [_mime(b"QUJD" * 2000), _mime(b"x" * 5000)]
    try:
        files = corpus_files()
    except FileNotFoundError:
        files = []
    seeds += [p.read_bytes() for p in files[:: max(1, len(files) // 12)][:12]]
    return seeds


SEEDS = _seeds()


def _valid_batch() -> bytes:
    body = _mime(b"QUJD" * 3000)
    sha = hashlib.sha256(body).hexdigest()
    parts = split_message(body, threshold=1024)
    changes = (Change(kind=Kind.MSG_ADD, folder="INBOX", mid=1, sha256=sha, size=len(body), flags=("\\Seen",),
                      internaldate="2024-01-01T00:00:00+00:00"),
               Change(kind=Kind.MSG_FLAGS, folder="INBOX", mid=1, flags=("$Label1",)))
    batch = Batch(source="hq", segments=(Segment("primary", "alice", SeqRange(1, 2), changes),),
                  messages={sha: parts.skeleton}, parts=dict(parts.blobs))
    return encode_batch(batch)


VALID = _valid_batch()


def _decode(data: bytes) -> None:
    try:
        batch = decode_batch(data, max_bytes=LIMIT)
    except WireError:
        return
    held = sum(map(len, batch.messages.values())) + sum(map(len, batch.parts.values()))
    assert held <= LIMIT


@FAST
@given(st.binary(max_size=4096))
def test_decoder_on_arbitrary_bytes(data):
    _decode(data)
    _decode(MAGIC + b"\x02\x01" + data)
    _decode(MAGIC + b"\x02\x00" + data)
    _decode(MAGIC + b"\x01\x01" + data)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) - 1), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, len(VALID) - 1), st.integers(0, 64)),
    st.tuples(st.just("insert"), st.integers(0, len(VALID)), st.binary(min_size=1, max_size=16)),
)


@FAST
@given(st.lists(mutation, min_size=1, max_size=4))
def test_decoder_on_mutated_valid_batches(mutations):
    data = bytearray(VALID)
    for kind, at, what in mutations:
        at = min(at, len(data))
        if kind == "flip" and at < len(data):
            data[at] ^= what
        elif kind == "cut":
            del data[at : at + what]
        elif kind == "insert":
            data[at:at] = what
    _decode(bytes(data))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _raw_batch(header: object) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">4sBB", MAGIC, 2, 0) + struct.pack(">I", len(head)) + head


@FAST
@given(st.sampled_from(["source", "segments", "messages", "parts", "server", "address", "range", "changes",
                        "captured", "kind", "folder", "mid", "flags", "size", "sha256", "key", "stored"]),
       json_values)
def test_decoder_on_mutated_header_fields(field, value):
    header = {"source": "hq", "messages": [], "parts": [], "segments": [{
        "server": "primary", "address": "alice", "range": "1", "captured": [],
        "changes": [{"kind": "msg.flags", "folder": "INBOX", "mid": 1, "flags": ["\\Seen"]}]}]}
    targets = [header, header["segments"][0], header["segments"][0]["changes"][0]]
    for t in targets:
        if field in t:
            t[field] = value
            break
    else:
        header[field] = value
    _decode(_raw_batch(header))


def _check_split(raw: bytes, threshold: int) -> None:
    split = split_message(raw, threshold=threshold)
    assert isinstance(split, Split)
    if split.whole:
        assert split.blobs == ()
    assert reassemble(split.skeleton, dict(split.blobs)) == raw


@FAST
@given(st.binary(max_size=8192), st.integers(1, 4096))
def test_split_reassembles_arbitrary_bytes(raw, threshold):
    _check_split(raw, threshold)


@FAST
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.floats(0, 1), st.binary(max_size=8)), max_size=6),
       st.integers(16, 4096))
def test_split_reassembles_mutated_messages(seed, edits, threshold):
    data = bytearray(seed)
    for where, what in edits:
        at = int(where * len(data))
        data[at : at + len(what)] = what  # overwrite (boundaries, headers, line ends get hit)
    _check_split(bytes(data), threshold)


def test_seeds_do_split():
    """The fuzzed seeds exercise the split path, not only the whole-body fallback."""
    assert not split_message(SEEDS[0], threshold=1024).whole
