"""Who is calling: the principal a request authenticates as, and how a gateway resolves one.

Both gateways authenticate every API request before its body is read (the request guard) and
authorise it per route afterwards. A *principal* is what a credential maps to:

- an admin API token: ``role`` ``viewer`` (status, metrics), ``operator`` (protect, unprotect,
  cutover, failback, verify) or ``admin`` (tokens, configuration); ``name`` names the token;
- a source gateway (ingest routes of the recovery gateway): ``role`` ``source`` and the
  ``source_id`` its client certificate or per-source token is bound to.

A :data:`Resolver` turns the bearer token of a request (``None`` without one) and the TLS
client certificate of its connection (``None`` without one; see :func:`client_cert`) into a
principal, or ``None`` when they are not valid. A gateway composes its resolvers with
:func:`first_of`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

__all__ = ["ADMIN_ROLES", "SOURCE_ROLE", "Principal", "Resolver", "first_of", "client_cert", "role_allows"]

ADMIN_ROLES = ("viewer", "operator", "admin")  # each role may do what the ones before it may
SOURCE_ROLE = "source"


@dataclass(frozen=True)
class Principal:
    name: str  # the token's name or the source id: what the audit log records
    role: str  # one of ADMIN_ROLES or SOURCE_ROLE
    source_id: str | None = None  # set for SOURCE_ROLE

    def __post_init__(self) -> None:
        if self.role not in ADMIN_ROLES + (SOURCE_ROLE,):
            raise ValueError(f"unknown role {self.role!r}")
        if (self.role == SOURCE_ROLE) != (self.source_id is not None):
            raise ValueError("a source principal needs a source id, and only a source principal has one")


Resolver = Callable[[Optional[str], Optional[Mapping[str, Any]]], Optional[Principal]]


def first_of(*resolvers: Resolver) -> Resolver:
    """The principal of the first resolver that knows the credentials."""

    def resolve(token: str | None, cert: Mapping[str, Any] | None) -> Principal | None:
        for r in resolvers:
            found = r(token, cert)
            if found is not None:
                return found
        return None

    return resolve


def role_allows(have: str, need: str) -> bool:
    """True if role ``have`` may do what ``need`` may (admin > operator > viewer; source apart)."""
    if have == SOURCE_ROLE or need == SOURCE_ROLE:
        return have == need
    return ADMIN_ROLES.index(have) >= ADMIN_ROLES.index(need)


def client_cert(scope: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The verified TLS client certificate of a request's connection, as ``ssl.getpeercert()``
    returns it, from the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert"]``,
    filled by the gateway's HTTP server); None on a plain connection or without a certificate."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    cert = tls.get("client_cert")
    return cert or None
