"""A strict reader of TOML configuration files: typed accessors that name the key path.

Every mistake becomes one ``ConfigError`` line naming the file and the key path, e.g.::

    source.toml: servers[0].port: expected an integer 1-65535, got "abc"

and a key that no accessor asked for is reported too (:meth:`Table.finish`), so a misspelt
key fails loudly instead of silently leaving a default in place.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from mailrepl.shared.errors import ConfigError

__all__ = ["MIN_TOKEN_LENGTH", "Table", "exposure", "open_config", "show_value", "token_weakness"]

# Names end up in URLs (/api/v1/servers/{name}/...), environment variable names and the wire.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_REQUIRED: Any = object()
_MAX_SECRET_FILE = 64 * 1024
_MAX_CONFIG_BYTES = 16 * 1024 * 1024
MIN_TOKEN_LENGTH = 24
MIN_TOKEN_BITS = 120  # estimated; 32 hex digits (128 bits) pass, as does secrets.token_urlsafe(16) and up
MIN_TOKEN_DISTINCT = 10  # "aaaa..." or "abab..." is not a token whatever its length


def token_weakness(value: str) -> str | None:
    """Why ``value`` is too weak for a bearer token we generate ourselves, or None.

    Printable ASCII only (it travels in an HTTP header), at least :data:`MIN_TOKEN_LENGTH`
    characters, at least :data:`MIN_TOKEN_DISTINCT` distinct ones, and an estimated strength of
    :data:`MIN_TOKEN_BITS` bits (length times the bits of the character classes it uses).
    """
    if not value.isascii() or not value.isprintable():
        return "only printable ASCII characters are allowed"
    if len(value) < MIN_TOKEN_LENGTH:
        return f"{len(value)} characters, at least {MIN_TOKEN_LENGTH} needed"
    if len(set(value)) < MIN_TOKEN_DISTINCT:
        return f"only {len(set(value))} distinct characters, at least {MIN_TOKEN_DISTINCT} needed"
    alphabet = (26 * any(c.islower() for c in value) + 26 * any(c.isupper() for c in value)
                + 10 * any(c.isdigit() for c in value) + 32 * any(not c.isalnum() for c in value))
    bits = len(value) * math.log2(alphabet)
    if bits < MIN_TOKEN_BITS:
        return f"about {bits:.0f} bits, at least {MIN_TOKEN_BITS} needed (use a longer or more varied token)"
    return None


def show_value(value: Any, *, secret: bool = False) -> str:
    """How a wrong value appears in an error: strings quoted and shortened, secrets never shown."""
    if isinstance(value, bool):
        return "a boolean" if secret else ("true" if value else "false")
    if isinstance(value, str):
        if secret:
            return "a string"
        return json.dumps(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, (int, float)):
        return "a number" if secret else repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date/time"


def exposure(st: os.stat_result) -> str | None:
    """Why a file holding a secret is too open, or None: no access for others, and group access
    only for this process's own group (``root:mailrepl 0640`` is fine for a gateway running as
    group ``mailrepl``)."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        return f"is readable or writable by others (mode {mode:04o})"
    if mode & 0o070 and st.st_gid != os.getegid():
        return f"is readable or writable by a group other than the gateway's own (mode {mode:04o})"
    return None


@dataclass
class _Source:
    """The file being read: its name for messages, its directory for relative paths, its mode."""

    file: str
    base_dir: Path
    environ: Mapping[str, str]
    exposed: str | None = None  # why the file is too open for a secret (see exposure()), or None
    shared_ok: bool = False  # insecure_demo: secrets in a readable file are allowed (loopback demo)

    def check_private(self, key: str) -> None:
        """A file holding the secret ``key`` must be private (see :func:`exposure`)."""
        if self.exposed and not self.shared_ok:
            raise ConfigError(f"{self.file}: {key}: this file holds a secret and {self.exposed}; "
                              f"run: chmod 600 {self.file} (or move the secret to "
                              f"{key.rsplit('.', 1)[-1]}_file or the environment)")


