"""The pre-flight check from the source gateway (``mailrepl.shared.engines.preflight``): on demand
(``POST /api/v1/servers/check``, operator; the last reports at ``GET``, viewer) and automatically
before the first protection of a server (findings logged, one line each; a blocker does not stop
the protection: what it breaks fails visibly on its own)."""
from __future__ import annotations

import logging
import threading

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from mailrepl.shared.engines.preflight import check_server
from mailrepl.shared.engines.preflight_rules import Finding
from mailrepl.shared.runtime.api_common import ERROR_RESPONSES
from mailrepl.shared.runtime.authz import Authorizer

__all__ = ["PreflightService", "preflight_router"]

log = logging.getLogger("mailrepl.preflight")


class CheckBody(BaseModel):
    server: str | None = None  # None: every configured server
    address: str | None = None  # the mailbox the probe writes into (default: the server's first user)


class FindingOut(BaseModel):
    server: str
    level: str
    topic: str
    text: str
    fix: str


class CheckReport(BaseModel):
    findings: list[FindingOut]
    blockers: int


class PreflightService:
    """``servers``: name -> (kind, adapter, configured users)."""

    def __init__(self, servers: dict[str, tuple[str, object, tuple[str, ...]]]) -> None:
        self.servers = servers
        self.reports: dict[str, list[Finding]] = {}
        self._lock = threading.Lock()

    def run(self, server: str | None = None, address: str | None = None) -> list[Finding]:
        names = [server] if server is not None else sorted(self.servers)
        out: list[Finding] = []
        for name in names:
            kind, adapter, users = self.servers[name]
            findings = check_server(name, kind, adapter, address or (users[0] if users else None))
            with self._lock:
                self.reports[name] = findings
            out += findings
        return out

    def before_first_protection(self, server: str, address: str) -> None:
        """Check ``server`` once, probing ``address``, and log the findings. Never raises."""
        with self._lock:
            if server in self.reports or server not in self.servers:
                return
        try:
            findings = self.run(server, address)
        except Exception:  # noqa: BLE001 - a failed check must not stop the protection
            log.exception("pre-flight check of server %s failed", server)
            return
        for f in findings:
            (log.warning if f.level in ("warning", "blocker") else log.info)("pre-flight %s", f.line())


def preflight_router(service: PreflightService, authz: Authorizer) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["admin"], responses=ERROR_RESPONSES)
    viewer, operator = [Depends(authz.require("viewer"))], [Depends(authz.require("operator"))]

    def report(findings: list[Finding]) -> CheckReport:
        return CheckReport(findings=[FindingOut(**f.to_dict()) for f in findings],
                           blockers=sum(f.level == "blocker" for f in findings))

    @r.post("/servers/check", response_model=CheckReport, dependencies=operator)
    def check(body: CheckBody) -> CheckReport:
        """Run the pre-flight check now (probe messages in a scratch folder, removed afterwards)."""
        if body.server is not None and body.server not in service.servers:
            raise HTTPException(404, f"unknown server {body.server!r}")
        return report(service.run(body.server, body.address))

    @r.get("/servers/check", response_model=CheckReport, dependencies=viewer)
    def last() -> CheckReport:
        """The last report of each server checked since the gateway started."""
        with service._lock:
            return report([f for name in sorted(service.reports) for f in service.reports[name]])

    return r
