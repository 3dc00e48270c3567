"""Calling EWS through exchangelib: retry policy and error translation at the adapter boundary.

exchangelib runs with ``FailFast`` (its ``FaultTolerance`` treats HTTP 401 as throttling and
would retry a wrong password for up to an hour); the retry policy lives here instead:

- ``ErrorServerBusy``: the server did not run the request; wait its ``BackOffMilliseconds``
  (exchangelib's ``back_off``), else an exponential delay, and retry — for every request,
  including non-idempotent ones.
- connection refused/dropped, timeouts, HTTP 500/503 error pages: retried only for requests
  that are safe to repeat (reads, flag updates, deletes). CreateItem/MoveItem are not repeated
  after an ambiguous failure; the caller sees ``ServerUnavailable`` and its journal decides.
- when the budget (``max_wait`` seconds) is spent: ``ServerUnavailable`` (retryable, with the
  server's back-off).

Everything else is translated once, here, into ``mailrepl.shared.errors`` with ``raise ... from exc``.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

import requests
from exchangelib import errors as ex

from mailrepl.shared.errors import (
    AdapterError,
    AuthenticationFailed,
    CursorInvalid,
    FolderNotFound,
    MailboxNotFound,
    ProtocolError,
    ServerUnavailable,
)

__all__ = ["call_with_retry", "translate", "DEFAULT_MAX_WAIT", "TRANSIENT", "SYNC_STATE_ERRORS"]

log = logging.getLogger("mailrepl.ews")

DEFAULT_MAX_WAIT = 60.0
_FIRST_DELAY, _MAX_DELAY = 0.25, 10.0

T = TypeVar("T")

TRANSIENT = (
    ex.ErrorTimeoutExpired,  # exchangelib's name for connection errors and timeouts
    ex.ErrorInternalServerTransientError,  # HTTP 503, IIS "Server Error in '/EWS' Application"
    ex.ErrorInternalServerError,
    ex.ErrorMailboxStoreUnavailable,
    ex.ErrorMailboxMoveInProgress,
    ex.MalformedResponseError,  # an HTTP error page we cannot read
    requests.exceptions.ConnectionError,  # e.g. an OAuth2 token endpoint out of reach
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)
SYNC_STATE_ERRORS = (ex.ErrorInvalidSyncStateData, ex.ErrorSyncFolderNotFound)
_AUTH = (ex.UnauthorizedError, ex.ErrorAccessDenied, ex.ErrorImpersonateUserDenied,
         ex.ErrorImpersonationDenied, ex.ErrorNonPrimarySmtpAddress)
_NO_MAILBOX = (ex.ErrorNonExistentMailbox, ex.ErrorMailRecipientNotFound, ex.ErrorInvalidSmtpAddress)
_NO_FOLDER = (ex.ErrorFolderNotFound, ex.ErrorInvalidIdMalformed)


def translate(exc: BaseException, what: str) -> AdapterError:
    """The ``mailrepl.shared.errors`` counterpart of an exchangelib (or socket) error."""
    text = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, _AUTH):
        return AuthenticationFailed(text)
    if isinstance(exc, _NO_MAILBOX):
        return MailboxNotFound(text, retryable=False)
    if isinstance(exc, SYNC_STATE_ERRORS):
        return CursorInvalid(text)
    if isinstance(exc, _NO_FOLDER):
        return FolderNotFound(text)
    if isinstance(exc, ex.ErrorServerBusy):
        return ServerUnavailable(text, back_off=exc.back_off or 1.0)
    if isinstance(exc, TRANSIENT) or type(exc) is ex.TransportError:
        return ServerUnavailable(text)
    return ProtocolError(text)


def _rewrapped(exc: ex.ErrorServerBusy) -> bool:
    """exchangelib turns HTTP 5xx pages and (with a pool > 1) connection errors into
    ``ErrorServerBusy("Reraised from ...", back_off=10)``: those are not the server's throttling
    answer, the request may have run, and the 10 s are exchangelib's guess."""
    return isinstance(exc.__context__, TRANSIENT) or str(exc).startswith("Reraised from")


def call_with_retry(what: str, fn: Callable[[], T], *, max_wait: float = DEFAULT_MAX_WAIT, repeatable: bool = True) -> T:
    """Run ``fn`` (one or more complete EWS requests) under the retry policy above."""
    deadline = time.monotonic() + max_wait
    delay = _FIRST_DELAY
    while True:
        try:
            return fn()
        except AdapterError:
            raise
        except ex.ErrorServerBusy as exc:
            if _rewrapped(exc):  # a connection/server error exchangelib re-raised as "busy"
                if not repeatable:
                    raise translate(exc.__context__ or exc, what) from exc
                wait, err = delay, exc
            else:
                wait, err = (exc.back_off or delay), exc
        except TRANSIENT as exc:
            if not repeatable:
                raise translate(exc, what) from exc
            wait, err = delay, exc
        except ex.EWSError as exc:
            raise translate(exc, what) from exc
        except (OSError, ValueError) as exc:
            raise translate(exc, what) from exc
        if time.monotonic() + wait > deadline:
            raise translate(err, what) from err
        log.info("%s: %s; retrying in %.2fs", what, type(err).__name__, wait)
        time.sleep(wait)
        delay = min(delay * 2, _MAX_DELAY)
