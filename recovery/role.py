"""The recovery gateway as a role of the ``mailrepl`` command (entry point ``mailrepl.roles:recovery``)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from mailrepl.recovery.settings import DEFAULT_LISTEN, load_recovery_settings
from mailrepl.shared.config.settings_common import ListenAddress
from mailrepl.shared.config.tls_settings import ServerTlsSettings

__all__ = ["NAME", "DEFAULT_LISTEN", "load_settings", "admin_endpoint", "admin_tls", "run"]

NAME = "recovery"


def load_settings(path: Path, environ: Mapping[str, str] | None = None):
    return load_recovery_settings(path, environ)


def admin_endpoint(path: Path, environ: Mapping[str, str]) -> tuple[ListenAddress, str]:
    gateway = load_recovery_settings(path, environ).gateway
    return gateway.listen, gateway.admin_token


def admin_tls(path: Path, environ: Mapping[str, str]) -> ServerTlsSettings:
    return load_recovery_settings(path, environ).gateway.tls


def run(settings) -> None:
    from mailrepl.recovery.app import run as serve  # the web stack only when serving

    serve(settings)
