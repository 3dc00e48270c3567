"""What an IMAP server stored, read without its bytes: size and, where the server offers it, a
digest (Cyrus ``DIGEST=SHA1``: ``FETCH DIGEST.SHA1``, the SHA-1 of the stored message).

Replay compares this with what it sent to find messages the standby altered on the way in.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailrepl.shared.adapters.imap_format import uid_set_batches
from mailrepl.shared.adapters.imap_mailbox import Mailbox, raise_for
from mailrepl.shared.adapters.imap_protocol import Response, as_int, as_text
from mailrepl.shared.errors import FolderNotFound

__all__ = ["StoredDigest", "stored_digests"]


@dataclass(frozen=True)
class StoredDigest:
    size: int
    sha1: str | None = None  # hex, lower case; None: the server offers no digest


def stored_digests(mb: Mailbox, folder: str, uids: Sequence[int]) -> dict[int, StoredDigest]:
    """{uid: StoredDigest} of the messages of ``folder`` that exist among ``uids``."""
    wanted = sorted(set(uids))
    if not wanted:
        return {}
    digest = mb.has("DIGEST=SHA1")
    items = b" (UID RFC822.SIZE DIGEST.SHA1)" if digest else b" (UID RFC822.SIZE)"
    out: dict[int, StoredDigest] = {}

    def collect(r: Response) -> None:
        if r.name != "FETCH" or r.number is None or len(r.args) != 1 or not isinstance(r.args[0], list):
            return
        values = r.args[0]
        found = {as_text(k).upper(): v for k, v in zip(values[::2], values[1::2])}
        if "UID" in found and "RFC822.SIZE" in found:
            sha1 = found.get("DIGEST.SHA1")
            out[as_int(found["UID"])] = StoredDigest(as_int(found["RFC822.SIZE"]),
                                                     as_text(sha1).lower() if sha1 is not None else None)

    try:
        mb.select(folder, readonly=True)
    except FolderNotFound:
        return {}
    try:
        tags = [mb.client.send(b"UID FETCH ", batch.encode("ascii"), items, collect=collect)
                for batch in uid_set_batches(wanted)]
        for tag in tags:
            raise_for(mb.client.result(tag), f"UID FETCH sizes in {folder!r}")
    finally:
        mb.deselect()
    return {uid: d for uid, d in out.items() if uid in set(wanted)}
