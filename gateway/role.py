"""The source gateway as a role of the ``mailrepl`` command (entry point ``mailrepl.roles:source``)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from mailrepl.gateway.settings import DEFAULT_LISTEN, load_source_gateway, load_source_settings
from mailrepl.shared.config.settings_common import ListenAddress
from mailrepl.shared.config.tls_settings import ServerTlsSettings

__all__ = ["NAME", "DEFAULT_LISTEN", "load_settings", "admin_endpoint", "admin_tls", "run"]

NAME = "source"


def load_settings(path: Path, environ: Mapping[str, str] | None = None):
    return load_source_settings(path, environ)


def admin_endpoint(path: Path, environ: Mapping[str, str]) -> tuple[ListenAddress, str]:
    gateway = load_source_gateway(path, environ)
    return gateway.listen, gateway.admin_token


def admin_tls(path: Path, environ: Mapping[str, str]) -> ServerTlsSettings:
    return load_source_gateway(path, environ).tls


def run(settings) -> None:
    from mailrepl.gateway.app import run as serve  # the web stack only when serving

    serve(settings)
