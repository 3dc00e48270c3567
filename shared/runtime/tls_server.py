"""Serve a gateway's ASGI app with uvicorn, over TLS (optionally mutual) or explicitly plain HTTP.

- :class:`ReloadingTlsContext` owns the one ``ssl.SSLContext`` the server listens with. Before
  each new connection is wrapped, it compares the modification times of the certificate, key and
  client CA files with what it loaded; a change loads the new chain (and CA certificates) into
  the same context, so rotated certificates take effect without a restart. A file caught half
  written is retried on the next connection; the old chain stays in use meanwhile.
- :class:`TlsHttpProtocol` is uvicorn's httptools protocol that fills the ASGI TLS extension
  (``scope["extensions"]["tls"]["client_cert"]``, the verified certificate as
  ``ssl.SSLObject.getpeercert()`` returns it), which uvicorn itself leaves out; see
  ``mailrepl.shared.runtime.principals.client_cert``.
- :func:`serve` runs the app; plain HTTP logs a warning naming the risk.
"""
from __future__ import annotations

import asyncio

import logging
import os
import ssl
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mailrepl.shared.config.settings_common import ListenAddress
from mailrepl.shared.config.tls_settings import ServerTlsSettings

__all__ = ["ReloadingTlsContext", "TlsHttpProtocol", "TlsConfig", "serve"]

log = logging.getLogger("mailrepl.tls")


def _mtime(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class ReloadingTlsContext:
    """The server's TLS context; :meth:`refresh` reloads changed files into it."""

    def __init__(self, tls: ServerTlsSettings) -> None:
        if tls.cert is None or tls.key is None:
            raise ValueError("a TLS context needs a certificate and a key")
        self.tls = tls
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        if tls.client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.reloads = 0
        self._loaded = self._stamp()
        self._load()

    def _stamp(self) -> tuple[int | None, ...]:
        return (_mtime(self.tls.cert), _mtime(self.tls.key), _mtime(self.tls.client_ca))

    def _load(self) -> None:
        # tried in a scratch context first: a key that does not match its certificate (files
        # caught mid-rotation) must not leave the live context half replaced
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(self.tls.cert), str(self.tls.key))
        self.context.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        if self.tls.client_ca is not None:
            self.context.load_verify_locations(cafile=str(self.tls.client_ca))

    def refresh(self) -> bool:
        """Reload the files if any changed since they were loaded; True if reloaded."""
        stamp = self._stamp()
        if stamp == self._loaded:
            return False
        try:
            self._load()
        except (OSError, ssl.SSLError) as exc:  # e.g. the key replaced before the certificate
            log.warning("TLS files changed but do not load yet (%s); keeping the previous certificate", exc)
            return False
        self._loaded = stamp
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.tls.cert)
        return True


class TlsConfig(uvicorn.Config):
    """uvicorn's config that keeps the given context (``load()`` would otherwise build its own)."""

    def __init__(self, app: Any, *, tls_context: ReloadingTlsContext | None, **kwargs: Any) -> None:
        super().__init__(app, http=TlsHttpProtocol, **kwargs)
        self.tls_context = tls_context

    def load(self) -> None:
        super().load()
        self.ssl = self.tls_context.context if self.tls_context is not None else None


class TlsHttpProtocol(HttpToolsProtocol):
    """httptools protocol: certificates refreshed per connection, the TLS extension filled."""

    def __init__(self, config: TlsConfig, *args: Any, **kwargs: Any) -> None:
        # runs before the connection is wrapped in TLS: a rotated certificate is used at once
        tls_context = getattr(config, "tls_context", None)
        if tls_context is not None:
            tls_context.refresh()
        super().__init__(config, *args, **kwargs)
        self._tls_extension: dict[str, Any] | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._tls_extension = {"client_cert": ssl_object.getpeercert() or None,
                                   "tls_version": ssl_object.version()}

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls_extension is not None:
            self.scope["extensions"] = {"tls": dict(self._tls_extension)}  # type: ignore[typeddict-item]


def serve(app: Any, listen: ListenAddress, tls: ServerTlsSettings, *, what: str,
          plain_extra: tuple[Any, ListenAddress] | None = None) -> None:
    """Serve ``app`` on ``listen`` until stopped (SIGINT/SIGTERM); with ``plain_extra`` (an app
    and a loopback address) a second, plain-HTTP server runs beside it and stops with it."""
    context = ReloadingTlsContext(tls) if tls.enabled else None
    if context is None:
        log.warning("%s API served over plain HTTP (plaintext = true): tokens and mail travel unencrypted and "
                    "unauthenticated; use it on loopback or in a lab only, else set tls_cert and tls_key", what)
    else:
        log.info("%s API served over HTTPS on %s%s", what, listen,
                 " (mutual TLS: client certificates required)" if tls.mutual else "")
    host, port = listen
    # log_config=None: uvicorn's loggers go through the root handler (escaped lines); no route
    # is a WebSocket, so no WebSocket protocol is loaded
    config = TlsConfig(app, tls_context=context, host=host, port=port, log_level="warning", log_config=None,
                       ws="none")
    if plain_extra is None:
        uvicorn.Server(config).run()
        return
    extra_app, (extra_host, extra_port) = plain_extra
    log.info("%s login redirect served over plain HTTP on %s (loopback only)", what, plain_extra[1])
    extra = uvicorn.Config(extra_app, host=extra_host, port=extra_port, log_level="warning", log_config=None,
                           lifespan="off", ws="none")
    asyncio.run(_serve_both(uvicorn.Server(config), uvicorn.Server(extra)))


async def _serve_both(main: uvicorn.Server, extra: uvicorn.Server) -> None:
    """Both servers until either stops (a signal reaches the one whose handlers are installed)."""
    tasks = [asyncio.create_task(main.serve()), asyncio.create_task(extra.serve())]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    main.should_exit = extra.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
