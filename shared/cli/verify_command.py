"""``mailrepl verify``: compare the primary and standby copies of mailboxes (source gateway).

Starts a verify job (with ``--repair``, what differs is handed to replication to fix), follows it (a progress bar on a terminal, a line per change otherwise), then
prints each mailbox's verdict with its differences, or the report as JSON (``--json``).
Exit status: 0 every mailbox equal, 1 a mailbox differs (or never settled), 2 an error.
"""
from __future__ import annotations

import json
import time
from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from mailrepl.shared.cli.admin_client import AdminApiError, AdminClient, ApiUnreachable

__all__ = ["verify", "exit_status", "render_report", "POLL_INTERVAL"]

POLL_INTERVAL = 0.5
EXIT_EQUAL, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
UNREACHABLE_GRACE = 60.0  # seconds the API may be unreachable while a job runs


def exit_status(report: dict[str, Any]) -> int:
    """0 all equal, 1 differences (or changes that never settled), 2 an error."""
    if report.get("state") != "done" or report.get("error"):
        return EXIT_ERROR
    verdicts = [m.get("verdict") for m in report.get("mailboxes", [])]
    if "error" in verdicts:
        return EXIT_ERROR
    return EXIT_EQUAL if report.get("equal") and all(v == "equal" for v in verdicts) else EXIT_DIFFERENT


def render_report(report: dict[str, Any], console: Console) -> None:
    for m in report.get("mailboxes", []):
        verdict = m["verdict"]
        style = {"equal": "green", "different": "red", "in_flight": "yellow"}.get(verdict, "red")
        head = Text(f"{m['address']}: ")
        head.append(verdict.upper() if verdict != "equal" else "equal", style=style)
        head.append(f" ({m['folders_checked']} folders, {m['messages_checked']} messages checked)")
        if m.get("error"):
            head.append(f": {m['error']}")
        console.print(head)
        for d in m.get("differences", []):
            _difference(d, console)
        if m.get("repair"):
            _repair(m["repair"], console)
    if report.get("error"):
        console.print(Text(f"verify failed: {report['error']}", style="red"))


def _difference(d: dict[str, Any], console: Console) -> None:
    same = not d.get("standby_folder") or d["standby_folder"] == d["folder"]
    where = d["folder"] if same else f"{d['folder']} -> {d['standby_folder']}"
    ident = d.get("message_id") or (d["sha256"][:16] if d.get("sha256") else "")
    console.print(Text(f"  {d['kind']:<14} {where}  {ident}  {d.get('detail', '')}".rstrip()))


def _repair(r: dict[str, Any], console: Console) -> None:
    folders = ", ".join(r.get("resynced_folders", [])) or "none"
    console.print(Text(f"  repair: folders resynchronised by replication: {folders}; "
                       f"{r.get('removals_queued', 0)} standby copies queued for removal"))
    for n in r.get("not_repaired", []):
        console.print(Text(f"  not repaired: {n['kind']} {n['folder']}: {n['reason']}"))


def _follow(client: AdminClient, job: str, console: Console, quiet: bool) -> dict[str, Any]:
    """Poll the job until it ends; a progress bar on a terminal, plain lines otherwise."""
    last_line, unreachable_since = None, None
    bar = None
    if not quiet and console.is_terminal:
        bar = Progress(TextColumn("verify"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                       TimeElapsedColumn(), console=console, transient=True)
        bar.start()
        task = bar.add_task("", total=None)
    try:
        while True:
            try:
                report = client.verify_job(job)
                unreachable_since = None
            except ApiUnreachable:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_GRACE:
                    raise
                time.sleep(POLL_INTERVAL)
                continue
            p = report.get("progress", {})
            total, done = p.get("mailboxes_total", 0), p.get("mailboxes_done", 0)
            what = f"{p.get('messages_checked', 0)} messages checked" + (
                f", at {p['current']}" if p.get("current") else "")
            if bar is not None:
                bar.update(task, total=total, completed=done, description=what)
            elif not quiet:
                line = f"verify: {done}/{total} mailboxes, {what}"
                if line != last_line:
                    print(line, flush=True)
                    last_line = line
            if report.get("state") != "running":
                return report
            time.sleep(POLL_INTERVAL)
    finally:
        if bar is not None:
            bar.stop()


def verify(client: AdminClient, console: Console, *, addresses: Sequence[str], server: str | None,
           whole: bool, as_json: bool, timeout: float | None, repair: bool = False) -> int:
    body: dict[str, Any] = {"addresses": list(addresses), "all": whole, "repair": repair}
    if server:
        body["server"] = server
    if timeout is not None:
        body["settle_timeout"] = timeout
    try:
        job = client.start_verify(body)["job"]
        report = _follow(client, job, console, quiet=as_json)
    except AdminApiError as exc:
        console.print(Text(f"mailrepl: error: {exc}", style="red"), highlight=False)
        return EXIT_ERROR
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        render_report(report, console)
    return exit_status(report)
