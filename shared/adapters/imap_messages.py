"""The bulk message paths of an IMAP session: deltas (QRESYNC), body fetch, append.

These move the data, so they pipeline: FETCH in chunks with a few commands in flight, one
MULTIAPPEND with non-synchronising literals for a whole batch (figures in the project's
performance notes: stdlib imaplib appends one message per round trip and normalises line
endings with a regex over every body).
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterator, NoReturn, Sequence

from mailrepl.shared.adapters.base import AppendItem, AppendResult, FetchedMessage, FolderDelta, MessageMeta
from mailrepl.shared.adapters.imap_client import Result
from mailrepl.shared.adapters.imap_format import Literal, flag_list, format_imap_date, uid_set, uid_set_batches
from mailrepl.shared.adapters.imap_mailbox import TRANSIENT_CODES, Mailbox, raise_for
from mailrepl.shared.adapters.imap_protocol import (
    FetchItem,
    Response,
    parse_appenduid,
    parse_fetch,
    parse_select_state,
    parse_vanished,
    restore_nul,
)
from mailrepl.shared.errors import CursorInvalid, MessageRejected, ProtocolError, ServerUnavailable
from mailrepl.shared.model import Cursor

__all__ = ["changes_since", "fetch", "append", "plan_chunks",
           "FETCH_CHUNK_MESSAGES", "FETCH_CHUNK_BYTES", "FETCH_WINDOW"]

FETCH_CHUNK_MESSAGES = 200  # UIDs per FETCH command
FETCH_CHUNK_BYTES = 8 * 1024 * 1024  # body bytes per FETCH command (a bigger message goes alone)
FETCH_WINDOW = 2  # FETCH commands in flight; more made Dovecot slower, not faster


def changes_since(mb: Mailbox, folder: str, since: Cursor | None) -> FolderDelta:
    """EXAMINE (read-only: \\Seen is never set) with QRESYNC parameters when there is a cursor.

    The server answers the QRESYNC EXAMINE with everything the delta needs below the old
    UIDNEXT (RFC 7162 3.2.5: ``VANISHED (EARLIER)`` for expunges, FETCH with UID FLAGS MODSEQ
    for every message changed since the old HIGHESTMODSEQ), so no CHANGEDSINCE fetch repeats
    it. The new cursor is the state EXAMINE reported, and new messages are fetched by an
    explicit ``old_uidnext:uidnext-1`` range (never ``n:*``, which returns the last message
    when n is above every UID), so what arrives meanwhile is left for the next call.
    """
    params = b""
    if since is not None:
        params = b" (QRESYNC (%d %d))" % (since.uidvalidity, max(since.highestmodseq, 1))
    res = mb.select(folder, readonly=True, fresh=True, params=params)
    try:
        state = parse_select_state(res.untagged)
        if state.uidvalidity == 0 or state.uidnext == 0:
            raise ProtocolError(f"EXAMINE {folder!r} reported no UIDVALIDITY/UIDNEXT")
        cursor = Cursor(state.uidvalidity, state.highestmodseq, state.uidnext)
        if since is None:
            return FolderDelta(cursor, new=_new_metas(mb, 1, state.uidnext) if state.exists else ())
        if state.uidvalidity != since.uidvalidity:
            raise CursorInvalid(f"folder {folder!r}: UIDVALIDITY is {state.uidvalidity}, cursor has {since.uidvalidity}")
        if state.highestmodseq < since.highestmodseq or state.uidnext < since.uidnext:
            # a server restored from backup: changes since the cursor cannot be trusted
            raise CursorInvalid(f"folder {folder!r}: server state {cursor} is behind the cursor {since}")
        vanished: set[int] = set()
        changed: dict[int, MessageMeta] = {}
        for r in res.untagged:
            if r.name == "VANISHED":
                for lo, hi in parse_vanished(r)[1].ranges:
                    vanished.update(range(lo, min(hi, since.uidnext - 1) + 1))
            elif r.name == "FETCH":
                item = parse_fetch(r)
                if item.uid is None or item.flags is None:
                    raise ProtocolError(f"QRESYNC FETCH without UID/FLAGS in {folder!r}")
                if item.uid < since.uidnext and (item.modseq or 0) > since.highestmodseq:
                    changed[item.uid] = MessageMeta(item.uid, item.flags, item.modseq or 0)
        new = _new_metas(mb, since.uidnext, state.uidnext) if since.uidnext < state.uidnext else ()
        return FolderDelta(
            cursor,
            vanished=tuple(sorted(vanished)),
            changed=tuple(changed[u] for u in sorted(changed)),
            new=new,
        )
    finally:
        mb.deselect()


def _new_metas(mb: Mailbox, first: int, uidnext: int) -> tuple[MessageMeta, ...]:
    """Metadata of the messages with ``first <= UID < uidnext`` of the selected folder."""
    if first >= uidnext:
        return ()
    metas: dict[int, MessageMeta] = {}

    def collect(r: Response) -> None:
        if r.name != "FETCH":
            return
        item = parse_fetch(r)
        # unsolicited flag updates (another session) carry no size: they are not the answer
        if item.uid is not None and first <= item.uid < uidnext and item.size is not None:
            metas[item.uid] = MessageMeta(item.uid, item.flags or frozenset(), item.modseq or 0, item.size,
                                          item.guid, item.internaldate)

    guid = f" {mb.guid_item}" if mb.guid_item else ""
    command = f"UID FETCH {first}:{uidnext - 1} (UID FLAGS RFC822.SIZE INTERNALDATE MODSEQ{guid})"
    raise_for(mb.client.run(command.encode("ascii"), collect=collect), "UID FETCH")
    return tuple(metas[u] for u in sorted(metas))


def plan_chunks(uids: Sequence[int], sizes: dict[int, int], max_messages: int = FETCH_CHUNK_MESSAGES,
                max_bytes: int = FETCH_CHUNK_BYTES) -> list[list[int]]:
    """Cut ascending ``uids`` into consecutive chunks of at most ``max_messages`` and about
    ``max_bytes`` (a message bigger than that is a chunk of its own)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if current and (len(current) >= max_messages or total + size > max_bytes):
            chunks.append(current)
            current, total = [], 0
        current.append(uid)
        total += size
    if current:
        chunks.append(current)
    return chunks


