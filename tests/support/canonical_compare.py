"""Compare two mailboxes on servers of different kinds (Dovecot, Cyrus in either namespace) by
what mailrepl replicates: per canonical folder name (read through the IMAP adapter, so namespace
prefix and separator are the adapter's), a multiset of ``(sha256, flags, internal date)``.

``mailcompare.snapshot`` reads the servers' raw names and suits two servers of one kind.
"""
from __future__ import annotations

import collections
import hashlib

from mailrepl.shared.adapters.imap import ImapAdapter, ImapEndpoint

__all__ = ["adapter_for", "canonical_snapshot", "differences"]


def adapter_for(server, name: str = "server") -> ImapAdapter:
    endpoint = ImapEndpoint(host=getattr(server, "host", "127.0.0.1"), port=server.imap_port, tls="none",
                            service_user=server.master_user, service_password=server.master_password,
                            auth="sasl-plain", timeout=60.0)
    return ImapAdapter(name, endpoint)


def canonical_snapshot(server, user: str) -> dict[str, collections.Counter]:
    """{canonical folder: Counter of (sha256, flags, internal date UTC)}; plus the special uses
    under the key ``(folder, "special_use")``."""
    session = adapter_for(server).open(user)
    try:
        out: dict = {}
        for info in session.list_folders():
            keys: collections.Counter = collections.Counter()
            if info.uidnext > 1:
                for m in session.fetch(info.name, list(range(1, info.uidnext))):
                    flags = frozenset(f for f in m.flags if f.lower() != "\\recent")
                    keys[(hashlib.sha256(m.body).hexdigest(), flags, m.internaldate.timestamp())] += 1
            out[info.name] = keys
            out[(info.name, "special_use")] = info.special_use
        return out
    finally:
        session.close()


def differences(primary: dict, standby: dict, *, ignore_empty_extra: bool = True) -> list[str]:
    """What the standby lacks or has in excess (folders and messages), one line each."""
    lines = []
    for folder, keys in primary.items():
        if isinstance(folder, tuple):
            continue
        if folder not in standby:
            lines.append(f"folder {folder!r} missing on the standby")
            continue
        other = standby[folder]
        missing, extra = keys - other, other - keys
        lines += [f"{folder!r}: missing {k[0][:12]} {sorted(k[1])} x{n}" for k, n in missing.items()]
        lines += [f"{folder!r}: extra {k[0][:12]} {sorted(k[1])} x{n}" for k, n in extra.items()]
    for folder, keys in standby.items():
        if isinstance(folder, tuple) or folder in primary:
            continue
        if keys or not ignore_empty_extra:
            lines.append(f"folder {folder!r} only on the standby ({sum(keys.values())} messages)")
    return lines
