r"""Canonical folder names <-> one IMAP server's names. Pure: no I/O.

Canonical names are what mailrepl stores and ships: Unicode, ``/`` between levels, ``INBOX``
spelled in capitals, no personal-namespace prefix. A server spells the same folder with its
personal namespace prefix (``INBOX.`` on Cyrus with ``altnamespace: no``, empty on Dovecot and
Cyrus with altnamespace), its hierarchy separator and modified UTF-7.

Separators are escaped, never swapped: a level is always one level on both sides. On a server
whose separator is not ``/``:

- a ``/`` inside a level (possible on some of them; Cyrus refuses it) is read as ``∕`` (U+2215
  DIVISION SLASH), which is written as it is;
- the server's separator inside a canonical level (``Release v1.2`` on a ``.`` server) is written
  as its look-alike (``.`` -> ``․`` U+2024 ONE DOT LEADER) and read back as the separator.

Characters a server refuses in any name (``refused``; Cyrus: ``"``, ``\``, ``%``, ``^``) are
written as their full-width look-alikes (U+FF02, U+FF3C, U+FF05, U+FF3E) and read back as the
character, so ``Say "hi"`` on Dovecot is ``Say ＂hi＂`` on Cyrus and ``Say "hi"`` again at failback.

The mapping is a bijection between the names each side can hold, so a folder keeps its exact
name through cutover and failback. A canonical level that contains the look-alike itself cannot
be told apart on such a server and is refused (``FolderNameUnrepresentable``), never guessed; a
name on such a server that already holds the separator's look-alike (``․``) is read as the
separator.
"""
from __future__ import annotations

from mailrepl.shared.adapters.imap_format import decode_mutf7, encode_mutf7, quoted
from mailrepl.shared.errors import ProtocolError

__all__ = ["CYRUS_REFUSED", "SEPARATOR_LOOKALIKES", "SLASH_LOOKALIKE", "FolderNameUnrepresentable", "FolderNames"]

SLASH_LOOKALIKE = "\u2215"  # DIVISION SLASH: a "/" inside one level of a non-"/" server
SEPARATOR_LOOKALIKES = {
    ".": "\u2024",  # ONE DOT LEADER
    "\\": "\u29f5",  # REVERSE SOLIDUS OPERATOR
    ":": "\u2236",  # RATIO
    "|": "\u2223",  # DIVIDES
}

# characters Cyrus IMAP refuses in a mailbox name ("NO Invalid mailbox name") -> their look-alikes
CYRUS_REFUSED = {'"': "\uff02", "\\": "\uff3c", "%": "\uff05", "^": "\uff3e"}


class FolderNameUnrepresentable(ProtocolError):
    """A canonical folder name that this server cannot hold under a name that reads back the same."""

    retryable = False


class FolderNames:
    """Canonical folder names <-> the server's names (see the module docstring).

    ``delimiter``: the server's hierarchy separator (None: a flat server); ``prefix``: its personal
    namespace prefix as NAMESPACE gives it (``"INBOX."``, or ``""``).
    """

    def __init__(self, delimiter: str | None, prefix: str = "", refused: dict[str, str] | None = None) -> None:
        self.delimiter = delimiter
        self.refused = dict(refused or {})  # character the server refuses -> the look-alike written instead
        if prefix and delimiter and not prefix.endswith(delimiter):
            prefix += delimiter
        self.prefix = prefix
        self._escape = delimiter not in (None, "/") or bool(self.refused)
        self._lookalike = SEPARATOR_LOOKALIKES.get(delimiter or "", "")

    def to_server(self, name: str) -> str:
        """The server's name (modified UTF-7) of canonical ``name``."""
        if not name:
            raise ValueError("empty folder name")
        levels = name.split("/")
        if levels[0].upper() == "INBOX":
            levels[0] = "INBOX"
            if len(levels) == 1:
                return "INBOX"
        if self._escape:
            levels = [self._level_to_server(level, name) for level in levels]
        return encode_mutf7(self.prefix + (self.delimiter or "/").join(levels))

    def from_server(self, raw: str) -> str | None:
        """The canonical name of the server's ``raw`` name; None for a name outside the personal
        namespace (other users' and shared folders)."""
        try:
            name = decode_mutf7(raw)
        except ValueError:
            name = raw  # not valid modified UTF-7 (servers sending UTF-8): take it as it is
        if name.upper() == "INBOX":
            return "INBOX"
        if self.prefix:
            if name[: len(self.prefix)].upper() != self.prefix.upper():
                return None
            name = name[len(self.prefix):]
            if not name:
                return None
        levels = name.split(self.delimiter) if self.delimiter else [name]
        if levels[0].upper() == "INBOX":
            levels[0] = "INBOX"
        if self._escape:
            levels = [self._level_from_server(level) for level in levels]
        return "/".join(levels)

    def arg(self, name: str) -> bytes:
        """The folder as a command argument (modified UTF-7 is ASCII, so always a quoted string)."""
        return quoted(self.to_server(name))

    def list_pattern(self) -> str:
        """The LIST pattern of every personal folder (INBOX is always listed with it)."""
        return "*"

    def _level_to_server(self, level: str, name: str) -> str:
        for char, lookalike in self.refused.items():
            if lookalike in level:
                raise FolderNameUnrepresentable(
                    f"folder {name!r}: a level contains {lookalike!r}, which this server's names use for {char!r}")
            level = level.replace(char, lookalike)
        if self.delimiter in (None, "/"):
            return level
        sep = self.delimiter or ""
        if sep in level and not self._lookalike:
            raise FolderNameUnrepresentable(
                f"folder {name!r}: a level contains {sep!r}, this server's separator, which has no escape")
        if self._lookalike and self._lookalike in level:
            raise FolderNameUnrepresentable(
                f"folder {name!r}: a level contains {self._lookalike!r}, which this server's names use "
                f"for {sep!r}; it would read back as another name")
        return level.replace(sep, self._lookalike)

    def _level_from_server(self, level: str) -> str:
        for char, lookalike in self.refused.items():
            level = level.replace(lookalike, char)
        if self.delimiter in (None, "/"):
            return level
        if self._lookalike:
            level = level.replace(self._lookalike, self.delimiter or "")
        return level.replace("/", SLASH_LOOKALIKE)
