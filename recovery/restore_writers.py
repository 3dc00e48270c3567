"""Where a point-in-time restore writes: a mailbox (through its adapter) or a file.

Every writer takes the same calls from the restore job (``mailrepl.recovery.restore``):
``folders(plan.folders)`` once, then ``write(folder, [(message, raw bytes)…])`` per batch, then
``finish()`` (what was written). Writers do no policy: the plan says what and where.

- :class:`MailboxWriter` creates the folders and appends the messages (bytes, flags, internal
  date) through an adapter session. It is idempotent: what a target folder already holds (same
  SHA-256 and internal date, counted) is not written again, so a restore that was interrupted
  (crash, restart) and is run again ends with the same mailbox, nothing twice.
- :class:`MboxWriter`: one mbox file (mboxrd: ``From `` lines quoted with ``>``) plus a
  manifest (``<file>.manifest.json``: per message its folder, SHA-256, size, flags, internal date).
- :class:`ZipWriter`: a zip of ``<folder>/<n>.eml`` files with ``manifest.json`` inside.

Files are written under a temporary name, flushed and renamed into place at ``finish``: a crash
leaves no half file under the final name. :func:`read_export` reads either format back, every
message checked against its SHA-256 (re-import).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from mailrepl.recovery.restore_plan import Message
from mailrepl.shared.adapters.base import AppendItem, MailboxSession
from mailrepl.shared.errors import MailreplError
from mailrepl.shared.model import parse_internaldate

__all__ = ["EXPORT_FORMATS", "ExportedMessage", "MailboxWriter", "MboxWriter", "ZipWriter", "read_export"]

EXPORT_FORMATS = ("mbox", "zip")
MANIFEST_VERSION = 1
_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


class ExportError(MailreplError):
    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class ExportedMessage:
    folder: str
    sha256: str
    flags: tuple[str, ...]
    internaldate: str
    body: bytes


def _entry(folder: str, m: Message) -> dict:
    return {"folder": folder, "sha256": m.sha256, "size": m.size, "flags": list(m.flags),
            "internaldate": m.internaldate}


def _date_key(m: Message) -> int:
    return int(parse_internaldate(m.internaldate).timestamp())


class MailboxWriter:
    """Folders and messages into a mailbox through an adapter session (idempotent, see above)."""

    def __init__(self, session: MailboxSession) -> None:
        self.session = session
        self._held: dict[str, Counter] = {}  # folder -> (sha256, date) already there, not yet matched
        self.written = 0
        self.skipped = 0

    def folders(self, folders: Sequence[tuple[str, tuple[str, ...]]]) -> None:
        for name, _special in folders:  # special-use stays with the original folders
            if self.session.folder_info(name) is None:
                self.session.create_folder(name)

    def _existing(self, folder: str) -> Counter:
        if folder not in self._held:
            held: Counter = Counter()
            info = self.session.folder_info(folder)
            if info is not None and info.messages:
                uids = [m.uid for m in self.session.changes_since(folder, None).new]
                for got in self.session.fetch(folder, uids):
                    held[(hashlib.sha256(got.body).hexdigest(), int(got.internaldate.timestamp()))] += 1
            self._held[folder] = held
        return self._held[folder]

    def write(self, folder: str, batch: Sequence[tuple[Message, bytes]]) -> None:
        held = self._existing(folder)
        todo = []
        for m, raw in batch:
            key = (m.sha256, _date_key(m))
            if held[key] > 0:
                held[key] -= 1
                self.skipped += 1
                continue
            todo.append(AppendItem(raw, frozenset(m.flags), parse_internaldate(m.internaldate)))
        if todo:
            self.session.append(folder, todo)
            self.written += len(todo)

    def finish(self) -> dict:
        return {"written": self.written, "already_there": self.skipped}


class _FileWriter:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.part")
        self.manifest: list[dict] = []

    def folders(self, folders: Sequence[tuple[str, tuple[str, ...]]]) -> None:
        self.folder_list = [name for name, _ in folders]

    def _doc(self, at: str) -> bytes:
        return json.dumps({"version": MANIFEST_VERSION, "at": at, "folders": self.folder_list,
                           "messages": self.manifest}, indent=1, ensure_ascii=False).encode()


def _fsync_rename(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MboxWriter(_FileWriter):
    """mboxrd: each message after a ``From `` line, its ``>*From `` lines quoted, then a blank line."""

    def __init__(self, path: Path, at: str) -> None:
        super().__init__(path)
        self.at = at
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish

    def write(self, folder: str, batch: Sequence[tuple[Message, bytes]]) -> None:
        for m, raw in batch:
            when = parse_internaldate(m.internaldate).astimezone(UTC).strftime("%a %b %d %H:%M:%S %Y")
            self.fh.write(f"From MAILER-DAEMON {when}\n".encode())
            self.fh.write(_FROM_LINE.sub(rb">\1", raw))
            self.fh.write(b"\n" if raw.endswith(b"\n") else b"\n\n")
            self.manifest.append(_entry(folder, m))

    def finish(self) -> dict:
        self.fh.close()
        _fsync_rename(self.tmp, self.path)
        manifest = self.path.with_name(self.path.name + ".manifest.json")
        tmp = manifest.with_name("." + manifest.name + ".part")
        tmp.write_bytes(self._doc(self.at))
        _fsync_rename(tmp, manifest)
        return {"written": len(self.manifest), "file": str(self.path), "manifest": str(manifest)}


class ZipWriter(_FileWriter):
    def __init__(self, path: Path, at: str) -> None:
        super().__init__(path)
        self.at = at
        self.zf = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_DEFLATED)
        self.n = 0

    def write(self, folder: str, batch: Sequence[tuple[Message, bytes]]) -> None:
        for m, raw in batch:
            self.n += 1
            name = f"{_safe(folder)}/{self.n:06d}.eml"
            self.zf.writestr(name, raw)
            self.manifest.append({**_entry(folder, m), "file": name})

    def finish(self) -> dict:
        self.zf.writestr("manifest.json", self._doc(self.at))
        self.zf.close()
        _fsync_rename(self.tmp, self.path)
        return {"written": self.n, "file": str(self.path)}


def _safe(folder: str) -> str:
    """A folder name as a zip path: every segment kept readable, nothing that climbs out."""
    parts = []
    for seg in folder.split("/"):
        seg = "".join(c if c.isprintable() and c not in '\\:*?"<>|' else "_" for c in seg).strip()
        parts.append("_" if seg in ("", ".", "..") else seg)
    return "/".join(parts)


def read_export(path: Path) -> Iterator[ExportedMessage]:
    """The messages of an mbox (with its manifest) or zip export, each checked against its SHA-256."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            doc = json.loads(zf.read("manifest.json"))
            for e in doc["messages"]:
                yield _checked(e, zf.read(e["file"]))
        return
    doc = json.loads(path.with_name(path.name + ".manifest.json").read_bytes())
    data = path.read_bytes()
    # a line starting "From " only ever separates messages: in a message it is quoted ">From "
    starts = [m.start() for m in re.finditer(rb"^From ", data, re.MULTILINE)]
    if len(starts) != len(doc["messages"]):
        raise ExportError(f"{path}: {len(starts)} messages, the manifest lists {len(doc['messages'])}")
    for i, e in enumerate(doc["messages"]):
        end = starts[i + 1] if i + 1 < len(starts) else len(data)
        record = data[data.index(b"\n", starts[i]) + 1:end]
        body = _UNQUOTE.sub(rb"\1", record)[: e["size"]]
        yield _checked(e, body)


_UNQUOTE = re.compile(rb"^>(>*From )", re.MULTILINE)


def _checked(e: dict, body: bytes) -> ExportedMessage:
    if hashlib.sha256(body).hexdigest() != e["sha256"]:
        raise ExportError(f"message of {e['folder']!r} does not match its SHA-256 {e['sha256'][:16]}…")
    return ExportedMessage(e["folder"], e["sha256"], tuple(e["flags"]), e["internaldate"], body)
