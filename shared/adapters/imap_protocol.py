"""IMAP server responses: framing, tokenizing and the typed views the adapter needs.

Pure and socket-free: :class:`ResponseReader` pulls bytes through a ``recv_into`` callable, so
the same code frames a live connection and scripted byte chunks in tests.

Token model of a parsed response (``Response.args``, ``Response.code_args``):

- atom (also numbers, flags, ``BODY[]``)   -> ``str``
- quoted string or literal                 -> ``bytes`` (exact, may contain 8-bit and NUL)
- ``NIL``                                  -> ``None``
- parenthesised list                       -> ``list``
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable

from mailrepl.shared.adapters.imap_format import parse_imap_date
from mailrepl.shared.errors import ProtocolError
from mailrepl.shared.model import UidSet

__all__ = [
    "Response",
    "ResponseReader",
    "ConnectionClosed",
    "parse_response",
    "FetchItem",
    "parse_fetch",
    "ListEntry",
    "parse_list",
    "parse_status",
    "parse_vanished",
    "SelectState",
    "parse_select_state",
    "expand_sequence_set",
    "parse_appenduid",
    "parse_copyuid",
    "restore_nul",
    "as_text",
    "as_int",
]

MAX_LINE = 16 * 1024 * 1024  # longest response line accepted (literals are not lines)
MAX_LITERAL = 2 * 1024 * 1024 * 1024  # a message bigger than this is a broken stream, not mail
_DIRECT_LITERAL = 256 * 1024  # literals at least this big are received straight into their own buffer
_STATUS_NAMES = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})
_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}\Z")
# One token after optional spaces; no group matches at the end or before an unexpected byte.
# Atoms may carry a bracketed section with spaces (BODY[HEADER.FIELDS (FROM)]); a literal
# marker is only one at the end of a line.
# (Loops are unrolled and groups numbered: this runs for every token of every FETCH response.)
_TOKEN = re.compile(
    rb' *(?:(\()|(\))|"([^"\\\r\n]*(?:\\.[^"\\\r\n]*)*)"|(~?\{\d+\+?\}\Z)'
    rb'|([^\x00-\x20()"{\[\]\x7f]+(?:\[[^\]\r\n]*\][^\x00-\x20()"{\[\]\x7f]*)*))?'
)
_OPEN, _CLOSE, _QUOTED, _LITERAL, _ATOM = 1, 2, 3, 4, 5
_QUOTED_ESCAPE = re.compile(rb"\\(.)")
_CODE_NAME = re.compile(rb"[^\x00-\x20\]]+")
_NUMBER = re.compile(r"\d+")


class ConnectionClosed(EOFError):
    """The server closed the connection (``recv_into`` returned 0)."""


@dataclass(frozen=True, slots=True)
class Response:
    """One complete server response.

    ``tag`` is ``"*"`` (untagged), ``"+"`` (continuation request) or the command's tag.
    ``name`` is upper-cased (``"OK"``, ``"FETCH"``, ``"EXISTS"``; ``""`` for continuations).
    Status responses (OK/NO/BAD/BYE/PREAUTH) carry ``code``/``code_args``/``text``; data
    responses carry ``args``.
    """

    tag: str
    name: str
    number: int | None = None
    args: list = field(default_factory=list)
    code: str | None = None
    code_args: list = field(default_factory=list)
    text: str = ""


class ResponseReader:
    """Frames responses out of a byte stream read with ``recv_into``.

    One receive buffer with start/end offsets (no ``buf = buf[n:]`` copies); big literals are
    received directly into a buffer of their exact size, so a 30 MB message costs one copy into
    ``bytes`` and no quadratic re-buffering.
    """

    def __init__(self, recv_into: Callable[[memoryview], int], bufsize: int = 128 * 1024) -> None:
        self._recv_into = recv_into
        self._buf = bytearray(bufsize)
        self._start = 0
        self._end = 0

    def buffered(self) -> int:
        """Bytes received but not yet consumed."""
        return self._end - self._start

    def read(self) -> Response:
        """The next complete response (blocks in ``recv_into``)."""
        segments = [self._line()]
        literals: list[bytes] = []
        while segments[-1].endswith(b"}"):
            m = _LITERAL_AT_END.search(segments[-1])
            if m is None:
                break
            size = int(m.group(1))
            if size > MAX_LITERAL:
                raise ProtocolError(f"server announced a literal of {size} bytes")
            literals.append(self._exact(size))
            segments.append(self._line())
        return parse_response(segments, literals)

    def _fill(self) -> None:
        """Receive more bytes at the end of the buffer, compacting or growing it first if full."""
        if self._start == self._end:
            self._start = self._end = 0
        if self._end == len(self._buf):
            pending = self._end - self._start
            if self._start > 0:
                self._buf[:pending] = self._buf[self._start : self._end]
                self._start, self._end = 0, pending
            else:
                self._buf.extend(bytes(len(self._buf)))
        with memoryview(self._buf) as view, view[self._end :] as tail:
            n = self._recv_into(tail)
        if n == 0:
            raise ConnectionClosed("connection closed by the server")
        self._end += n

    def _line(self) -> bytes:
        scan = self._start
        while True:
            i = self._buf.find(b"\r\n", scan, self._end)
            if i >= 0:
                with memoryview(self._buf) as view:  # one copy, not bytearray slice + bytes
                    line = bytes(view[self._start : i])
                self._start = i + 2
                return line
            if self._end - self._start > MAX_LINE:
                raise ProtocolError(f"response line longer than {MAX_LINE} bytes")
            offset = max(0, self._end - self._start - 1)  # a CR may be the last byte so far
            self._fill()
            scan = self._start + offset

    def _exact(self, n: int) -> bytes:
        have = self._end - self._start
        if n <= have:
            with memoryview(self._buf) as view:
                data = bytes(view[self._start : self._start + n])
            self._start += n
            return data
        if n < _DIRECT_LITERAL:
            while self._end - self._start < n:
                self._fill()
            return self._exact(n)
        out = bytearray(n)
        out[:have] = self._buf[self._start : self._end]
        self._start = self._end = 0
        got = have
        with memoryview(out) as view:
            while got < n:
                k = self._recv_into(view[got:])
                if k == 0:
                    raise ConnectionClosed("connection closed by the server inside a literal")
                got += k
        return bytes(out)


class _Scanner:
    """Walks the text segments of one response; a segment ending in ``{n}`` continues after the
    n-th literal."""

    def __init__(self, segments: list[bytes], literals: list[bytes]) -> None:
        self.segments, self.literals = segments, literals
        self.seg = 0
        self.text = segments[0]
        self.pos = 0
        self.lit = 0

    def error(self, what: str) -> ProtocolError:
        line = b"".join(self.segments)[:200]
        return ProtocolError(f"cannot parse server response ({what}): {line!r}")

    def peek(self) -> int | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] == 0x20:
            self.pos += 1

    def word(self) -> str:
        """Everything up to the next space (tags, response names)."""
        end = self.text.find(b" ", self.pos)
        end = len(self.text) if end < 0 else end
        out = self.text[self.pos : end].decode("utf-8", "surrogateescape")
        self.pos = end
        return out

    def rest(self) -> str:
        out = self.text[self.pos :].decode("utf-8", "replace")
        self.pos = len(self.text)
        return out

    def tokens(self, *, until_bracket: bool = False) -> list:
        """All tokens up to the end of the response, or up to a top-level ``]`` (response codes).

        One master regex per token and an explicit stack for lists: this runs for every FETCH
        response, so it avoids per-character Python work.
        """
        out: list = []
        stack: list[list] = []
        current = out
        text, pos = self.text, self.pos
        while True:
            m = _TOKEN.match(text, pos)
            kind = m.lastindex
            if kind is None:  # only spaces up to here
                pos = m.end()
                if pos == len(text) and self.seg == len(self.segments) - 1:
                    break
                if until_bracket and not stack and text.startswith(b"]", pos):
                    break
                self.text, self.pos = text, pos
                raise self.error("unexpected character" if pos < len(text) else "unexpected end")
            pos = m.end()
            if kind == _ATOM:
                atom = m.group(kind).decode("utf-8", "surrogateescape")
                current.append(None if len(atom) == 3 and atom.upper() == "NIL" else atom)
            elif kind == _OPEN:
                if len(stack) >= 32:
                    raise self.error("lists nested too deeply")
                stack.append(current)
                current.append([])
                current = current[-1]
            elif kind == _CLOSE:
                if not stack:
                    raise self.error("unbalanced parenthesis")
                current = stack.pop()
            elif kind == _QUOTED:
                raw = m.group(kind)
                current.append(_QUOTED_ESCAPE.sub(rb"\1", raw) if b"\\" in raw else raw)
            else:  # literal: the next literal's bytes; the text goes on in the next segment
                current.append(self.literals[self.lit])
                self.lit += 1
                self.seg += 1
                text, pos = self.segments[self.seg], 0
        if stack:
            raise self.error("unterminated list")
        self.text, self.pos = text, pos
        return out

    def response_code(self) -> tuple[str, list]:
        """``[NAME args...]`` at the cursor; unparsable args are kept as one raw text atom."""
        self.pos += 1
        m = _CODE_NAME.match(self.text, self.pos)
        if m is None:
            raise self.error("empty response code")
        name = m.group().decode("ascii", "replace").upper()
        self.pos = m.end()
        close = self.text.find(b"]", self.pos)
        if close < 0:
            raise self.error("unterminated response code")
        start = self.pos
        try:
            args = self.tokens(until_bracket=True)
        except ProtocolError:
            args = [self.text[start:close].strip().decode("utf-8", "replace")]
            self.pos = close
        self.pos += 1
        return name, args


def parse_response(segments: list[bytes], literals: list[bytes]) -> Response:
    """Parse one framed response: its text segments (CRLF removed) and the literals between them."""
    s = _Scanner(segments, literals)
    tag = s.word()
    if not tag:
        raise s.error("no tag")
    s.skip_spaces()
    if tag == "+":
        return Response("+", "", text=s.rest())
    number = None
    name = s.word().upper()
    if tag == "*" and _NUMBER.fullmatch(name):
        number = int(name)
        s.skip_spaces()
        name = s.word().upper()
    if not name:
        raise s.error("no response name")
    if name in _STATUS_NAMES:
        s.skip_spaces()
        code, code_args = s.response_code() if s.peek() == 0x5B else (None, [])
        s.skip_spaces()
        return Response(tag, name, number, code=code, code_args=code_args, text=s.rest())
    if tag != "*":
        raise s.error(f"tagged response {name!r}")
    return Response(tag, name, number, args=s.tokens())


# --- typed views ------------------------------------------------------------------------------


def as_text(token) -> str:
    """An atom, string or literal as text (8-bit decoded as UTF-8); NIL as ``""``."""
    if token is None:
        return ""
    if isinstance(token, bytes):
        return token.decode("utf-8", "surrogateescape")
    if isinstance(token, str):
        return token
    raise ProtocolError(f"expected a string, got {token!r}")


def as_int(token) -> int:
    if token.__class__ is str and token.isascii() and token.isdigit():
        return int(token)
    text = as_text(token)
    if not _NUMBER.fullmatch(text):
        raise ProtocolError(f"expected a number, got {token!r}")
    return int(text)


@dataclass(slots=True)
class FetchItem:
    """The attributes of one FETCH response that the adapter uses; absent ones are None."""

    seq: int
    uid: int | None = None
    flags: frozenset[str] | None = None  # without \Recent
    modseq: int | None = None
    size: int | None = None
    internaldate: datetime | None = None
    body: bytes | None = None  # BODY[]
    binary: bytes | None = None  # BINARY[]
    guid: str | None = None  # X-GUID or EMAILID


def parse_fetch(resp: Response) -> FetchItem:
    if resp.number is None or len(resp.args) != 1 or not isinstance(resp.args[0], list) or len(resp.args[0]) % 2:
        raise ProtocolError(f"malformed FETCH response: {resp.args!r:.200}")
    item = FetchItem(resp.number)
    items = resp.args[0]
    for key, value in zip(items[::2], items[1::2]):
        name = key.upper() if key.__class__ is str else as_text(key).upper()
        if name == "UID":
            item.uid = as_int(value)
        elif name == "FLAGS":
            if not isinstance(value, list):
                raise ProtocolError(f"FLAGS is not a list: {value!r}")
            item.flags = frozenset(f for f in map(as_text, value) if f and f.lower() != "\\recent")
        elif name == "MODSEQ":
            item.modseq = as_int(value[0] if isinstance(value, list) and value else value)
        elif name == "RFC822.SIZE":
            item.size = as_int(value)
        elif name == "INTERNALDATE":
            try:
                item.internaldate = parse_imap_date(as_text(value))
            except ValueError as exc:
                raise ProtocolError(str(exc)) from exc
        elif name == "BODY[]":
            item.body = value if isinstance(value, bytes) else b""
        elif name == "BINARY[]":
            item.binary = value if isinstance(value, bytes) else b""
        elif name == "X-GUID":
            item.guid = as_text(value) or None
        elif name == "EMAILID":
            item.guid = as_text(value[0] if isinstance(value, list) and value else value) or None
    return item


@dataclass(frozen=True, slots=True)
class ListEntry:
    name: str  # as the server spells it (modified UTF-7, server delimiter)
    delimiter: str | None
    attributes: frozenset[str]  # as sent, e.g. {"\\HasNoChildren", "\\Sent"}

    def has(self, attribute: str) -> bool:
        return attribute.lower() in {a.lower() for a in self.attributes}


def parse_list(resp: Response) -> ListEntry:
    """``* LIST (attrs) delim name [extended data]``."""
    if len(resp.args) < 3 or not isinstance(resp.args[0], list):
        raise ProtocolError(f"malformed LIST response: {resp.args!r:.200}")
    attrs, delim, name = resp.args[0], resp.args[1], resp.args[2]
    return ListEntry(as_text(name), as_text(delim) if delim is not None else None, frozenset(map(as_text, attrs)))


def parse_status(resp: Response) -> tuple[str, dict[str, int | str]]:
    """``* STATUS name (KEY value ...)`` -> (name, {KEY: int, or str for X-GUID/MAILBOXID})."""
    if len(resp.args) != 2 or not isinstance(resp.args[1], list) or len(resp.args[1]) % 2:
        raise ProtocolError(f"malformed STATUS response: {resp.args!r:.200}")
    items = resp.args[1]
    out: dict[str, int | str] = {}
    for key, value in zip(items[::2], items[1::2]):
        name = as_text(key).upper()
        if isinstance(value, list):  # MAILBOXID (id)
            out[name] = as_text(value[0]) if value else ""
        elif isinstance(value, str) and _NUMBER.fullmatch(value):
            out[name] = int(value)
        else:
            out[name] = as_text(value)
    return as_text(resp.args[0]), out


def parse_vanished(resp: Response) -> tuple[bool, UidSet]:
    """``* VANISHED [(EARLIER)] uid-set`` -> (earlier, uids)."""
    args = resp.args
    earlier = bool(args) and isinstance(args[0], list)
    if earlier:
        earlier = [as_text(a).upper() for a in args[0]] == ["EARLIER"]
        args = args[1:]
    if len(args) != 1:
        raise ProtocolError(f"malformed VANISHED response: {resp.args!r:.200}")
    try:
        return earlier, UidSet.parse(as_text(args[0]))
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class SelectState:
    """What SELECT/EXAMINE reported (0 where the server did not say)."""

    uidvalidity: int = 0
    uidnext: int = 0
    highestmodseq: int = 0
    exists: int = 0


def parse_select_state(untagged: Iterable[Response]) -> SelectState:
    values = {"UIDVALIDITY": 0, "UIDNEXT": 0, "HIGHESTMODSEQ": 0}
    exists = 0
    for r in untagged:
        if r.name == "EXISTS" and r.number is not None:
            exists = r.number
        elif r.name == "OK" and r.code in values and r.code_args:
            values[r.code] = as_int(r.code_args[0])
    return SelectState(values["UIDVALIDITY"], values["UIDNEXT"], values["HIGHESTMODSEQ"], exists)


def expand_sequence_set(text: str) -> list[int]:
    """Expand ``"304,319:320"`` keeping the written order (COPYUID/APPENDUID pair sets by position).

    A range may be written high to low (RFC 3501: ``4:2`` is ``2,3,4``); it is expanded
    ascending, which is how servers pair such ranges.
    """
    out: list[int] = []
    for part in text.split(","):
        a, sep, b = part.partition(":")
        if not _NUMBER.fullmatch(a) or (sep and not _NUMBER.fullmatch(b)):
            raise ProtocolError(f"not a UID set: {text!r}")
        lo, hi = int(a), int(b) if sep else int(a)
        out.extend(range(min(lo, hi), max(lo, hi) + 1))
    return out


def parse_appenduid(code_args: list) -> tuple[int, list[int]]:
    """``[APPENDUID uidvalidity uid-set]`` -> (uidvalidity, UIDs in message order)."""
    if len(code_args) != 2:
        raise ProtocolError(f"malformed APPENDUID: {code_args!r}")
    return as_int(code_args[0]), expand_sequence_set(as_text(code_args[1]))


def parse_copyuid(code_args: list) -> tuple[int, dict[int, int]]:
    """``[COPYUID uidvalidity src-set dst-set]`` -> (uidvalidity, {source uid: destination uid})."""
    if len(code_args) != 3:
        raise ProtocolError(f"malformed COPYUID: {code_args!r}")
    src = expand_sequence_set(as_text(code_args[1]))
    dst = expand_sequence_set(as_text(code_args[2]))
    if len(src) != len(dst):
        raise ProtocolError(f"COPYUID sets differ in size: {code_args!r}")
    return as_int(code_args[0]), dict(zip(src, dst))


def restore_nul(body: bytes, binary: bytes) -> bytes:
    """The message bytes, given its ``BODY[]`` and ``BINARY[]`` as a server returned them.

    Dovecot replaces NUL by 0x80 in ``BODY[]``; ``BINARY[]`` keeps NUL but also decodes
    every part's Content-Transfer-Encoding (and rewrites its header). ``BINARY[]`` is the
    original only when it differs from ``BODY[]`` in nothing but NULs where ``BODY[]`` has
    0x80; otherwise (a message with encoded parts) ``BODY[]`` is the closest there is.
    """
    if len(binary) == len(body) and binary != body and binary.replace(b"\x00", b"\x80") == body:
        return binary
    return body
