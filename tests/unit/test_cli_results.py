"""How ``mailrepl cutover``/``failback`` print their results: a table for a few mailboxes, plain
aligned columns and a count by status for many (every mailbox still has its line)."""
from __future__ import annotations

import io

from rich.console import Console

from mailrepl.shared.cli.site_commands import TABLE_MAX_ROWS, print_results


def _results(n: int, failed: set[int]) -> list[dict]:
    return [dict(server="primary", address=f"u{i:05d}@example.org", state="cutting-over" if i in failed else "active-at-dr",
                 status="error" if i in failed else "ok", replay_queue=i % 4,
                 **({"error": "standby unreachable"} if i in failed else {"note": "cut over"})) for i in range(n)]


def _printed(results: list[dict]) -> str:
    out = io.StringIO()
    print_results(Console(file=out, width=120), results, "cutover on https://dr.example.org:8471")
    return out.getvalue()


def test_a_few_results_are_a_table():
    text = _printed(_results(3, {1}))
    assert "│" in text and "standby unreachable" in text and "mailboxes:" not in text


def test_many_results_are_one_line_each_and_counted():
    n = TABLE_MAX_ROWS * 10
    text = _printed(_results(n, {5, n - 1}))
    lines = text.splitlines()
    assert lines[0] == "cutover on https://dr.example.org:8471"
    assert lines[1].split() == ["Address", "Server", "State", "Status", "Queue", "Note"]
    rows = lines[2:-1]
    assert len(rows) == n and "│" not in text
    assert rows[5].split(None, 5) == ["u00005@example.org", "primary", "cutting-over", "error", "1", "standby unreachable"]
    assert rows[6].split(None, 5) == ["u00006@example.org", "primary", "active-at-dr", "ok", "2", "cut over"]
    assert len({len(r.rsplit("  ", 1)[0]) for r in rows}) == 1  # aligned: the note starts in one column
    assert lines[-1] == f"{n} mailboxes: 2 error, {n - 2} ok"
