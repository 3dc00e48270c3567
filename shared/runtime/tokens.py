"""Admin API tokens: the config's bootstrap token and the tokens kept in the state store.

The config's ``admin_token`` is the bootstrap credential, role ``admin``, principal
``config:admin_token`` (compared in constant time). Further tokens are created through the API
(``POST /api/v1/tokens``, ``mailrepl tokens create``): random 256-bit secrets, shown once,
stored only as their SHA-256 with a name (unique), a role, who created them and when. A revoked
token is refused from the next request on; its name may be given to a new token.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from sqlalchemy import select

from mailrepl.shared.model import utcnow
from mailrepl.shared.runtime.principals import ADMIN_ROLES, Principal, Resolver
from mailrepl.shared.store import Store
from mailrepl.shared.store.models import ApiToken

__all__ = ["CONFIG_PRINCIPAL", "TOKEN_PREFIX", "TokenInfo", "TokenExists", "NoSuchToken", "TokenStore",
           "token_hash", "admin_resolver", "valid_token_name"]

CONFIG_PRINCIPAL = "config:admin_token"
TOKEN_PREFIX = "mrt_"  # recognisable in a secret scanner; 43 URL-safe characters follow (256 bits)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


class TokenExists(ValueError):
    """A token of that name is in use."""


class NoSuchToken(LookupError):
    """No token of that name."""


@dataclass(frozen=True)
class TokenInfo:
    """A stored token as the API lists it: never the token or its hash."""

    name: str
    role: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return dict(name=self.name, role=self.role, created_at=self.created_at.isoformat(), created_by=self.created_by,
                    revoked_at=self.revoked_at.isoformat() if self.revoked_at else None)


def token_hash(token: str) -> str:
    """What the store keeps of a token: SHA-256 (hex) of its UTF-8 bytes (the token is random)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def valid_token_name(name: str) -> bool:
    """1-64 characters, letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit."""
    return bool(_NAME.match(name))


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(name=row.name, role=row.role, created_at=row.created_at, created_by=row.created_by,
                     revoked_at=row.revoked_at)


class TokenStore:
    """The ``api_token`` table of a gateway's state store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str, role: str, created_by: str) -> tuple[str, TokenInfo]:
        """A new token (returned once, never stored) named ``name`` with ``role``.

        A revoked token's name is reused (the audit log keeps the history); a live one raises
        ``TokenExists``.
        """
        if not valid_token_name(name):
            raise ValueError(f"invalid token name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
        if role not in ADMIN_ROLES:
            raise ValueError(f"unknown role {role!r} (roles: {', '.join(ADMIN_ROLES)})")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.store.tx() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.name == name))
            if row is not None and row.revoked_at is None:
                raise TokenExists(f"a token named {name!r} exists; revoke it first or choose another name")
            if row is None:
                row = ApiToken(name=name)
                s.add(row)
            row.role, row.hash, row.created_by = role, token_hash(token), created_by
            row.created_at, row.revoked_at = utcnow(), None
            s.flush()
            return token, _info(row)

    def list(self) -> list[TokenInfo]:
        with self.store.read() as s:
            return [_info(r) for r in s.scalars(select(ApiToken).order_by(ApiToken.name))]

    def revoke(self, name: str) -> TokenInfo:
        """Refuse the token from now on; revoking a revoked token changes nothing."""
        with self.store.tx() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.name == name))
            if row is None:
                raise NoSuchToken(f"no token named {name!r}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _info(row)

    def principal(self, token: str) -> Principal | None:
        """The principal of a live stored token, None for an unknown or revoked one."""
        with self.store.read() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.hash == token_hash(token)))
            if row is None or row.revoked_at is not None:
                return None
            return Principal(name=row.name, role=row.role)


def admin_resolver(config_token: str, tokens: TokenStore | None) -> Resolver:
    """Admin API credentials: the config's token (role admin), else a live stored token."""
    expected = config_token.encode("utf-8", "surrogatepass")

    def resolve(token: str | None, _cert: Mapping[str, Any] | None) -> Principal | None:
        if not token:
            return None
        if hmac.compare_digest(token.encode("utf-8", "surrogatepass"), expected):
            return Principal(name=CONFIG_PRINCIPAL, role="admin")
        if tokens is None or not token.startswith(TOKEN_PREFIX):
            return None
        return tokens.principal(token)

    return resolve
