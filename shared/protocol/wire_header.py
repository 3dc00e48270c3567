"""Strict reading of a batch header (the JSON of ``mailrepl.shared.protocol.wire``).

Everything in a header arrived over the network: every field is typed and range-checked here
before anything is built from it, and any deviation is one :class:`WireError` saying where
(``segments[0].changes[3].mid: …``) — never a ``TypeError`` or a traceback further on.

- sequence numbers: ``1 … 2^63-1``; a range ``FIRST-LAST`` with ``FIRST <= LAST``, one change
  per number; message ids (``mid``, ``old_mid``) ``1 … 2^63-1`` (a reverse batch's may also be
  negative: messages born at DR); sizes ``0 … 2^63-1``;
- gateway ids, server names, addresses: non-empty, bounded, no control characters (C0, DEL, C1,
  U+2028/9), addresses also without white space; folder names: non-empty, bounded, no control
  characters;
- flags and special-use attributes: lists of bounded length of non-empty strings without control
  characters or spaces;
- hashes: lower-case hex of the right length; no unknown keys anywhere.
"""
from __future__ import annotations

import re
from typing import Any

from mailrepl.shared.errors import WireError
from mailrepl.shared.model import Change, Kind, SeqRange

__all__ = ["SEQ_MAX", "HeaderParts", "read_header"]

SEQ_MAX = 2**63 - 1
NAME_MAX = 255  # gateway ids, server names
ADDRESS_MAX = 320  # RFC 5321: 64 + 1 + 255
FOLDER_MAX = 1024
FLAG_MAX = 256
FLAGS_MAX = 1000  # flags on one message
TIME_MAX = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACE = re.compile(r"\s")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_RANGE = re.compile(r"([0-9]{1,19})(?:-([0-9]{1,19}))?")
_KINDS = {k.value for k in Kind}
_CHANGE_KEYS = frozenset(Change.__dataclass_fields__)

HeaderParts = tuple[str, str, tuple[tuple[str, str, SeqRange, tuple[Change, ...], tuple[str, ...]], ...],
                    list[tuple[str, int]], list[tuple[str, int]]]


def _fail(where: str, problem: str) -> WireError:
    return WireError(f"malformed batch header: {where}: {problem}")


