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
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from mailrepl.shared.errors import ConfigError

__all__ = ["Table", "open_config", "show_value"]

# Names end up in URLs (/api/v1/servers/{name}/...), environment variable names and the wire.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_REQUIRED: Any = object()


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


@dataclass(frozen=True)
class _Source:
    """The file being read: its name for messages, its directory for relative paths."""

    file: str
    base_dir: Path
    environ: Mapping[str, str]


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

    def secret(self, name: str, env_var: str, *, token: bool = False) -> str:
        """A secret from ``env_var`` if set (it wins), else from the file; required, non-empty.

        ``token``: a bearer token, which must also be free of whitespace (HTTP header value).
        """
        self._used.add(name)
        if env_var in self._source.environ:
            value, origin = self._source.environ[env_var], f"environment variable {env_var}"
        elif name in self._data:
            value, origin = self._data[name], "value"
            if not isinstance(value, str):
                raise self.error(name, f"expected a string, got {show_value(value, secret=True)}")
        else:
            raise self.error(name, f"missing (set it here or in the environment variable {env_var})")
        if not value:
            raise self.error(name, f"the {origin} is empty")
        if token and any(c.isspace() for c in value):
            raise self.error(name, f"the {origin} contains whitespace")
        return value

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
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: invalid TOML: not UTF-8 text") from None
    return Table(data, "", _Source(name, Path(path).resolve().parent, environ))
