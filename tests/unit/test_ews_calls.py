"""The EWS retry policy and error translation (``mailrepl.shared.adapters.ews_calls``), without a server:
the functions under test are handed callables that raise what exchangelib raises."""
from __future__ import annotations

import time

import pytest
from exchangelib import errors as ex

from mailrepl.shared.adapters.ews_calls import call_with_retry, translate
from mailrepl.shared.errors import (
    AuthenticationFailed,
    CursorInvalid,
    FolderNotFound,
    MailboxNotFound,
    ProtocolError,
    ServerUnavailable,
)


class Script:
    """Raises the given exceptions in turn, then returns "ok"; counts calls."""

    def __init__(self, *raises: BaseException) -> None:
        self.raises, self.calls = list(raises), 0

    def __call__(self):
        self.calls += 1
        if self.raises:
            raise self.raises.pop(0)
        return "ok"


def rewrapped() -> ex.ErrorServerBusy:
    """What exchangelib raises for an HTTP 5xx page or a dropped connection."""
    try:
        raise ex.ErrorInternalServerTransientError("Caused by HTTP 503 response")
    except ex.ErrorInternalServerTransientError as inner:
        try:
            raise ex.ErrorServerBusy(f"Reraised from {inner!r}", back_off=10)
        except ex.ErrorServerBusy as outer:
            return outer


def test_server_busy_waits_the_servers_back_off_even_for_creates():
    fn = Script(ex.ErrorServerBusy("busy", back_off=0.1), ex.ErrorServerBusy("busy", back_off=0.1))
    started = time.monotonic()
    assert call_with_retry("create", fn, max_wait=5, repeatable=False) == "ok"
    assert fn.calls == 3 and time.monotonic() - started >= 0.2


def test_a_back_off_beyond_the_budget_gives_up_at_once_and_passes_it_on():
    fn = Script(ex.ErrorServerBusy("busy", back_off=30))
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as busy:
        call_with_retry("list", fn, max_wait=1)
    assert time.monotonic() - started < 0.5 and busy.value.back_off == 30 and busy.value.retryable


def test_rewrapped_server_errors_are_retried_only_when_repeatable():
    fn = Script(rewrapped(), rewrapped())
    assert call_with_retry("read", fn, max_wait=5) == "ok" and fn.calls == 3
    once = Script(rewrapped())
    with pytest.raises(ServerUnavailable) as lost:
        call_with_retry("create", once, max_wait=5, repeatable=False)
    assert once.calls == 1 and "503" in str(lost.value)


@pytest.mark.parametrize("exc", [ex.ErrorTimeoutExpired("Reraised from ConnectionError"),
                                 ex.MalformedResponseError("HTTP 500"), ConnectionResetError("reset")])
def test_transient_errors_retry_until_the_budget_is_spent(exc):
    fn = Script(*[exc] * 100)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable):
        call_with_retry("read", fn, max_wait=0.6)
    assert 2 <= fn.calls <= 5 and time.monotonic() - started < 1.5


@pytest.mark.parametrize("exc, expected", [
    (ex.UnauthorizedError("Invalid credentials"), AuthenticationFailed),
    (ex.ErrorImpersonateUserDenied("no role"), AuthenticationFailed),
    (ex.ErrorNonExistentMailbox("no such mailbox"), MailboxNotFound),
    (ex.ErrorInvalidSyncStateData("expired"), CursorInvalid),
    (ex.ErrorSyncFolderNotFound("gone"), CursorInvalid),
    (ex.ErrorFolderNotFound("gone"), FolderNotFound),
    (ex.ErrorInvalidPropertyRequest("bad"), ProtocolError),
    (ex.TransportError("TLS handshake failed"), ServerUnavailable),
])
def test_errors_are_translated_once_and_not_retried(exc, expected):
    fn = Script(exc)
    with pytest.raises(expected) as err:
        call_with_retry("op", fn, max_wait=5)
    assert fn.calls == 1 and err.value.__cause__ is exc and "op: " in str(err.value)
    assert isinstance(translate(exc, "op"), expected)
