"""``mailrepl check-servers --config FILE``: the pre-flight check of every mail server a gateway
config names (a source config: its primary servers; a recovery config: its standby servers and
its ``[[primaries]]``), run from this host with the config's service accounts.

One line per finding (``server: level topic: text -- change: what``), or ``--json``; exit status 1
when a finding is a blocker, 0 otherwise, 2 for a wrong config.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from mailrepl.shared.cli.roles import load_role
from mailrepl.shared.engines.preflight import check_server
from mailrepl.shared.engines.preflight_rules import Finding
from mailrepl.shared.errors import ConfigError

__all__ = ["check_servers", "configured_servers"]


def configured_servers(config: Path, environ: Mapping[str, str] | None = None) -> list:
    """The ServerSettings of a source or a recovery config (whichever the file is)."""
    errors = []
    for role in ("source", "recovery"):
        try:
            settings = load_role(role).load_settings(config, environ)
        except ConfigError as exc:
            errors.append(exc)
            continue
        return list(settings.servers) + list(getattr(settings, "primaries", ()))
    raise errors[0]


def check_servers(config: Path, *, server: str | None = None, address: str | None = None,
                  as_json: bool = False, out=print) -> int:
    from mailrepl.shared.adapters.factory import make_adapter

    servers = configured_servers(config)
    if server is not None:
        servers = [s for s in servers if s.name == server]
        if not servers:
            raise ConfigError(f"--server: no server {server!r} in {config}")
    findings: list[Finding] = []
    for srv in servers:
        who = address or (srv.users[0] if srv.users else None)
        findings += check_server(srv.name, srv.kind, make_adapter(srv), who)
    if as_json:
        out(json.dumps({"findings": [f.to_dict() for f in findings],
                        "blockers": sum(f.level == "blocker" for f in findings)}, indent=2))
    else:
        for f in findings:
            out(f.line())
    return 1 if any(f.level == "blocker" for f in findings) else 0
