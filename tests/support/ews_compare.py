"""What the EWS protocol-shape responder holds for a mailbox, in ``tests.support.mailcompare``'s
snapshot form (per folder: a multiset of (sha256 of the MIME content, flags, received time in
UTC)), read straight from its store so that it is an oracle independent of the adapter."""
from __future__ import annotations

import collections
import hashlib
from datetime import timezone

from mailrepl.shared.adapters.ews_mapping import state_to_flags
from tests.support.ews_mailstore import PR_FLAG_STATUS, PR_LAST_VERB, Mailbox, StoreFolder
from tests.support.mailcompare import Snapshot

__all__ = ["ews_snapshot", "non_empty"]

_SKIP = {"outbox", "calendar", "contacts", "root", "msgfolderroot"}


def _name(box: Mailbox, f: StoreFolder) -> str | None:
    parts = []
    while f is not None and f.distinguished not in ("msgfolderroot", "root"):
        if f.distinguished == "inbox":
            parts.append("INBOX")
            break
        parts.append(f.name)
        f = box.folders.get(f.parent_id)
    return "/".join(reversed(parts)) if parts else None


def ews_snapshot(responder, address: str) -> Snapshot:
    box = responder.store.mailbox(address)
    out: Snapshot = {}
    with responder.store.lock:
        for f in box.folders.values():
            if f.distinguished in _SKIP:
                continue
            name = _name(box, f)
            if name is None:
                continue
            out[name] = collections.Counter(
                (
                    hashlib.sha256(it.mime).hexdigest(),
                    state_to_flags(it.is_read, int(it.props.get(PR_FLAG_STATUS, "0")),
                                   int(it.props.get(PR_LAST_VERB, "0")), it.message_flags, it.categories),
                    it.received.astimezone(timezone.utc).replace(microsecond=0).isoformat(),
                )
                for it in f.items.values()
            )
    return out


def non_empty(snapshot: Snapshot) -> Snapshot:
    return {name: keys for name, keys in snapshot.items() if keys}
