"""A seed's progress at each status poll (``--timeline`` of ``bench_seed.py`` and ``bench_wan.py``):
rows of (seconds since protect, captured seq, copy queue, replay queue, applied seq)."""
from __future__ import annotations

HEADER = "timeline (s since protect: captured seq, copy queue, replay queue, applied seq):"


def progress_row(seconds: float, status: dict) -> tuple[float, int, int, int, int]:
    """One poll of a mailbox's status (the source gateway's ``GET /api/v1/mailboxes`` entry)."""
    return (seconds, status.get("last_captured_seq", 0), status.get("copy_queue", 0), status.get("replay_queue", 0),
            status.get("last_applied_seq", 0))


def print_timeline(rows: list, indent: str = "  ") -> None:
    for t, captured, copy_q, replay_q, applied in rows:
        print(f"{indent}{t:6.2f} s  captured {captured:6d}  copy queue {copy_q:6d}  replay queue {replay_q:6d}  "
              f"applied {applied:6d}")