def fetch(mb: Mailbox, folder: str, uids: Sequence[int]) -> Iterator[FetchedMessage]:
    """Bodies in ascending UID order, streamed chunk by chunk with ``FETCH_WINDOW`` commands in flight.

    Memory stays bounded: sizes are asked first (``RFC822.SIZE``, cheap: from the index), so a
    chunk holds about ``FETCH_CHUNK_BYTES``. UIDs without a size no longer exist and are
    skipped. All FETCH commands of one call share one collector keyed by UID, because the
    server may run pipelined FETCHes in parallel and interleave their responses (Dovecot
    does). If the caller stops early, the commands in flight are discarded (their responses
    are dropped as they arrive) and the session stays usable.
    """
    wanted = sorted({u for u in uids if u > 0})
    if not wanted:
        return
    mb.select(folder, readonly=True)
    inflight: deque[tuple[str, list[int]]] = deque()
    try:
        sizes = _sizes(mb, wanted)
        chunks = iter(plan_chunks([u for u in wanted if u in sizes], sizes))
        guid = f" {mb.guid_item}" if mb.guid_item else ""
        items = f" (UID FLAGS INTERNALDATE MODSEQ BODY.PEEK[]{guid})".encode("ascii")
        arrived: dict[int, FetchItem] = {}
        binaries: dict[int, bytes] = {}

        def collect(r: Response) -> None:
            if r.name == "FETCH":
                item = parse_fetch(r)
                if item.uid is None:
                    return
                if item.binary is not None:
                    binaries[item.uid] = item.binary
                elif item.body is not None:
                    arrived[item.uid] = item

        def send_next() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                mb.select(folder, readonly=True)  # again if the caller used the session in between
                tag = mb.client.send(b"UID FETCH ", uid_set(chunk).encode("ascii"), items, collect=collect)
                inflight.append((tag, chunk))

        for _ in range(FETCH_WINDOW):
            send_next()
        while inflight:
            tag, chunk = inflight[0]
            raise_for(mb.client.result(tag), f"UID FETCH in {folder!r}")
            inflight.popleft()
            send_next()
            got = {uid: arrived.pop(uid) for uid in chunk if uid in arrived}  # the rest were expunged
            _recover_nul_bytes(mb, folder, got, binaries, collect)
            for uid in chunk:
                item = got.get(uid)
                if item is None:
                    continue
                if item.internaldate is None:
                    raise ProtocolError(f"FETCH of UID {uid} in {folder!r} returned no INTERNALDATE")
                yield FetchedMessage(uid, item.flags or frozenset(), item.internaldate, item.body, item.guid,
                                     item.modseq or 0)
    finally:
        for tag, _ in inflight:
            mb.client.discard(tag)
        mb.deselect()


