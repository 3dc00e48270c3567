"""The gateway roles the ``mailrepl`` command runs, found by name among the installed entry points.

Shared code never imports a role: each role package registers itself in the ``mailrepl.roles``
entry-point group (``pyproject.toml``) with a small module that satisfies :class:`GatewayRole`,
and the CLI looks it up by the name the admin types (``source``, ``recovery``).
"""
from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Mapping, Protocol

from mailrepl.shared.config.settings_common import ListenAddress
from mailrepl.shared.config.tls_settings import ServerTlsSettings
from mailrepl.shared.errors import ConfigError

__all__ = ["ROLE_GROUP", "ROLE_NAMES", "GatewayRole", "load_role"]

ROLE_GROUP = "mailrepl.roles"
ROLE_NAMES = ("source", "recovery")


class GatewayRole(Protocol):
    """What a role module provides to the CLI."""

    NAME: str
    DEFAULT_LISTEN: str

    def load_settings(self, path: Path, environ: Mapping[str, str] | None = None) -> Any:
        """The role's whole settings (``ConfigError`` naming the key on any mistake)."""

    def admin_endpoint(self, path: Path, environ: Mapping[str, str]) -> tuple[ListenAddress, str]:
        """Where the role's admin API listens and its admin token, from a config file."""

    def admin_tls(self, path: Path, environ: Mapping[str, str]) -> ServerTlsSettings:
        """How the role's admin API is served (TLS files, mutual TLS), from a config file."""

    def run(self, settings: Any) -> None:
        """Serve until stopped."""


def load_role(name: str) -> GatewayRole:
    found = entry_points(group=ROLE_GROUP, name=name)
    if not found:
        raise ConfigError(f"the {name} gateway is not installed (no {ROLE_GROUP!r} entry point named {name!r}): "
                          "install the mailrepl package")
    return next(iter(found)).load()
