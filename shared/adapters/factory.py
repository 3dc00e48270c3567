"""Build an adapter from a server's settings (EWS is imported lazily, only when configured)."""
from __future__ import annotations

from mailrepl.shared.adapters.base import Adapter
from mailrepl.shared.errors import ConfigError

__all__ = ["make_adapter"]


def make_adapter(server) -> Adapter:  # server: mailrepl.shared.config.settings_common.ServerSettings
    if server.kind == "imap":
        from mailrepl.shared.adapters.imap import ImapAdapter, ImapEndpoint

        endpoint = ImapEndpoint(
            host=server.host,
            port=server.port,
            tls=server.tls,
            service_user=server.service_user,
            service_password=server.service_password,
            auth=server.auth,
            timeout=server.timeout,
            verify_tls=server.verify_tls,
            ca_file=str(server.ca_file) if server.ca_file else None,
        )
        return ImapAdapter(server.name, endpoint, users=list(server.users) or None)
    if server.kind == "ews":
        from mailrepl.shared.adapters.ews import EwsAdapter, EwsEndpoint

        endpoint = EwsEndpoint(
            service_endpoint=server.endpoint,
            service_user=server.service_user,
            service_password=server.service_password,
            auth=server.auth,
            access=server.access,
            client_id=server.client_id,
            tenant_id=server.tenant_id,
            timeout=server.timeout,
            max_wait=server.retry_max_wait,
            max_connections=server.connections,
        )
        return EwsAdapter(server.name, endpoint, users=list(server.users) or None)
    raise ConfigError(f"servers.{server.name}.kind: unsupported server kind {server.kind!r}")