def _sizes(mb: Mailbox, uids: list[int]) -> dict[int, int]:
    wanted = set(uids)
    sizes: dict[int, int] = {}

    def collect(r: Response) -> None:
        if r.name == "FETCH":
            item = parse_fetch(r)
            if item.uid in wanted and item.size is not None:
                sizes[item.uid] = item.size

    tags = [mb.client.send(b"UID FETCH ", batch.encode("ascii"), b" (UID RFC822.SIZE)", collect=collect)
            for batch in uid_set_batches(uids)]
    for tag in tags:
        raise_for(mb.client.result(tag), "UID FETCH RFC822.SIZE")
    return sizes


def _recover_nul_bytes(mb: Mailbox, folder: str, items: dict[int, FetchItem], binaries: dict[int, bytes],
                       collect: Callable[[Response], None]) -> None:
    """Put back NUL bytes that ``BODY[]`` replaced.

    Dovecot sends NUL as 0x80 in ``BODY[]`` (NUL is not allowed in a plain literal); only
    ``BINARY[]`` (RFC 3516) returns it, and ``BINARY[]`` also decodes every part's
    Content-Transfer-Encoding. So bodies containing 0x80 are fetched again as ``BINARY[]``,
    which is used only where it differs from ``BODY[]`` by NULs alone (see ``restore_nul``).
    The answers go through the fetch's shared ``collect`` into ``binaries``.
    """
    if not mb.has("BINARY"):
        return
    suspects = [uid for uid, item in items.items() if b"\x80" in item.body]
    if not suspects:
        return
    mb.select(folder, readonly=True)  # again if the caller used the session in between
    groups = [suspects[i:i + 200] for i in range(0, len(suspects), 200)]
    tags = [mb.client.send(b"UID FETCH ", uid_set(group).encode("ascii"), b" (UID BINARY.PEEK[])",
                           collect=collect) for group in groups]
    refused: list[int] = []
    for group, tag in zip(groups, tags):
        res = mb.client.result(tag)
        if _undecodable(res):
            # The server cannot decode some part of one of these (Dovecot: NO [PARSE]
            # Invalid data in MIME part) and refuses the whole command: ask one by one.
            refused.extend(group)
        else:
            raise_for(res, "UID FETCH BINARY")
    for uid in refused:
        res = mb.client.result(mb.client.send(b"UID FETCH %d (UID BINARY.PEEK[])" % uid, collect=collect))
        if not _undecodable(res):  # undecodable: keep its BODY[] bytes, as the server stores them
            raise_for(res, "UID FETCH BINARY")
    for uid in suspects:
        binary = binaries.pop(uid, None)
        if binary is not None:
            items[uid].body = restore_nul(items[uid].body, binary)


def _undecodable(res: Result) -> bool:
    """A BINARY fetch refused for the content itself, not for a passing server condition."""
    return res.status == "NO" and res.code not in TRANSIENT_CODES


