"""At-rest encryption of stored message content: AES-256-GCM with a key id per item.

What is sealed (when a key is configured): queued message bodies (``outbox_body.data``), received
skeletons (``inbox_body.data``) and blob-store parts. Each sealed item is::

    MAGIC | len(key id) (1 byte) | key id (ASCII) | nonce (12 bytes) | ciphertext + GCM tag

The key id is derived from the key (a hash, never the key), so items name the key that sealed
them and keys can rotate: new writes use the current key, old keys stay configured for reading
until nothing sealed with them is left. The associated data is the item's content address (the
body's SHA-256 or the part's XXH3 key): a sealed item moved under another address does not open.
Content addresses stay those of the plaintext, so deduplication works as before.

Items stored without encryption stay readable after it is turned on (they do not start with
``MAGIC``). Plain data that happens to start with ``MAGIC`` is stored behind a zero-length key
id, so every item reads back exactly.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailrepl.shared.errors import StoreError

__all__ = ["MAGIC", "Sealer", "SealError", "UnknownKey", "PLAIN", "key_id"]

MAGIC = b"\x00mrenc\x01"
_NONCE = 12


class SealError(StoreError):
    """A sealed item does not open: damaged, or sealed under another address or key."""
    retryable = False


class UnknownKey(SealError):
    """A sealed item names a key that is not configured (wrong key, or an old key not listed)."""


def key_id(key: bytes) -> str:
    """The public id of a key: 16 hex digits of a domain-separated SHA-256 (not the key)."""
    return hashlib.sha256(b"mailrepl at-rest key id\0" + key).hexdigest()[:16]


class Sealer:
    """Seals with the current key (None: stores plaintext) and opens with any configured key."""

    def __init__(self, key: bytes | None = None, old_keys: Iterable[bytes] = ()) -> None:
        keys = ([key] if key is not None else []) + list(old_keys)
        for k in keys:
            if len(k) != 32:
                raise ValueError("an at-rest key is 32 bytes (AES-256)")
        self._aead = {key_id(k): AESGCM(k) for k in keys}
        self.key_id = key_id(key) if key is not None else None

    @property
    def enabled(self) -> bool:
        return self.key_id is not None

    def __repr__(self) -> str:
        return f"Sealer(key_id={self.key_id!r}, readable={sorted(self._aead)!r})"

    def seal(self, data: bytes, address: str) -> bytes:
        """``data`` (any bytes-like object) as stored: sealed under the current key, or as it is
        (escaped if need be)."""
        if self.key_id is None:
            return MAGIC + b"\0" + data if bytes(data[:len(MAGIC)]) == MAGIC else data
        nonce = os.urandom(_NONCE)
        kid = self.key_id.encode()
        return (MAGIC + bytes([len(kid)]) + kid + nonce
                + self._aead[self.key_id].encrypt(nonce, data, address.encode()))

    def open(self, stored: bytes, address: str) -> bytes:
        """The plaintext of a stored item (sealed or not); ``SealError``/``UnknownKey`` if it
        does not open."""
        if not stored.startswith(MAGIC):
            return stored
        at = len(MAGIC)
        if len(stored) <= at:
            raise SealError(f"stored item {address[:16]}… is truncated")
        n = stored[at]
        if n == 0:
            return stored[at + 1:]
        kid = stored[at + 1:at + 1 + n].decode("ascii", "replace")
        aead = self._aead.get(kid)
        if aead is None:
            configured = ", ".join(sorted(self._aead)) or "none"
            raise UnknownKey(f"stored item {address[:16]}… was encrypted with key id {kid}, which is not "
                             f"configured (configured key ids: {configured}); set encryption_key or "
                             "encryption_old_key_files")
        body = stored[at + 1 + n:]
        try:
            return aead.decrypt(body[:_NONCE], body[_NONCE:], address.encode())
        except (InvalidTag, ValueError):
            raise SealError(f"stored item {address[:16]}… does not decrypt with key id {kid}: damaged, "
                            "or stored under another address") from None


PLAIN = Sealer()
