"""The fault suite's result table: one row per scenario, printed at the end and written to a file.

``MAILREPL_FAULTS_TABLE`` names the file (Markdown); the README quotes the last full run's table.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HEADER", "ROWS", "Row", "format_table", "write_table"]

HEADER = ("scenario", "faults injected", "messages delivered", "changes made", "lost", "duplicated",
          "other differences", "time to drain after healing")


@dataclass
class Row:
    scenario: str
    faults: int
    delivered: int
    changes: int
    lost: int
    duplicated: int
    other: int
    drain_seconds: float | None  # None: did not drain within the timeout

    def cells(self) -> tuple[str, ...]:
        drain = "did not drain" if self.drain_seconds is None else f"{self.drain_seconds:.1f} s"
        return (self.scenario, str(self.faults), str(self.delivered), str(self.changes), str(self.lost),
                str(self.duplicated), str(self.other), drain)


ROWS: list[Row] = []  # filled by the tests of this session, in the order they ran


def format_table(rows: list[Row], title: str = "") -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [HEADER, *(r.cells() for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]

    def line(values) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    out = [title] if title else []
    out += [line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r.cells()) for r in rows]
    return "\n".join(out)


def write_table(rows: list[Row], title: str = "", path: str | os.PathLike | None = None) -> Path | None:
    """Write the table to ``path`` (default: ``MAILREPL_FAULTS_TABLE``); None when neither is set."""
    target = path or os.environ.get("MAILREPL_FAULTS_TABLE")
    if not target:
        return None
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(format_table(rows, title) + "\n")
    return target
