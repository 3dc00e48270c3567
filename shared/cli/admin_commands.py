"""The ``mailrepl`` admin commands: protect, unprotect and status against a source gateway.

Each command takes an :class:`~mailrepl.shared.cli.admin_client.AdminClient` and a rich console and returns
the exit status; API failures propagate as ``AdminApiError`` for ``mailrepl.shared.cli.main`` to report.
Live views (``status --watch``, ``protect --wait``) keep polling through a briefly unreachable
API (a gateway restarting) and show the failure meanwhile; any other error ends them.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Sequence

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from mailrepl.shared.cli.admin_client import AdminClient, ApiUnreachable
from mailrepl.shared.cli.status_view import detail_view, is_settled, mailbox_table, overview, progress_table

__all__ = ["show_status", "watch_status", "set_protection"]

WAIT_POLL_INTERVAL = 1.0


def _snapshot(client: AdminClient, address: str | None, server: str | None) -> tuple[dict[str, Any], RenderableType]:
    """The API's JSON for ``status`` and its rendering (seeding mailboxes get their progress)."""
    if address is not None:
        detail = client.mailbox(address, server)
        return detail, detail_view(detail)
    listing = client.mailboxes()
    mailboxes = listing["mailboxes"]
    seeding = [client.mailbox(m["address"], m["server"]) for m in mailboxes if m["phase"] == "seeding"]
    return listing, overview(mailboxes, seeding, source=client.url)


def show_status(client: AdminClient, console: Console, *, address: str | None, server: str | None,
                as_json: bool) -> int:
    if as_json:
        data = client.mailbox(address, server) if address is not None else client.mailboxes()
        print(json.dumps(data, indent=2))
    else:
        console.print(_snapshot(client, address, server)[1])
    return 0


def _live(console: Console, render: Callable[[], tuple[RenderableType, bool]], interval: float,
          deadline: float | None) -> bool:
    """Redraw ``render()`` every ``interval`` s until it reports done (True) or ``deadline`` passes.

    On a terminal the view is redrawn in place; into a file or pipe only the last one is written.
    """
    try:
        with Live(console=console, auto_refresh=False) as live:
            while True:
                try:
                    view, done = render()
                except ApiUnreachable as exc:
                    view, done = Text(f"{exc} (retrying)", style="red"), False
                live.update(view, refresh=True)
                if done:
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                time.sleep(interval)
    finally:
        if not console.is_terminal:  # rich ends the last view with a newline on terminals only
            console.line()


def watch_status(client: AdminClient, console: Console, *, address: str | None, server: str | None,
                 interval: float) -> int:
    """``status --watch``: redraw until interrupted (Ctrl-C ends it normally)."""
    try:
        _live(console, lambda: (_snapshot(client, address, server)[1], False), interval, None)
    except KeyboardInterrupt:
        pass
    return 0


def _wait_settled(client: AdminClient, console: Console, targets: Sequence[tuple[str, str]],
                  timeout: float | None) -> int:
    """Show progress bars until every (server, address) replicates with empty queues."""
    title = f"Waiting for {len(targets)} mailboxes to be seeded and in sync"

    def render() -> tuple[RenderableType, bool]:
        details = [client.mailbox(address, server) for server, address in targets]
        return progress_table(details, title=title), all(is_settled(d) for d in details)

    deadline = None if timeout is None else time.monotonic() + timeout
    if not _live(console, render, WAIT_POLL_INTERVAL, deadline):
        console.print(Text(f"not in sync after {timeout:g} s; `mailrepl status` shows where each mailbox stands",
                           style="red"))
        return 1
    console.print(f"{len(targets)} mailboxes replicating, queues empty")
    return 0


def set_protection(client: AdminClient, console: Console, *, enabled: bool, addresses: Sequence[str],
                   server: str | None, whole_server: bool, wait: bool = False,
                   wait_timeout: float | None = None) -> int:
    """Protect (``enabled``) or unprotect addresses, or every mailbox of ``server``.

    Addresses are handled in order and the first refusal stops the command, so the output
    shows exactly which ones changed.
    """
    verb = "protected" if enabled else "unprotected"
    statuses: list[dict[str, Any]] = []
    try:
        if whole_server:
            statuses = client.set_server_protection(server, enabled)["mailboxes"]
        else:
            for address in addresses:
                statuses.append(client.set_protection(address, enabled, server))
    finally:  # after a refusal too: show what changed before it
        if statuses:
            console.print(mailbox_table(statuses, title=f"{verb} on {client.url}"))
    if not statuses:
        console.print(f'server "{server}" lists no mailboxes; nothing {verb}')
        return 0
    if wait:
        return _wait_settled(client, console, [(s["server"], s["address"]) for s in statuses], wait_timeout)
    return 0
