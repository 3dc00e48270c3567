"""Settings that a server or a single mailbox may override (history retention, replay delay):
``[section.servers]`` name = value and ``[section.mailboxes]`` "address" = value."""
from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

from mailrepl.shared.config.toml_reader import Table, show_value

__all__ = ["read_overrides"]


def read_overrides(table: Table, value: Callable[[Table, str], float]
                   ) -> tuple[MappingProxyType, MappingProxyType]:
    """(by server name, by lower-case mailbox address), each value read by ``value(table, key)``."""
    servers_t = table.table("servers", required=False)
    servers = {name: value(servers_t, name) for name in servers_t.keys()}  # noqa: SIM118 - a Table, not a dict
    mailboxes_t = table.table("mailboxes", required=False)
    mailboxes = {}
    for address in mailboxes_t.keys():  # noqa: SIM118 - a Table, not a dict
        if not address or any(c.isspace() or ord(c) < 32 for c in address) or "@" not in address:
            raise mailboxes_t.error(address, f"expected a mailbox address as key, got {show_value(address)}")
        mailboxes[address.lower()] = value(mailboxes_t, address)
    return MappingProxyType(servers), MappingProxyType(mailboxes)
