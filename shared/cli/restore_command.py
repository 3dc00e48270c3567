"""``mailrepl restore`` and ``mailrepl history`` (recovery gateway).

``restore ADDRESS --at TIME`` starts a point-in-time restore job and follows it (a progress bar on
a terminal, a line per change otherwise); with ``--export FILE`` the export is fetched into FILE
(an mbox export's manifest beside it as ``FILE.manifest.json``). ``history [ADDRESS]`` shows what
each mailbox's history holds: how far back a restore reaches, changes, snapshots, bytes.
Exit status: 0 done, 1 the job failed, 2 refused or unreachable.
"""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailrepl.shared.cli.admin_client import AdminApiError, AdminClient, ApiUnreachable
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = ["POLL_INTERVAL", "parse_time", "restore", "show_history"]

POLL_INTERVAL = 0.5
UNREACHABLE_GRACE = 120.0  # a gateway restarting while a job runs (it takes the job up again)


def parse_time(text: str) -> datetime:
    """ISO 8601 (``2026-12-01T10:00``, ``2026-12-01 10:00:05+01:00``); without a zone it is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a time like 2026-12-01T10:00 (ISO 8601; UTC without a zone), got {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _follow(client: AdminClient, job: str, console: Console, quiet: bool) -> dict[str, Any]:
    bar = None
    if not quiet and console.is_terminal:
        bar = Progress(TextColumn("restore"), BarColumn(), DownloadColumn(), TextColumn("{task.description}"),
                       TimeElapsedColumn(), console=console, transient=True)
        bar.start()
        task = bar.add_task("", total=None)
    last, unreachable_since = None, None
    try:
        while True:
            try:
                st = client.restore_job(job)
                unreachable_since = None
            except ApiUnreachable:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_GRACE:
                    raise
                time.sleep(POLL_INTERVAL)
                continue
            p = st["progress"]
            what = f"{p['messages_done']}/{p['messages_total']} messages"
            if bar is not None:
                bar.update(task, total=p["bytes_total"] or None, completed=p["bytes_done"], description=what)
            elif not quiet:
                line = f"restore: {what}, {p['bytes_done']}/{p['bytes_total']} bytes"
                if line != last:
                    print(line, flush=True)
                    last = line
            if st["state"] != "running":
                return st
            time.sleep(POLL_INTERVAL)
    finally:
        if bar is not None:
            bar.stop()


def restore(client: AdminClient, console: Console, *, address: str, server: str | None, at: datetime,
            export: Path | None, export_format: str | None, to_address: str | None, folder: str | None,
            since: datetime | None, before: datetime | None, sender: str | None, subject: str | None,
            as_json: bool) -> int:
    body: dict[str, Any] = {"address": address, "at": at.isoformat()}
    fmt = None
    if export is not None:
        fmt = export_format or ("zip" if export.suffix.lower() == ".zip" else "mbox")
        body["export"] = fmt
    for key, value in (("server", server), ("to_address", to_address), ("folder", folder), ("sender", sender),
                       ("subject", subject), ("since", since.isoformat() if since else None),
                       ("before", before.isoformat() if before else None)):
        if value is not None:
            body[key] = value
    try:
        job = client.start_restore(body)["job"]
        st = _follow(client, job, console, quiet=as_json)
        if st["state"] == "done" and export is not None:
            client.download(f"/api/v1/restore/{job}/file", export)
            if fmt == "mbox":
                client.download(f"/api/v1/restore/{job}/file", export.with_name(export.name + ".manifest.json"),
                                part="manifest")
    except AdminApiError as exc:
        console.print(Text(f"mailrepl: error: {exc}", style="red"), highlight=False)
        return 2
    if as_json:
        print(json.dumps(st, indent=2))
    elif st["state"] == "done":
        r = st["result"]
        where = str(export) if export is not None else (
            f"{r['target']} on the {r['where']}" + (f", under {r['prefix']!r}" if r.get("prefix") else ""))
        extra = f", {r['already_there']} already there" if r.get("already_there") else ""
        console.print(Text(f"restored {r['messages']} messages in {r['folders']} folders of {address} as at "
                           f"{r['at']} into {where}{extra}"), highlight=False)
    else:
        console.print(Text(f"restore failed: {st.get('error')}", style="red"), highlight=False)
    return 0 if st["state"] == "done" else 1


def show_history(client: AdminClient, console: Console, *, address: str | None, server: str | None,
                 as_json: bool) -> int:
    try:
        doc = client.history(address, server)
    except AdminApiError as exc:
        console.print(Text(f"mailrepl: error: {exc}", style="red"), highlight=False)
        return 2
    if as_json:
        print(json.dumps(doc, indent=2))
        return 0
    rows = [doc] if address is not None else doc["mailboxes"]
    table = Table("mailbox", "retention", "restores back to", "changes", "snapshots", "bytes")
    for h in rows:
        back = "the first change" if h["from_start"] else (h["oldest"] or h.get("unavailable") or "-")
        table.add_row(f"{h['server']}/{h['address']}", f"{h['retention_days']:g} d", back, str(h["changes"]),
                      str(h["snapshots"]), str(h["total_bytes"]))
    console.print(table)
    return 0
