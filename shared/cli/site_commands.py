"""The ``mailrepl cutover`` and ``mailrepl failback`` commands, against a recovery gateway.

``cutover`` moves users to the standby (it works while the primary site is down) and prints one
row per mailbox. ``failback`` starts replaying the standby's changes on the primary; with
``--confirm`` it switches users back once they are applied (``--wait`` shows the progress until
the mailboxes replicate again); ``--abort`` stops a failback under way.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mailrepl.shared.cli.admin_client import AdminClient, ApiUnreachable

__all__ = ["cutover", "failback", "print_results", "results_columns", "results_table"]

WAIT_POLL_INTERVAL = 1.0


def _selection(addresses: Sequence[str], server: str | None, whole_server: bool) -> dict[str, Any]:
    return {"addresses": list(addresses), "server": server, "all": whole_server}


HEADINGS = ("Address", "Server", "State", "Status", "Queue", "Note")
# more results than this are printed as plain aligned columns: laying out a rich table of
# 10,000 rows takes many seconds, longer than the cutover itself
TABLE_MAX_ROWS = 200


def _cells(r: dict[str, Any]) -> tuple[str, str, str, str, str, str]:
    queue = r.get("failback_queue", r.get("replay_queue"))
    note = r.get("error") or r.get("note") or ""
    if r.get("report", {}).get("late"):
        note = f"{len(r['report']['late'])} late message(s) kept on the primary " + note
    return (r["address"], r["server"], r["state"], r.get("status", "ok"), "" if queue is None else str(queue), note)


def results_table(results: Sequence[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for heading in HEADINGS[:4]:
        table.add_column(heading, no_wrap=True)
    table.add_column("Queue", justify="right")
    table.add_column("Note", overflow="fold")
    for r in results:
        address, server, state, status, queue, note = _cells(r)
        table.add_row(address, server, state, Text(status, style="green" if status == "ok" else "red"), queue, note)
    return table


def results_columns(results: Sequence[dict[str, Any]]) -> str:
    """Every result as one line of plain aligned columns (the table's cells), under a heading line."""
    rows = [HEADINGS, *(_cells(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "".join(
        "  ".join([*(cell.rjust(w) if i == 4 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))),
                   row[5]]).rstrip() + "\n" for row in rows)


def print_results(console: Console, results: Sequence[dict[str, Any]], title: str) -> None:
    """The results as a table, or as plain columns and a count by status when there are many."""
    if len(results) <= TABLE_MAX_ROWS:
        console.print(results_table(results, title))
        return
    console.print(title, markup=False, highlight=False)
    console.file.write(results_columns(results))
    counts: dict[str, int] = {}
    for r in results:
        counts[r.get("status", "ok")] = counts.get(r.get("status", "ok"), 0) + 1
    console.print(Text(f"{len(results)} mailboxes: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())),
                       style="green" if set(counts) == {"ok"} else "red"))


def cutover(client: AdminClient, console: Console, *, addresses: Sequence[str], server: str | None,
            whole_server: bool, play: str = "all", until=None) -> int:
    """``play``/``until``: what a lagged copy plays first (all, up to ``until``, none)."""
    body = _selection(addresses, server, whole_server)
    if play != "all":
        body = dict(body, play=play, **({"until": until.isoformat()} if until is not None else {}))
    results = client.cutover(body)["results"]
    print_results(console, results, f"cutover on {client.url}")
    return 0 if all(r.get("status") == "ok" for r in results) else 1


def failback(client: AdminClient, console: Console, *, addresses: Sequence[str], server: str | None,
             whole_server: bool, confirm: bool, abort: bool, wait: bool, wait_timeout: float | None) -> int:
    body = dict(_selection(addresses, server, whole_server), confirm=confirm, abort=abort)
    results = client.failback(body)["results"]
    print_results(console, results, f"failback on {client.url}")
    if not wait or abort:
        return 0 if all(r.get("status") == "ok" for r in results) else 1
    deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
    targets = [(r["server"], r["address"]) for r in results]
    goal = "replicating" if confirm else None
    while True:
        try:
            details = [client.mailbox(address, server) for server, address in targets]
        except ApiUnreachable as exc:
            console.print(Text(f"{exc} (retrying)", style="red"))
            details = None
        if details is not None:
            if goal and all(d.get("site_state") == goal for d in details):
                console.print(f"{len(details)} mailboxes back at the primary, replicating")
                return 0
            if not goal:
                now = client.failback(dict(body, confirm=False))["results"]
                if all(r.get("failback_queue") == 0 for r in now):
                    console.print(results_table(now, "every standby change is applied on the primary; "
                                                     "confirm with failback --confirm"))
                    return 0
        if deadline is not None and time.monotonic() >= deadline:
            console.print(Text(f"not done after {wait_timeout:g} s", style="red"))
            return 1
        time.sleep(WAIT_POLL_INTERVAL)
