"""Authorisation of the admin APIs: one FastAPI dependency per route, ``authz.require(role)``.

The principal of a request is taken from ``request.state.principal`` when the request guard
(which authenticates before the body is read) put it there; else it is resolved here from the
``Authorization: Bearer`` header (and the TLS client certificate) with the gateway's
:data:`~mailrepl.shared.runtime.principals.Resolver`, and kept in ``request.state.principal``
for the audit log. No valid credentials: 401 with ``WWW-Authenticate: Bearer``; a principal
whose role may not: 403 naming the role needed.

Roles (each may what the ones before it may): ``viewer`` status, metrics, API docs;
``operator`` protect/unprotect, cutover, failback, garbage collection; ``admin`` tokens and the
audit log.
"""
from __future__ import annotations

from typing import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mailrepl.shared.runtime.principals import ADMIN_ROLES, Principal, Resolver, client_cert, role_allows

__all__ = ["Authorizer", "AUTH_RESPONSES"]

_bearer = HTTPBearer(auto_error=False, description="an admin API token (role viewer, operator or admin)")

# documented on every guarded route (OpenAPI)
AUTH_RESPONSES: dict[int | str, dict] = {
    401: {"description": "missing or invalid credentials"},
    403: {"description": "the token's role may not do this"},
}


class Authorizer:
    """Makes the per-route dependencies of one gateway from its admin resolver."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    def principal(self, request: Request, token: str | None) -> Principal | None:
        found = getattr(request.state, "principal", None)
        if found is None:
            found = self.resolver(token, client_cert(request.scope))
            if found is not None:
                request.state.principal = found
        return found

    def require(self, role: str) -> Callable[..., Principal]:
        """A dependency answering the request's principal if its role may do what ``role`` may."""
        if role not in ADMIN_ROLES:
            raise ValueError(f"unknown admin role {role!r}")

        def check(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
            found = self.principal(request, creds.credentials if creds is not None else None)
            if found is None:
                raise HTTPException(401, "missing or invalid admin token", headers={"WWW-Authenticate": "Bearer"})
            if not role_allows(found.role, role):
                raise HTTPException(403, f"role {found.role!r} may not do this (needs {role!r})")
            return found

        check.__name__ = f"require_{role}"
        return check
