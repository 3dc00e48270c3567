"""``mailrepl guard``: what the mass-delete guard holds, and releasing or discarding it (recovery gateway).

``guard`` lists the mailboxes whose deletions are held; ``guard ADDRESS --release`` plays the held
changes on the standby in their order; ``guard ADDRESS --discard`` drops the held deletions (the
standby keeps the messages) and plays the rest. Exit 0 done, 2 refused or unreachable.
"""
from __future__ import annotations

import json

from mailrepl.shared.cli.admin_client import AdminApiError, AdminClient
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["guard"]


def guard(client: AdminClient, console: Console, *, address: str | None, server: str | None,
          action: str | None, as_json: bool) -> int:
    try:
        doc = client.resolve_guard(address, action, server) if action else client.guard()
    except AdminApiError as exc:
        console.print(Text(f"mailrepl: error: {exc}", style="red"), highlight=False)
        return 2
    if as_json:
        print(json.dumps(doc, indent=2))
    elif action:
        verb = "released" if action == "release" else "discarded"
        console.print(Text(f"{doc['server']}/{doc['address']}: {verb}: {doc['played']} held changes played, "
                           f"{doc['discarded']} deletions dropped"), highlight=False)
    else:
        rows = [m for m in doc["mailboxes"] if address is None or m["address"] == address]
        if not rows:
            console.print("nothing is held")
        table = Table("mailbox", "held", "since", "deletions that tripped it")
        for m in rows:
            table.add_row(f"{m['server']}/{m['address']}", str(m["held"]), m["since"] or "-",
                          f"{m['deletions']} of {m['mailbox_messages']}" if m["deletions"] is not None else "-")
        if rows:
            console.print(table)
    return 0