class Table:
    """One TOML table being read: typed accessors that name the key path in every error.

    Accessors remember which keys were used; :meth:`finish` then reports the first key nobody
    asked for, so a misspelt key fails loudly instead of silently falling back to a default.
    """

    def __init__(self, data: dict[str, Any], path: str, source: _Source) -> None:
        self._data = data
        self._path = path
        self._source = source
        self._used: set[str] = set()

    @property
    def file_name(self) -> str:
        """The configuration file, as errors name it."""
        return self._source.file

    @property
    def environ(self) -> Mapping[str, str]:
        return self._source.environ

    def key(self, name: str) -> str:
        """The full key path of ``name`` in this table, as errors spell it."""
        return f"{self._path}.{name}" if self._path else name

    def error(self, name: str, problem: str) -> ConfigError:
        """The one-line error for key ``name`` of this table: ``FILE: KEY.PATH: PROBLEM``."""
        return ConfigError(f"{self._source.file}: {self.key(name)}: {problem}")

    def _get(self, name: str, default: Any) -> Any:
        self._used.add(name)
        if name in self._data:
            return self._data[name]
        if default is _REQUIRED:
            raise self.error(name, "missing")
        return default

    def _typed(self, name: str, default: Any, ok: Callable[[Any], bool], expected: str) -> Any:
        value = self._get(name, default)
        if name in self._data and not ok(value):
            raise self.error(name, f"expected {expected}, got {show_value(value)}")
        return value

    def string(self, name: str, default: Any = _REQUIRED) -> str:
        """A non-empty string without surrounding whitespace."""
        value = self._typed(name, default, lambda v: isinstance(v, str), "a string")
        if name in self._data and (not value.strip() or value != value.strip()):
            raise self.error(name, f"expected a non-empty string without surrounding spaces, got {show_value(value)}")
        return value

    def name(self, name: str, default: Any = _REQUIRED) -> str:
        """An identifier: letters, digits, ``.``, ``_``, ``-`` (it ends up in URLs and env names)."""
        return self._typed(name, default, lambda v: isinstance(v, str) and bool(_NAME.match(v)),
                           "a name of letters, digits, '.', '_', '-'")

    def integer(self, name: str, default: Any = _REQUIRED, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        if minimum is not None and maximum is not None:
            expected = f"an integer {minimum}-{maximum}"
        elif minimum is not None:
            expected = f"an integer >= {minimum}"
        else:
            expected = "an integer"

        def ok(v: Any) -> bool:
            return (isinstance(v, int) and not isinstance(v, bool)
                    and (minimum is None or v >= minimum) and (maximum is None or v <= maximum))

        return self._typed(name, default, ok, expected)

    def seconds(self, name: str, default: Any = _REQUIRED) -> float:
        """A positive, finite number of seconds (TOML integers are accepted)."""

        def ok(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

        return float(self._typed(name, default, ok, "a number of seconds > 0"))

    def number(self, name: str, default: Any = _REQUIRED, *, minimum: float = 0.0) -> float:
        """A finite number >= ``minimum`` (TOML integers are accepted)."""

        def ok(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= minimum

        return float(self._typed(name, default, ok, f"a number >= {minimum:g}"))

    def boolean(self, name: str, default: Any = _REQUIRED) -> bool:
        return self._typed(name, default, lambda v: isinstance(v, bool), "true or false")

    def choice(self, name: str, choices: tuple[str, ...], default: Any = _REQUIRED) -> str:
        expected = "one of " + ", ".join(json.dumps(c) for c in choices)
        return self._typed(name, default, lambda v: v in choices and isinstance(v, str), expected)

    def strings(self, name: str, default: Any = _REQUIRED) -> tuple[str, ...]:
        value = self._typed(name, default, lambda v: isinstance(v, list), "an array of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{name}[{i}]", f"expected a string, got {show_value(item)}")
        return tuple(value)

    def http_url(self, name: str, default: Any = _REQUIRED) -> str:
        """An ``http://`` or ``https://`` URL with a host, without a trailing slash."""
        value = self.string(name, default)
        try:
            parts = urlsplit(value)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # a malformed [v6] host or a port out of range
            valid = False
        if not valid:
            raise self.error(name, f'expected an "http://" or "https://" URL, got {show_value(value)}')
        return value.rstrip("/")

    def file(self, name: str) -> Path | None:
        """An optional path to an existing file, relative to the config file's directory."""
        value = self._get(name, None)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f"expected a file path, got {show_value(value)}")
        path = self._source.base_dir / Path(value).expanduser()
        if not path.is_file():
            raise self.error(name, f"no such file: {path}")
        return path

    def secret(self, name: str, env_var: str, *, token: bool = False, required: bool = True,
               private: bool = True) -> str | None:
        """A secret, from the first of these that has it (None if none has and not ``required``):

        1. the environment variable ``env_var``;
        2. the systemd credential ``$CREDENTIALS_DIRECTORY/<env_var>`` (``LoadCredential=``);
        3. the file named by the key ``<name>_file`` (read once; it must not be readable by group
           or others);
        4. the key ``name`` in this file, which then must not be readable by group or others.

        ``private``: False when the caller decides itself whether the value in the file is a
        secret (a database URL without a password is not).
        ``token``: a bearer token we choose ourselves, so it must also be strong: printable ASCII
        without spaces, at least :data:`MIN_TOKEN_LENGTH` characters and about 128 bits
        (:func:`token_weakness`). Errors name the key and the origin, never the value.
        """
        value, origin = self.secret_source(name, env_var, private)
        if value is None:
            if not required:
                return None
            raise self.error(name, f"missing (set it here or in the environment variable {env_var})")
        if not value:
            raise self.error(name, f"the {origin} is empty")
        if token:
            if any(c.isspace() for c in value):
                raise self.error(name, f"the {origin} contains whitespace")
            problem = token_weakness(value)
            if problem:
                raise self.error(name, f"the {origin} is too weak: {problem} "
                                       f'(make one with: python3 -c "import secrets; print(secrets.token_urlsafe(32))")')
        return value

    def secret_source(self, name: str, env_var: str, private: bool = True) -> tuple[str | None, str]:
        """(value, where it came from) of a secret, unchecked; (None, "") if nowhere."""
        self._used.update((name, name + "_file"))
        if env_var in self._source.environ:
            return self._source.environ[env_var], f"environment variable {env_var}"
        cred_dir = self._source.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir and os.path.isfile(os.path.join(cred_dir, env_var)):
            path = Path(cred_dir) / env_var
            return self._read_secret_file(name, path, check_mode=False), f"systemd credential {path}"
        file_key = name + "_file"
        if file_key in self._data:
            if name in self._data:
                raise self.error(file_key, f"set either {name} or {file_key}, not both")
            path = self.file(file_key)
            return self._read_secret_file(file_key, path, check_mode=True), f"file {path}"
        if name not in self._data:
            return None, ""
        value = self._data[name]
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {show_value(value, secret=True)}")
        if private:
            self._source.check_private(self.key(name))
        return value, "value"

    def allow_shared_secrets(self) -> None:
        """``insecure_demo``: from now on secrets in a file others may read are accepted."""
        self._source.shared_ok = True

    def check_private(self, name: str) -> None:
        """Refuse this file if it holds the secret ``name`` and others may read it."""
        self._source.check_private(self.key(name))

    def secret_files(self, name: str) -> list[str]:
        """An optional array of secret files (e.g. old keys), each read once and owner-only."""
        paths = self.strings(name, [])
        out = []
        for i, value in enumerate(paths):
            path = self._source.base_dir / Path(value).expanduser()
            if not value.strip() or not path.is_file():
                raise self.error(f"{name}[{i}]", f"no such file: {path}")
            out.append(self._read_secret_file(f"{name}[{i}]", path, check_mode=True))
        return out

    def _read_secret_file(self, key: str, path: Path, *, check_mode: bool) -> str:
        try:
            with open(path, "rb") as fh:
                problem = exposure(os.fstat(fh.fileno())) if check_mode else None
                if problem:
                    raise self.error(key, f"{path} {problem}; run: chmod 600 {path}")
                raw = fh.read(_MAX_SECRET_FILE + 1)
        except OSError as exc:
            raise self.error(key, f"cannot read {path}: {exc.strerror or exc}") from None
        if len(raw) > _MAX_SECRET_FILE:
            raise self.error(key, f"{path} is larger than {_MAX_SECRET_FILE} bytes; expected one secret")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(key, f"{path} is not UTF-8 text") from None
        return text.removesuffix("\n").removesuffix("\r")

    def table(self, name: str, *, required: bool = True) -> Table:
        value = self._typed(name, _REQUIRED if required else {}, lambda v: isinstance(v, dict), "a table")
        return Table(value, self.key(name), self._source)

    def tables(self, name: str) -> list[Table]:
        """An array of tables (``[[name]]``); missing means empty."""
        value = self._typed(name, [], lambda v: isinstance(v, list), "an array of tables ([[" + name + "]])")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{i}]", f"expected a table, got {show_value(item)}")
            out.append(Table(item, f"{self.key(name)}[{i}]", self._source))
        return out

    def keys(self) -> list[str]:
        """All keys of this table, for free-form tables such as ``routes`` (read each one with
        a typed accessor)."""
        return list(self._data)

    def resolve(self, relative: str) -> Path:
        """``relative`` against the config file's directory."""
        return self._source.base_dir / relative

    def finish(self) -> None:
        """Reject the first key that no accessor asked for (a typo must not pass silently)."""
        for name in self._data:
            if name not in self._used:
                hint = difflib.get_close_matches(name, sorted(self._used), n=1)
                suffix = f' (did you mean "{hint[0]}"?)' if hint else ""
                raise self.error(name, "unknown key" + suffix)


def open_config(path: str | Path, environ: Mapping[str, str]) -> Table:
    """Parse the TOML file at ``path`` and return its root table."""
    name = str(path)
    try:
        with open(path, "rb") as fh:
            exposed = exposure(os.fstat(fh.fileno()))
            raw = fh.read(_MAX_CONFIG_BYTES + 1)
        if len(raw) > _MAX_CONFIG_BYTES:
            raise ConfigError(f"{name}: larger than {_MAX_CONFIG_BYTES} bytes; not a configuration file")
        data = tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ConfigError(f"{name}: invalid TOML: nested too deeply") from None
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: invalid TOML: not UTF-8 text") from None
    return Table(data, "", _Source(name, Path(path).resolve().parent, environ, exposed))