def append(mb: Mailbox, folder: str, items: Sequence[AppendItem],
           create_folder: Callable[[str], None]) -> AppendResult:
    """One MULTIAPPEND for all items when offered (atomic: all or none), else one APPEND each.

    Bodies with NUL go as literal8 (``~{n}``) where BINARY is offered. Everything is validated
    before the first byte is sent: a BAD after non-synchronising literals would make the
    server read message bytes as commands. A missing folder ([TRYCREATE]) is created once.
    """
    if not items:
        raise ValueError("append needs at least one message")
    args = [_append_args(mb, i, item) for i, item in enumerate(items)]
    result = _append_once(mb, folder, args)
    if result is None:
        create_folder(folder)
        result = _append_once(mb, folder, args)
        if result is None:
            raise ProtocolError(f"folder {folder!r} still missing after it was created")
    return result


def _append_args(mb: Mailbox, index: int, item: AppendItem) -> list[bytes | Literal]:
    try:
        flags = flag_list(item.flags)
        date = format_imap_date(item.internaldate) if item.internaldate is not None else None
    except ValueError as exc:
        raise MessageRejected(f"message {index} cannot be stored: {exc}", index=index) from exc
    binary = b"\x00" in item.body
    if binary and not mb.has("BINARY"):
        # NUL is not allowed in a plain literal; a strict server would answer BAD (see above)
        raise MessageRejected(f"message {index} contains NUL bytes and the server lacks BINARY", index=index)
    out: list[bytes | Literal] = [b" ", flags]
    if date is not None:
        out += [b" ", date]
    return out + [b" ", Literal(item.body, binary=binary)]


def _append_once(mb: Mailbox, folder: str, args: list[list[bytes | Literal]]) -> AppendResult | None:
    """Run the APPEND(s); None if the folder does not exist (TRYCREATE)."""
    arg = mb.names.arg(folder)
    if mb.features.multiappend or len(args) == 1:
        res = mb.client.run(b"APPEND ", arg, *[part for a in args for part in a])
        if res.ok:
            return _append_result([res], len(args))
        if res.code == "TRYCREATE":
            return None
        _raise_refusal(mb, res, index=0 if len(args) == 1 else None)
    results = [mb.client.result(tag) for tag in [mb.client.send(b"APPEND ", arg, *a) for a in args]]
    if all(r.ok for r in results):
        return _append_result(results, len(args))
    if all(r.code == "TRYCREATE" for r in results):
        return None
    malformed = next((i for i, r in enumerate(results) if r.status == "BAD"), None)
    if malformed is not None:
        _raise_refusal(mb, results[malformed], index=malformed)
    # Keep the contract's all-or-none: remove what was stored before reporting the refusal.
    stored = [uid for r in results if r.ok and r.code == "APPENDUID" for uid in parse_appenduid(r.code_args)[1]]
    if stored:
        mb.expunge(folder, stored)
    first = next(i for i, r in enumerate(results) if not r.ok)
    _raise_refusal(mb, results[first], index=first)


def _append_result(results: list[Result], count: int) -> AppendResult:
    uidvalidity, uids = 0, []
    for res in results:
        if res.code != "APPENDUID":
            raise ProtocolError(f"APPEND answered without APPENDUID: {res.describe()}")
        uv, got = parse_appenduid(res.code_args)
        if uidvalidity and uv != uidvalidity:
            raise ProtocolError("UIDVALIDITY changed between APPENDs of one batch")
        uidvalidity = uv
        uids += got
    if len(uids) != count:
        raise ProtocolError(f"APPENDUID lists {len(uids)} UIDs for {count} messages")
    return AppendResult(uidvalidity, tuple(uids))


def _raise_refusal(mb: Mailbox, res: Result, index: int | None) -> NoReturn:
    if res.status == "BAD":
        # The server may have taken literal bytes for commands: this connection cannot be trusted.
        mb.client.close()
        raise ProtocolError(f"APPEND refused as malformed: {res.describe()}")
    if res.code in TRANSIENT_CODES:
        raise ServerUnavailable(f"APPEND: server answered {res.describe()}")
    raise MessageRejected(res.describe(), index=index)
