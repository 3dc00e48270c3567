"""TLS settings of a gateway's HTTP server, read from its ``[gateway]`` table.

::

    tls_cert      = "server.pem"     # the server's certificate chain (PEM)
    tls_key       = "server.key"     # its private key (PEM)
    tls_client_ca = "ca.pem"         # optional: clients must present a certificate this CA signed
    plaintext     = true             # the only way to serve plain HTTP (loopback, lab)

A gateway serves HTTPS with ``tls_cert`` and ``tls_key``; with ``tls_client_ca`` as well it
requires a client certificate (mutual TLS). Without TLS files it serves plain HTTP only when
``plaintext = true`` says so: anything else is a config error naming the key. Paths are relative
to the config file's directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailrepl.shared.config.toml_reader import Table

__all__ = ["ServerTlsSettings", "read_server_tls"]


@dataclass(frozen=True, kw_only=True)
class ServerTlsSettings:
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None  # set: mutual TLS (a client certificate this CA signed is required)
    plaintext: bool = False  # explicitly plain HTTP

    @property
    def enabled(self) -> bool:
        return self.cert is not None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def describe(self) -> str:
        """For ``check-config``: how the API is served."""
        if not self.enabled:
            return "plain HTTP (plaintext = true: loopback or lab only)"
        text = f"HTTPS with {self.cert}"
        return text + (f", client certificates signed by {self.client_ca} required" if self.mutual else "")


def read_server_tls(table: Table) -> ServerTlsSettings:
    """``tls_cert``/``tls_key``/``tls_client_ca``/``plaintext`` of a ``[gateway]`` table."""
    cert, key, client_ca = table.file("tls_cert"), table.file("tls_key"), table.file("tls_client_ca")
    plaintext = table.boolean("plaintext", False)
    if (cert is None) != (key is None):
        missing = "tls_key" if key is None else "tls_cert"
        raise table.error(missing, "missing (tls_cert and tls_key go together)")
    if cert is None:
        if client_ca is not None:
            raise table.error("tls_client_ca", "needs tls_cert and tls_key (mutual TLS is served over TLS)")
        if not plaintext:
            raise table.error("tls_cert", "missing: give tls_cert and tls_key (and tls_client_ca for mutual TLS), "
                                          "or set plaintext = true to serve plain HTTP (loopback or lab only)")
    elif plaintext:
        raise table.error("plaintext", "set either tls_cert/tls_key or plaintext = true, not both")
    return ServerTlsSettings(cert=cert, key=key, client_ca=client_ca, plaintext=plaintext)
