"""Compare what two IMAP servers hold for a user: the test oracle for replication.

A mailbox is reduced to, per selectable folder, a multiset of message keys
``(sha256 of BODY[], flags without \\Recent, INTERNALDATE in UTC)``. UIDs, UIDVALIDITY and
sequence numbers are deliberately not compared: the standby assigns its own. A multiset (not a
set) so that a message replicated twice shows up as a count of 2.

Reading goes through a master-user login (SASL PLAIN with authzid), the gateways' own kind of
access, with EXAMINE so that comparing never changes \\Seen or \\Recent.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import imaplib
import os
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.support.imapclient import login_as_master

__all__ = ["MessageKey", "Snapshot", "assert_same_mailbox", "corpus_files", "describe_difference", "snapshot",
           "total_messages"]

MessageKey = tuple[str, frozenset[str], str]
Snapshot = dict[str, collections.Counter]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "public"
FETCH_CHUNK = 200  # messages per FETCH: bounds client memory on big folders
MAX_LINES_PER_FOLDER = 20

_LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<delim>NIL|"(?:[^"\\]|\\.)*") ?(?P<name>.*)$', re.S)
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_INTERNALDATE = re.compile(rb'INTERNALDATE "([^"]+)"')
_NEW_RESPONSE = re.compile(rb"^\d+ \(")
_DATE = re.compile(r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}


# --- snapshot -------------------------------------------------------------------------------

def snapshot(server, user: str) -> Snapshot:
    """Per canonical folder name ("/"-separated, decoded), a Counter of message keys.

    ``server`` is anything with ``imap_port``, ``master_user`` and ``master_password`` (and
    optionally ``host``), such as a ``DovecotServer``.
    """
    conn = login_as_master(getattr(server, "host", "127.0.0.1"), server.imap_port, user,
                           server.master_user, server.master_password)
    try:
        result: Snapshot = {}
        for wire_name, canonical in _selectable_folders(conn):
            if canonical in result:
                raise AssertionError(f"two folders of {user} map to the same name {canonical!r}")
            result[canonical] = _folder_keys(conn, wire_name)
        return result
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def _selectable_folders(conn: imaplib.IMAP4) -> list[tuple[bytes, str]]:
    typ, data = conn.list('""', "*")
    if typ != "OK":
        raise AssertionError(f"LIST failed: {data!r}")
    folders = []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):  # the name came as a literal: re-quote it in place
            line = re.sub(rb"\{\d+\+?\}$", b"", item[0]) + b'"' + _quote(item[1]) + b'"'
        else:
            line = item
        m = _LIST_LINE.match(line)
        if not m:
            raise AssertionError(f"unparsable LIST response {line!r}")
        flags = {f.lower() for f in m.group("flags").split()}
        if b"\\noselect" in flags or b"\\nonexistent" in flags:
            continue
        wire_name = _unquote(m.group("name").strip())
        delim = None if m.group("delim") == b"NIL" else _unquote(m.group("delim")).decode()
        folders.append((wire_name, canonical_folder_name(wire_name, delim)))
    return folders


def canonical_folder_name(wire_name: bytes, delimiter: str | None) -> str:
    """Decode modified UTF-7, use "/" as the separator, and spell INBOX in upper case."""
    name = decode_mutf7(wire_name)
    if delimiter and delimiter != "/":
        name = name.replace(delimiter, "/")
    head, sep, rest = name.partition("/")
    if head.upper() == "INBOX":
        name = "INBOX" + sep + rest
    return name


def decode_mutf7(raw: bytes) -> str:
    """RFC 3501 modified UTF-7 mailbox name to str."""
    out, i, text = [], 0, raw.decode("ascii")
    while i < len(text):
        if text[i] != "&":
            out.append(text[i])
            i += 1
            continue
        end = text.index("-", i)
        chunk = text[i + 1 : end]
        if chunk:
            b64 = chunk.replace(",", "/")
            out.append(base64.b64decode(b64 + "=" * (-len(b64) % 4)).decode("utf-16-be"))
        else:
            out.append("&")
        i = end + 1
    return "".join(out)


def _folder_keys(conn: imaplib.IMAP4, wire_name: bytes) -> collections.Counter:
    typ, data = conn.select(b'"' + _quote(wire_name) + b'"', readonly=True)
    if typ != "OK":
        raise AssertionError(f"EXAMINE {wire_name!r} failed: {data!r}")
    exists = int(data[0])
    keys: collections.Counter = collections.Counter()
    for start in range(1, exists + 1, FETCH_CHUNK):
        end = min(start + FETCH_CHUNK - 1, exists)
        typ, data = conn.fetch(f"{start}:{end}", "(FLAGS INTERNALDATE BODY.PEEK[])")
        if typ != "OK":
            raise AssertionError(f"FETCH in {wire_name!r} failed: {data!r}")
        got = parse_fetch(data)
        if len(got) != end - start + 1:
            raise AssertionError(f"FETCH {start}:{end} in {wire_name!r} returned {len(got)} messages")
        keys.update(got)
    return keys


def parse_fetch(data: list) -> list[MessageKey]:
    """Keys from imaplib's FETCH (FLAGS INTERNALDATE BODY[]) data, whatever the item order.

    imaplib splits a response at its literal: ``(text before, literal)`` followed by the text
    after it as a separate element (``b")"``, or ``b" FLAGS (...))"`` when the server puts items
    after the body), so the metadata is searched in both.
    """
    messages: list[list] = []  # [metadata bytes, body bytes | None]
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            messages.append([item[0], item[1]])
        elif _NEW_RESPONSE.match(item):
            # a response without a literal: an empty body sent as a quoted string, or an
            # unsolicited flag update (no BODY[]), which is skipped below
            body = b"" if re.search(rb'BODY\[\] (""|NIL)', item) else None
            messages.append([item, body])
        elif messages:
            messages[-1][0] += item
    keys = []
    for meta, body in messages:
        if body is None:
            continue
        flags = _FLAGS.search(meta)
        date = _INTERNALDATE.search(meta)
        if not flags or not date:
            raise AssertionError(f"FETCH response lacks FLAGS or INTERNALDATE: {meta[:200]!r}")
        flag_set = frozenset(f for f in flags.group(1).decode().split() if f.lower() != "\\recent")
        keys.append((hashlib.sha256(body).hexdigest(), flag_set, internaldate_to_utc(date.group(1).decode())))
    return keys


def internaldate_to_utc(value: str) -> str:
    """``"3-Sep-2024 10:00:00 +0200"`` → ``"2024-09-03T08:00:00+00:00"`` (locale-independent)."""
    m = _DATE.match(value)
    if not m:
        raise AssertionError(f"bad INTERNALDATE {value!r}")
    day, mon, year, hh, mm, ss, sign, oh, om = m.groups()
    offset = timedelta(hours=int(oh), minutes=int(om)) * (1 if sign == "+" else -1)
    local = datetime(int(year), _MONTHS[mon.lower()], int(day), int(hh), int(mm), int(ss),
                     tzinfo=timezone(offset))
    return local.astimezone(timezone.utc).isoformat()


def _quote(name: bytes) -> bytes:
    return name.replace(b"\\", b"\\\\").replace(b'"', b'\\"')


def _unquote(token: bytes) -> bytes:
    if len(token) >= 2 and token[:1] == b'"' and token[-1:] == b'"':
        return re.sub(rb"\\(.)", rb"\1", token[1:-1])
    return token


# --- comparison -----------------------------------------------------------------------------

def assert_same_mailbox(a, b, user: str) -> None:
    """Fail with a per-folder, per-message explanation unless ``user`` looks the same on both."""
    label_a, label_b = getattr(a, "name", "a"), getattr(b, "name", "b")
    if label_a == label_b:
        label_a, label_b = f"{label_a}[a]", f"{label_b}[b]"
    diff = describe_difference(snapshot(a, user), snapshot(b, user), label_a, label_b)
    if diff:
        raise AssertionError(f"mailbox {user!r} differs between {label_a} and {label_b}:\n{diff}")


def describe_difference(sa: Mapping[str, collections.Counter], sb: Mapping[str, collections.Counter],
                        label_a: str = "a", label_b: str = "b") -> str:
    """A readable account of how two snapshots differ; the empty string when they are equal."""
    lines: list[str] = []
    for folder in sorted(set(sa) - set(sb)):
        lines.append(f"folder {folder!r}: only on {label_a} ({_count(sum(sa[folder].values()))})")
    for folder in sorted(set(sb) - set(sa)):
        lines.append(f"folder {folder!r}: only on {label_b} ({_count(sum(sb[folder].values()))})")
    for folder in sorted(set(sa) & set(sb)):
        ca, cb = sa[folder], sb[folder]
        if ca == cb:
            continue
        detail = _folder_difference(ca, cb, label_a, label_b)
        lines.append(f"folder {folder!r}: {sum(ca.values())} on {label_a}, {sum(cb.values())} on {label_b}")
        lines.extend("  " + d for d in detail[:MAX_LINES_PER_FOLDER])
        if len(detail) > MAX_LINES_PER_FOLDER:
            lines.append(f"  ... and {len(detail) - MAX_LINES_PER_FOLDER} more differences")
    return "\n".join(lines)


def _folder_difference(ca: collections.Counter, cb: collections.Counter, label_a: str, label_b: str) -> list[str]:
    missing, extra = ca - cb, cb - ca  # on b, relative to a
    out: list[str] = []
    # the same body on both sides under a different key: flags or internal date differ
    by_hash: dict[str, list[MessageKey]] = collections.defaultdict(list)
    for key in extra.elements():
        by_hash[key[0]].append(key)
    for key in sorted(missing.elements(), key=_sort_key):
        partners = by_hash.get(key[0])
        if partners:
            other = partners.pop(0)
            missing[key] -= 1
            extra[other] -= 1
            out.append(f"{key[0][:12]}: {label_a} {_describe(key)} / {label_b} {_describe(other)}")
    for key in sorted(+missing, key=_sort_key):
        n = missing[key]
        if cb[key]:
            out.append(f"{_short(key)}: {ca[key]} on {label_a}, only {cb[key]} on {label_b}")
        else:
            out.append(f"{_short(key)}: missing on {label_b}" + (f" ({n} copies)" if n > 1 else ""))
    for key in sorted(+extra, key=_sort_key):
        n = extra[key]
        if ca[key]:
            out.append(f"{_short(key)}: duplicated on {label_b} ({cb[key]} copies, {ca[key]} on {label_a})")
        else:
            out.append(f"{_short(key)}: extra on {label_b}" + (f" ({n} copies)" if n > 1 else ""))
    return out


def _sort_key(key: MessageKey) -> tuple:
    return (key[2], key[0], sorted(key[1]))


def _describe(key: MessageKey) -> str:
    return f"flags={{{' '.join(sorted(key[1]))}}} date={key[2]}"


def _short(key: MessageKey) -> str:
    return f"{key[0][:12]} {_describe(key)}"


def _count(n: int) -> str:
    return f"{n} message" + ("" if n == 1 else "s")


# --- corpus ---------------------------------------------------------------------------------

def corpus_files(root: str | os.PathLike | None = None) -> list[Path]:
    """Every ``.eml`` of the handbook's public corpus, sorted.

    Found next to the repository (``<repo>/../shared/corpus/public``) unless ``MAILREPL_CORPUS``
    names another directory. A missing or empty corpus is an error, not an empty list: a test
    that silently iterates over nothing proves nothing.
    """
    base = Path(root or os.environ.get("MAILREPL_CORPUS") or DEFAULT_CORPUS)
    if not base.is_dir():
        raise FileNotFoundError(f"mail corpus not found at {base} (set MAILREPL_CORPUS to its directory)")
    files = sorted(p for p in base.rglob("*.eml") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no .eml files under {base} (set MAILREPL_CORPUS to the corpus directory)")
    return files


def total_messages(snap: Mapping[str, collections.Counter]) -> int:
    """How many messages a snapshot holds over all folders."""
    return sum(sum(c.values()) for c in snap.values())
