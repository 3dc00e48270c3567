"""The error root of mailrepl.

::

    MailreplError                      retryable: bool, back_off: float seconds
    ├── ConfigError                    a wrong or missing setting (one line, names the key)
    ├── AdapterError                   a mail server said no or could not be reached
    │   ├── ServerUnavailable          connect/IO failure, timeout, BYE           (retryable)
    │   │   └── ServerBusy             no connection to the server free now: wait, not an error of the mailbox
    │   ├── AuthenticationFailed       service account refused                     (not retryable)
    │   ├── MailboxNotFound            the server has no such user/mailbox
    │   ├── FolderNotFound             no such folder
    │   ├── CursorInvalid              UIDVALIDITY changed / sync state expired -> resync folder
    │   ├── MessageRejected            the server refused one message (APPEND NO)
    │   └── ProtocolError              the server answered something we cannot parse
    ├── StoreError                     the state database failed
    │   └── DiskFull                   no space left for the state store or blob store  (retryable)
    ├── WireError                      a batch could not be encoded/decoded
    │   └── UnsupportedVersion         a batch of an unknown/newer format version
    ├── TransportError                 the peer gateway could not be reached     (retryable)
    │   └── PeerRefused                an HTTP error status from the peer; ``status_code`` says which
    └── ConflictError                  same sequence number, different content
        └── IllegalTransition          a cutover/failback step the mailbox's state does not allow

Library errors (socket, ssl, httpx, sqlalchemy) are translated at the boundary with
``raise ... from exc`` so callers only ever catch these.
"""
from __future__ import annotations

__all__ = [
    "MailreplError",
    "ConfigError",
    "AdapterError",
    "ServerUnavailable",
    "ServerBusy",
    "AuthenticationFailed",
    "MailboxNotFound",
    "FolderNotFound",
    "CursorInvalid",
    "MessageRejected",
    "ProtocolError",
    "StoreError",
    "DiskFull",
    "WireError",
    "UnsupportedVersion",
    "TransportError",
    "PeerRefused",
    "ConflictError",
    "IllegalTransition",
]


class MailreplError(Exception):
    """Root of every error mailrepl raises on purpose."""

    retryable: bool = False
    back_off: float = 0.0  # seconds the caller should wait before retrying

    def __init__(self, message: str = "", *, retryable: bool | None = None, back_off: float | None = None):
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        if back_off is not None:
            self.back_off = back_off


class ConfigError(MailreplError):
    """A setting is wrong or missing; the message is one line and names the key."""


class AdapterError(MailreplError):
    """A mail server refused a request or could not be reached."""


class ServerUnavailable(AdapterError):
    retryable = True
    back_off = 1.0


class ServerBusy(ServerUnavailable):
    """Every connection the gateway may open to the server is in use, or the server refused one more
    while others are open: the work waits (``back_off``); the mailbox is not in error."""

    retryable = True
    back_off = 2.0


class AuthenticationFailed(AdapterError):
    """The service account (or the authorization identity) was refused."""


class MailboxNotFound(AdapterError):
    """The server has no such mailbox (user)."""


class FolderNotFound(AdapterError):
    pass


class CursorInvalid(AdapterError):
    """The folder's cursor is no longer valid (UIDVALIDITY changed): resync that folder."""


class MessageRejected(AdapterError):
    """The server refused to store one message; ``index`` says which of a batch, if known."""

    def __init__(self, message: str = "", *, index: int | None = None, **kw):
        super().__init__(message, **kw)
        self.index = index


class ProtocolError(AdapterError):
    """The server answered something we cannot parse or did not expect."""


class StoreError(MailreplError):
    retryable = True
    back_off = 0.5


class DiskFull(StoreError):
    """A write found no space left (ENOSPC, EDQUOT, SQLite "database or disk is full",
    PostgreSQL 53100). The transaction rolled back: nothing of it is stored. Retried once space
    returns."""

    back_off = 1.0


class WireError(MailreplError):
    pass


class UnsupportedVersion(WireError):
    pass


class TransportError(MailreplError):
    retryable = True
    back_off = 1.0


class PeerRefused(TransportError):
    """The peer gateway answered, but with an HTTP error status: ``status_code`` (409: a
    cutover/failback step its state does not allow, 401: the token, 5xx/429: busy or broken)
    and the API's one-line ``detail``; ``mailboxes``: those a refused batch was refused for, when
    the peer names them. Retryable like any transport failure; the caller decides
    what a refusal means for it (see ``mailrepl.shared.protocol.peer_client``)."""

    def __init__(self, message: str = "", *, status_code: int, detail: str = "",
                 mailboxes: tuple[tuple[str, str], ...] = (), **kw):
        super().__init__(message, **kw)
        self.status_code = status_code
        self.detail = detail
        self.mailboxes = mailboxes  # (server, address) the peer refused a batch for, if it named them


class ConflictError(MailreplError):
    """Same sequence number, different content: reported, never overwritten."""


class IllegalTransition(ConflictError):
    """The mailbox's site state does not allow this cutover/failback step (HTTP 409)."""
