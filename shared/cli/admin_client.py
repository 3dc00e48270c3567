"""A small client of the source gateway's admin API (``/api/v1``), for the ``mailrepl`` commands.

It returns the API's JSON as plain dicts (``--json`` prints them unchanged) and maps every
failure to one of two errors with a one-line, human message::

    AdminApiError            the request did not succeed
    ├── ApiUnreachable       no HTTP answer at all (refused, DNS, TLS, timeout)
    └── ApiRefused           an HTTP error status; ``status`` and the API's ``detail``
"""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from mailrepl.shared.errors import MailreplError

__all__ = ["AdminApiError", "ApiUnreachable", "ApiRefused", "AdminClient"]

DEFAULT_TIMEOUT = 30.0  # protecting a whole server lists its mailboxes first


class AdminApiError(MailreplError):
    """An admin API request failed; the message is one line for the operator."""


class ApiUnreachable(AdminApiError):
    retryable = True


class ApiRefused(AdminApiError):
    def __init__(self, message: str, *, status: int, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _detail(response: httpx.Response) -> str:
    """The API's ``detail`` (a string, or FastAPI's list of validation errors), else the body."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # FastAPI request validation errors
        detail = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', ()))}: {item.get('msg', '')}" if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    if not detail:
        detail = response.text or response.reason_phrase
    return _one_line(detail)[:500]


class AdminClient:
    """Admin API of one source gateway at ``url``, authenticated with ``token``."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None, what: str = "source gateway",
                 tls: ssl.SSLContext | None = None) -> None:
        """``tls``: the client TLS context for an https:// URL (CA, client certificate); None:
        the system's CAs."""
        self.url = url.rstrip("/")
        self.what = what  # named in messages: "source gateway" or "recovery gateway"
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  verify=tls if tls is not None else True,
                                  headers={"Authorization": f"Bearer {token}"})

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ operations

    def mailboxes(self) -> dict[str, Any]:
        """``{"mailboxes": [status, ...]}``: every mailbox the gateway knows."""
        return self._request("GET", "/api/v1/mailboxes")

    def mailbox(self, address: str, server: str | None = None) -> dict[str, Any]:
        """One mailbox's status with folders, seeding progress and rejected messages."""
        return self._request("GET", f"/api/v1/mailboxes/{_segment(address)}", params=_server(server))

    def set_protection(self, address: str, enabled: bool, server: str | None = None) -> dict[str, Any]:
        return self._request("PUT", f"/api/v1/mailboxes/{_segment(address)}/protection",
                             params=_server(server), json={"enabled": enabled})

    def set_server_protection(self, server: str, enabled: bool) -> dict[str, Any]:
        """``{"server": ..., "mailboxes": [status, ...]}`` for every mailbox of ``server``."""
        return self._request("PUT", f"/api/v1/servers/{_segment(server)}/protection", json={"enabled": enabled})

    def cutover(self, body: dict[str, Any]) -> dict[str, Any]:
        """(recovery gateway) ``{"results": [...]}``: move the mailboxes' users to the standby."""
        return self._request("POST", "/api/v1/cutover", json=body)

    def failback(self, body: dict[str, Any]) -> dict[str, Any]:
        """(recovery gateway) ``{"results": [...]}``: start, confirm or abort a failback."""
        return self._request("POST", "/api/v1/failback", json=body)

    def start_verify(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"job": id}``: start comparing the primary and standby copies of mailboxes."""
        return self._request("POST", "/api/v1/verify", json=body)

    def verify_job(self, job: str) -> dict[str, Any]:
        """A verify job's state, progress and report."""
        return self._request("GET", f"/api/v1/verify/{_segment(job)}")

    def create_token(self, name: str, role: str) -> dict[str, Any]:
        """A new API token (role admin needed); the answer's ``token`` is shown this once."""
        return self._request("POST", "/api/v1/tokens", json={"name": name, "role": role})

    def tokens(self) -> dict[str, Any]:
        """``{"tokens": [...]}``: every stored token, without secrets."""
        return self._request("GET", "/api/v1/tokens")

    def revoke_token(self, name: str) -> dict[str, Any]:
        return self._request("DELETE", f"/api/v1/tokens/{_segment(name)}")

    def audit(self, limit: int = 100, since: str | None = None) -> dict[str, Any]:
        """``{"entries": [...]}``: the newest audit entries, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if since:
            params["since"] = since
        return self._request("GET", "/api/v1/audit", params=params)

    def start_restore(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"job": id}``: a point-in-time restore started (recovery gateway)."""
        return self._request("POST", "/api/v1/restore", json=body)

    def restore_job(self, job: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v1/restore/{_segment(job)}")

    def history(self, address: str | None = None, server: str | None = None) -> dict[str, Any]:
        if address is None:
            return self._request("GET", "/api/v1/history")
        return self._request("GET", f"/api/v1/history/{_segment(address)}", params=_server(server))

    def guard(self) -> dict[str, Any]:
        """``{"mailboxes": [...]}``: what the mass-delete guard holds (recovery gateway)."""
        return self._request("GET", "/api/v1/guard")

    def resolve_guard(self, address: str, action: str, server: str | None = None) -> dict[str, Any]:
        """``action``: "release" or "discard"."""
        return self._request("POST", f"/api/v1/guard/{_segment(address)}/{action}", params=_server(server))

    def download(self, path: str, dest: Path, **params: str) -> int:
        """Stream ``path`` into ``dest`` (written whole under a temporary name, then renamed); bytes."""
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            with self._http.stream("GET", path, params=params) as response:
                if response.is_error:
                    response.read()
                    raise ApiRefused(f"{_detail(response)} (HTTP {response.status_code})",
                                     status=response.status_code, detail=_detail(response))
                n = 0
                with open(tmp, "wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
                        n += len(chunk)
        except httpx.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise ApiUnreachable(f"cannot fetch {path} from the {self.what} API: {_one_line(str(exc))}") from None
        tmp.replace(dest)
        return n

    # ------------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ApiUnreachable(f"the {self.what} API at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            reason = _one_line(str(exc)) or exc.__class__.__name__
            raise ApiUnreachable(f"cannot reach the {self.what} API at {self.url}: {reason}") from None
        if response.status_code == 401:
            raise ApiRefused(
                f"the {self.what} API at {self.url} refused the admin token (missing or wrong): "
                "check --token, MAILREPL_ADMIN_TOKEN or the config's gateway.admin_token",
                status=401, detail=_detail(response),
            )
        if response.status_code == 403:
            detail = _detail(response)
            raise ApiRefused(f"the {self.what} API at {self.url} refused: {detail} (HTTP 403): use a token with "
                             "that role", status=403, detail=detail)
        if response.is_error:
            detail = _detail(response)
            raise ApiRefused(f"{detail} (HTTP {response.status_code})", status=response.status_code, detail=detail)
        try:
            return response.json()
        except ValueError:
            raise ApiRefused(f"{self.url} answered something other than JSON; is it a mailrepl {self.what}?",
                             status=response.status_code, detail="") from None


def _segment(value: str) -> str:
    """A path segment: everything but the characters addresses commonly hold is %-encoded."""
    return quote(value, safe="@+")


def _server(server: str | None) -> dict[str, str]:
    return {"server": server} if server else {}