def _obj(value: Any, where: str, keys: frozenset[str], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {_type(value)}")
    extra = set(value) - keys
    if extra:
        raise _fail(where, f"unknown key(s) {', '.join(sorted(map(repr, extra)))[:200]}")
    for key in required:
        if key not in value:
            raise _fail(where, f"missing {key!r}")
    return value


def _list(value: Any, where: str, limit: int | None = None) -> list:
    if not isinstance(value, list):
        raise _fail(where, f"expected a list, got {_type(value)}")
    if limit is not None and len(value) > limit:
        raise _fail(where, f"more than {limit} entries")
    return value


def _int(value: Any, where: str, low: int, high: int = SEQ_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(where, f"expected an integer, got {_type(value)}")
    if not low <= value <= high:
        raise _fail(where, f"out of range {low}-{high}")
    return value


def _text(value: Any, where: str, limit: int, *, spaces: bool = True, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"expected a string, got {_type(value)}")
    if not value and not empty:
        raise _fail(where, "empty")
    if len(value) > limit:
        raise _fail(where, f"longer than {limit} characters")
    if _CONTROL.search(value):
        raise _fail(where, "contains a control character")
    if not spaces and _SPACE.search(value):
        raise _fail(where, "contains white space")
    return value


def _hex(value: Any, where: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _fail(where, "expected a lower-case hex digest")
    return value


def _words(value: Any, where: str) -> list[str]:
    return [_text(v, f"{where}[{i}]", FLAG_MAX, spaces=False) for i, v in enumerate(_list(value, where, FLAGS_MAX))]


def _range(value: Any, where: str) -> SeqRange:
    m = _RANGE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise _fail(where, "expected FIRST-LAST")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) is not None else first
    if not 1 <= first <= last <= SEQ_MAX:
        raise _fail(where, f"expected 1 <= FIRST <= LAST <= {SEQ_MAX}")
    return SeqRange(first, last)


def _change(value: Any, where: str, born_ids: bool) -> Change:
    d = _obj(value, where, _CHANGE_KEYS, ("kind", "folder"))
    if not isinstance(d["kind"], str) or d["kind"] not in _KINDS:
        raise _fail(f"{where}.kind", "unknown change kind")
    _text(d["folder"], f"{where}.folder", FOLDER_MAX)
    if d.get("new_folder") is not None:
        _text(d["new_folder"], f"{where}.new_folder", FOLDER_MAX)
    for key in ("mid", "old_mid"):
        if d.get(key) is not None:
            mid = _int(d[key], f"{where}.{key}", -SEQ_MAX if born_ids else 1)
            if mid == 0:
                raise _fail(f"{where}.{key}", "zero is not a message id")
    if d.get("size") is not None:
        _int(d["size"], f"{where}.size", 0)
    if d.get("sha256") is not None:
        _hex(d["sha256"], f"{where}.sha256", _HEX64)
    if d.get("internaldate") is not None:
        _text(d["internaldate"], f"{where}.internaldate", TIME_MAX)
    for key in ("flags", "special_use"):
        if d.get(key) is not None:
            _words(d[key], f"{where}.{key}")
    try:
        return Change.from_dict(d)
    except (ValueError, TypeError) as exc:
        raise _fail(where, str(exc)[:200]) from None


def _segment(value: Any, where: str, born_ids: bool) -> tuple[str, str, SeqRange, tuple[Change, ...], tuple[str, ...]]:
    d = _obj(value, where, frozenset({"server", "address", "range", "captured", "changes"}),
             ("server", "address", "range", "changes"))
    server = _text(d["server"], f"{where}.server", NAME_MAX)
    address = _text(d["address"], f"{where}.address", ADDRESS_MAX, spaces=False)
    rng = _range(d["range"], f"{where}.range")
    changes = _list(d["changes"], f"{where}.changes")
    if len(changes) != len(rng):
        raise _fail(f"{where}.changes", f"{len(changes)} changes for the {len(rng)} numbers of {rng}")
    captured = _list(d.get("captured") or [], f"{where}.captured")
    if captured and len(captured) != len(changes):
        raise _fail(f"{where}.captured", "expected one capture time per change")
    times = tuple(_text(t, f"{where}.captured[{i}]", TIME_MAX) for i, t in enumerate(captured))
    return server, address, rng, tuple(_change(c, f"{where}.changes[{i}]", born_ids) for i, c in enumerate(changes)), times


def _listed(value: Any, where: str, key: str, pattern: re.Pattern[str], extra: frozenset[str] = frozenset()
            ) -> list[tuple[str, int]]:
    out = []
    for i, item in enumerate(_list(value, where)):
        d = _obj(item, f"{where}[{i}]", frozenset({key, "size"}) | extra, (key, "size"))
        if "stored" in d and not isinstance(d["stored"], bool):
            raise _fail(f"{where}[{i}].stored", "expected true or false")
        out.append((_hex(d[key], f"{where}[{i}].{key}", pattern), _int(d["size"], f"{where}[{i}].size", 0)))
    return out


def read_header(header: Any, version: int, *, born_ids: bool = False) -> HeaderParts:
    """``(source, created, segments, messages, parts)`` of a decoded header JSON, checked throughout;
    ``messages`` (version 1: ``blobs``) and ``parts`` as ``(hash, size)`` in their listed order.
    ``born_ids``: a reverse batch (failback), whose negative message ids name messages born at DR."""
    listing = "blobs" if version == 1 else "messages"
    keys = {"source", "created", "segments", listing} | ({"parts"} if version >= 2 else set())
    d = _obj(header, "header", frozenset(keys), ("source", "segments", listing))
    source = _text(d["source"], "source", NAME_MAX, spaces=False)
    created = _text(d.get("created", ""), "created", TIME_MAX, empty=True)
    segments = tuple(_segment(s, f"segments[{i}]", born_ids) for i, s in enumerate(_list(d["segments"], "segments")))
    messages = _listed(d[listing], listing, "sha256", _HEX64)
    parts = _listed(d.get("parts", []), "parts", "key", _HEX32, frozenset({"stored"})) if version >= 2 else []
    return source, created, segments, messages, parts


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)
