"""IMAP command formatting: strings, literals, flags, dates, UID sets, mailbox-name encoding.

Pure functions, no sockets. Everything that ends up on a command line is validated here,
because a malformed APPEND is worse than a refused one: when the server answers BAD to a
command whose non-synchronising literals (LITERAL+) are already on the wire, it goes on to
parse the message bytes as commands.
"""
from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable

from mailrepl.shared.model import UidSet

__all__ = [
    "Literal",
    "quoted",
    "astring",
    "flag_list",
    "SYSTEM_FLAGS",
    "format_imap_date",
    "parse_imap_date",
    "uid_set",
    "uid_set_batches",
    "encode_mutf7",
    "decode_mutf7",
]

# The flags RFC 3501 defines; any other backslash flag is refused by servers (Dovecot: BAD).
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")}
# ATOM-CHAR: printable ASCII except the atom-specials ( ) { % * " \ ]
_KEYWORD = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_IMAP_DATE = re.compile(r" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")


@dataclass(frozen=True)
class Literal:
    """A literal argument: ``{n}`` / ``{n+}``, or ``~{n}`` (RFC 3516 literal8) when ``binary``.

    The client decides between synchronising and non-synchronising form from the server's
    capabilities; binary is needed for data containing NUL bytes.
    """

    data: bytes
    binary: bool = False


def quoted(text: str) -> bytes:
    """``text`` as a quoted string; ValueError if it cannot be one (CR, LF, NUL or non-ASCII)."""
    if not text.isascii() or any(c in text for c in "\r\n\0"):
        raise ValueError(f"{text!r} cannot be sent as a quoted string")
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


def astring(text: str) -> bytes | Literal:
    """A string argument: quoted when possible, else a literal of its UTF-8 bytes."""
    try:
        return quoted(text)
    except ValueError:
        return Literal(text.encode("utf-8"))


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Label1)``; drops ``\\Recent`` (servers refuse to set it), sorts for stable output.

    Raises ValueError for a flag that is neither a system flag nor a valid keyword atom.
    """
    out: list[str] = []
    for flag in flags:
        if flag.startswith("\\"):
            if flag.lower() == "\\recent":
                continue
            canonical = SYSTEM_FLAGS.get(flag.lower())
            if canonical is None:
                raise ValueError(f"unknown system flag {flag!r}")
            out.append(canonical)
        elif _KEYWORD.fullmatch(flag):
            out.append(flag)
        else:
            raise ValueError(f"flag {flag!r} is not a valid IMAP keyword")
    return ("(" + " ".join(sorted(set(out))) + ")").encode("ascii")


def format_imap_date(dt: datetime) -> bytes:
    """Quoted IMAP date-time (``"02-Jan-2024 03:04:05 +0100"``) of a timezone-aware datetime.

    Month names are spelled out here rather than with ``strftime("%b")``, which follows the
    process locale. An offset with seconds (historic zones) cannot be expressed and is
    converted to UTC, which keeps the instant.
    """
    if dt.tzinfo is None:
        raise ValueError("internal date must be timezone-aware")
    offset = dt.utcoffset() or timedelta(0)
    if offset.seconds % 60 or offset.microseconds:
        dt, offset = dt.astimezone(timezone.utc), timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return (
        f'"{dt.day:02d}-{_MONTHS[dt.month - 1]}-{dt.year:04d} '
        f'{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} {sign}{hours:02d}{mins:02d}"'
    ).encode("ascii")


def parse_imap_date(text: str) -> datetime:
    """Parse an IMAP date-time (without quotes) into a timezone-aware datetime."""
    m = _IMAP_DATE.fullmatch(text)
    if m is None or m.group(2).title() not in _MONTHS:
        raise ValueError(f"not an IMAP date-time: {text!r}")
    day, month, year = int(m.group(1)), _MONTHS.index(m.group(2).title()) + 1, int(m.group(3))
    return datetime(year, month, day, int(m.group(4)), int(m.group(5)), int(m.group(6)),
                    tzinfo=_zone(m.group(7), int(m.group(8)), int(m.group(9))))


@functools.lru_cache(maxsize=64)
def _zone(sign: str, hours: int, minutes: int) -> timezone:
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if sign == "-" else offset)


def uid_set(uids: Iterable[int]) -> str:
    """Compressed sequence set (``"1:5,7,9:12"``); ValueError if empty."""
    text = UidSet(uids).format()
    if not text:
        raise ValueError("empty UID set")
    return text


def uid_set_batches(uids: Iterable[int], max_chars: int = 2000) -> list[str]:
    """Compressed sequence sets of ascending UIDs, each at most about ``max_chars`` long.

    Keeps command lines short (servers limit line length; Dovecot's default is 64 KB) while
    contiguous runs still compress to one range each.
    """
    batches: list[str] = []
    parts: list[str] = []
    length = 0
    for a, b in UidSet(uids).ranges:
        part = str(a) if a == b else f"{a}:{b}"
        if parts and length + 1 + len(part) > max_chars:
            batches.append(",".join(parts))
            parts, length = [], 0
        parts.append(part)
        length += len(part) + (1 if length else 0)
    if parts:
        batches.append(",".join(parts))
    return batches


# --- modified UTF-7 (RFC 3501 section 5.1.3) -------------------------------------------------


def _b64_encode(run: str) -> str:
    raw = base64.b64encode(run.encode("utf-16-be")).decode("ascii")
    return "&" + raw.rstrip("=").replace("/", ",") + "-"


def encode_mutf7(name: str) -> str:
    """Mailbox name in modified UTF-7: printable ASCII as is (``&`` as ``&-``), the rest base64."""
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if "\x20" <= ch <= "\x7e":
            if run:
                out.append(_b64_encode("".join(run)))
                run = []
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    if run:
        out.append(_b64_encode("".join(run)))
    return "".join(out)


def decode_mutf7(name: str) -> str:
    """Inverse of :func:`encode_mutf7`; ValueError for a malformed shift sequence."""
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError(f"unterminated modified UTF-7 sequence in {name!r}")
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
            try:
                out.append(base64.b64decode(padded, validate=True).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"bad modified UTF-7 sequence &{chunk}- in {name!r}") from exc
        i = end + 1
    return "".join(out)
