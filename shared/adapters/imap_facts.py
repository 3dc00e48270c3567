"""What an IMAP server says about itself to the service account, for the pre-flight check:
capabilities, personal namespace and separator, the rights on INBOX (``MYRIGHTS``), the server's
``ID``. Read only; nothing is changed."""
from __future__ import annotations

from dataclasses import dataclass, field

from mailrepl.shared.adapters.imap_mailbox import Mailbox
from mailrepl.shared.adapters.imap_protocol import Response, as_text

__all__ = ["ImapFacts", "imap_facts"]


@dataclass(frozen=True)
class ImapFacts:
    capabilities: frozenset[str]
    separator: str | None
    prefix: str
    rights: str | None = None  # MYRIGHTS on INBOX (ACL servers)
    server_id: dict[str, str] = field(default_factory=dict)  # the ID response (RFC 2971)


def imap_facts(mb: Mailbox) -> ImapFacts:
    untagged: list[Response] = []
    tags = []
    if mb.has("ACL"):
        tags.append(mb.client.send(b"MYRIGHTS INBOX", collect=untagged.append))
    if mb.has("ID"):
        tags.append(mb.client.send(b"ID NIL", collect=untagged.append))
    for tag in tags:
        mb.client.result(tag)  # a NO leaves the fact unknown
    rights = next((as_text(r.args[1]) for r in untagged if r.name == "MYRIGHTS" and len(r.args) >= 2), None)
    server_id: dict[str, str] = {}
    for r in untagged:
        if r.name == "ID" and r.args and isinstance(r.args[0], list):
            pairs = r.args[0]
            server_id = {as_text(k).lower(): as_text(v) for k, v in zip(pairs[::2], pairs[1::2]) if v is not None}
    return ImapFacts(frozenset(mb.client.capabilities), mb.names.delimiter, mb.names.prefix, rights, server_id)
