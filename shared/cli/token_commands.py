"""The ``mailrepl tokens`` and ``mailrepl audit`` commands (role admin), against either gateway.

``tokens create NAME --role ROLE`` prints the new token once (only its SHA-256 is kept);
``tokens list`` shows every token without secrets; ``tokens revoke NAME`` refuses it from the
next request on. ``audit`` shows the newest audit entries: who changed what, when, and how it
ended.
"""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mailrepl.shared.cli.admin_client import AdminClient

__all__ = ["create_token", "list_tokens", "revoke_token", "show_audit"]


def create_token(client: AdminClient, console: Console, *, name: str, role: str) -> int:
    answer = client.create_token(name, role)
    # the token alone on stdout's last line, for scripts; printed without markup or wrapping
    console.print(f"token {answer['name']!r} (role {answer['role']}) created on the {client.what}; "
                  "it is shown this once:", markup=False, highlight=False)
    console.print(answer["token"], markup=False, highlight=False, soft_wrap=True)
    return 0


def list_tokens(client: AdminClient, console: Console, *, as_json: bool = False) -> int:
    tokens = client.tokens()["tokens"]
    if as_json:
        console.print_json(json.dumps({"tokens": tokens}))
        return 0
    table = Table(title=f"API tokens of the {client.what} at {client.url}", title_justify="left", header_style="bold")
    for heading in ("Name", "Role", "Created", "By", "Revoked"):
        table.add_column(heading, no_wrap=True)
    for t in tokens:
        table.add_row(Text(t["name"]), t["role"], t["created_at"][:19], Text(t["created_by"]),
                      Text(t["revoked_at"][:19], style="red") if t["revoked_at"] else "")
    console.print(table)
    return 0


def revoke_token(client: AdminClient, console: Console, *, name: str) -> int:
    answer = client.revoke_token(name)
    console.print(f"token {answer['name']!r} revoked at {answer['revoked_at']}", markup=False, highlight=False)
    return 0


def show_audit(client: AdminClient, console: Console, *, limit: int, since: str | None, as_json: bool) -> int:
    entries = client.audit(limit=limit, since=since)["entries"]
    if as_json:
        console.print_json(json.dumps({"entries": entries}))
        return 0
    table = Table(title=f"audit log of the {client.what} at {client.url}", title_justify="left", header_style="bold")
    for heading in ("When", "Who", "Role", "Call", "Status"):
        table.add_column(heading, no_wrap=True)
    table.add_column("Target", overflow="fold")
    for e in entries:
        ok = 200 <= e["status"] < 300
        table.add_row(e["at"][:19], Text(e["principal"] or "(unauthenticated)"), e["role"] or "",
                      Text(f"{e['method']} {e['path']}"), Text(str(e["status"]), style="green" if ok else "red"),
                      Text(e["target"] or ""))
    console.print(table)
    return 0
