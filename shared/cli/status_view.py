"""How ``mailrepl status`` and ``protect --wait`` show mailboxes: rich tables and progress bars.

Pure functions from the admin API's JSON (``mailrepl.shared.runtime.api_common`` schema) to rich renderables,
so the same views serve one-shot output, ``--watch`` and ``--wait`` (inside ``rich.live``).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from rich.console import Group, RenderableType
from rich.filesize import decimal
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

__all__ = ["is_settled", "mailbox_table", "progress_table", "overview", "detail_view"]

_PHASE_STYLE = {"idle": "dim", "seeding": "yellow", "replicating": "green", "error": "bold red"}
BAR_WIDTH = 30


def is_settled(status: Mapping[str, Any]) -> bool:
    """Replicating with nothing left to ship or apply: the standby has every captured change."""
    return status["phase"] == "replicating" and not status["copy_queue"] and not status["replay_queue"]


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def _lag(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _size(n: int | None) -> str:
    """Bytes in a short human form (SI units, as mail sizes are usually quoted)."""
    if n is None:
        return ""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


def _phase(phase: str) -> Text:
    return Text(phase, style=_PHASE_STYLE.get(phase, ""))


def _problems(m: Mapping[str, Any]) -> str:
    """The error and the copy queue's alarm (back-pressure: warning, full, disk full), if any."""
    return "; ".join(x for x in (m.get("error"), m.get("queue_alarm")) if x)


def mailbox_table(mailboxes: Iterable[Mapping[str, Any]], *, title: str | None = None) -> Table:
    """One row per mailbox with every status column of the API."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("Address", no_wrap=True)
    table.add_column("Server", no_wrap=True)
    table.add_column("Protected")
    table.add_column("Phase", no_wrap=True)
    table.add_column("Active site")
    for heading in ("Copy queue", "Replay queue", "Lag", "Last captured", "Last applied", "Rejected",
                    "Shipped", "Wire", "Saved dedup/zstd"):
        table.add_column(heading, justify="right")
    table.add_column("Error", style="red", overflow="fold")
    for m in mailboxes:
        b = m.get("bytes") or {}
        table.add_row(
            m["address"], m["server"], "yes" if m["protected"] else "no", _phase(m["phase"]), m["active_site"],
            _number(m["copy_queue"]), _number(m["replay_queue"]), _lag(m["lag_seconds"]),
            _number(m["last_captured_seq"]), _number(m["last_applied_seq"]), str(m["rejected"]),
            _size(b.get("shipped_raw")), _size(b.get("wire")),
            f"{_size(b.get('saved_by_dedup'))} / {_size(b.get('saved_by_compression'))}" if b else "",
            _problems(m),
        )
    return table


def _bar(detail: Mapping[str, Any]) -> ProgressBar:
    seeding = detail["seeding"]
    if detail["phase"] != "seeding":
        done = is_settled(detail)
        return ProgressBar(total=1, completed=1 if done else 0, width=BAR_WIDTH)
    if seeding["bytes_total"]:
        return ProgressBar(total=seeding["bytes_total"], completed=seeding["bytes_done"], width=BAR_WIDTH)
    if seeding["messages_total"]:
        return ProgressBar(total=seeding["messages_total"], completed=seeding["messages_done"], width=BAR_WIDTH)
    return ProgressBar(total=None, width=BAR_WIDTH)  # still counting what there is to copy


def _percent(seeding: Mapping[str, int]) -> str:
    if seeding["bytes_total"]:
        return f"{100 * seeding['bytes_done'] // seeding['bytes_total']}%"
    if seeding["messages_total"]:
        return f"{100 * seeding['messages_done'] // seeding['messages_total']}%"
    return ""


def progress_table(details: Iterable[Mapping[str, Any]], *, title: str | None = "Seeding") -> Table:
    """A progress bar per mailbox: seeding copied messages/bytes, then the queues draining."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("Address", no_wrap=True)
    table.add_column("Phase", no_wrap=True)
    table.add_column("Progress", no_wrap=True)
    table.add_column("", justify="right")
    table.add_column("Messages", justify="right")
    table.add_column("Bytes", justify="right")
    table.add_column("Queues (copy/replay)", justify="right")
    table.add_column("Error", style="red", overflow="fold")
    for d in details:
        s = d["seeding"]
        table.add_row(
            d["address"], _phase(d["phase"]), _bar(d), _percent(s) if d["phase"] == "seeding" else "",
            f"{s['messages_done']}/{s['messages_total']}",
            f"{decimal(s['bytes_done'])} / {decimal(s['bytes_total'])}",
            f"{_number(d['copy_queue'])}/{_number(d['replay_queue'])}",
            _problems(d),
        )
    return table


def overview(mailboxes: list[Mapping[str, Any]], seeding_details: list[Mapping[str, Any]],
             *, source: str) -> RenderableType:
    """``mailrepl status``: every mailbox, then a progress bar per mailbox still seeding."""
    if not mailboxes:
        return Text(f"{source}: no mailboxes known yet (none configured, or the servers could not list them)")
    parts: list[RenderableType] = [mailbox_table(mailboxes, title=f"{source}: {len(mailboxes)} mailboxes")]
    if seeding_details:
        parts.append(progress_table(seeding_details))
    return Group(*parts)


def detail_view(detail: Mapping[str, Any]) -> RenderableType:
    """``mailrepl status ADDRESS``: the status row, seeding progress, folders, messages the standby
    rejected or stored altered."""
    parts: list[RenderableType] = [mailbox_table([detail])]
    if detail["phase"] == "seeding":
        parts.append(progress_table([detail]))
    if detail["folders"]:
        folders = Table(title="Folders", title_justify="left", header_style="bold")
        folders.add_column("Folder")
        folders.add_column("Messages", justify="right")
        folders.add_column("Pending", justify="right")
        folders.add_column("Cursor", overflow="fold")
        for f in detail["folders"]:
            folders.add_row(f["name"], _number(f["messages"]), str(f["pending"]), f["cursor"] or "")
        parts.append(folders)
    if detail["rejected_messages"]:
        parts.append(_message_table("Rejected by the standby", detail["rejected_messages"], "Reason", "reason"))
    if detail.get("altered_messages"):
        parts.append(_message_table("Stored altered by the standby", detail["altered_messages"], "What changed",
                                    "what"))
    time_lines = _time_lines(detail)
    if time_lines:
        parts.append(Text("\n".join(time_lines)))
    return Group(*parts)


def _message_table(title: str, rows, last: str, key: str) -> Table:
    """Messages the standby refused or altered: seq, folder, identity, and ``key`` (why / what)."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("Seq", justify="right")
    table.add_column("Folder")
    table.add_column("Message-ID", overflow="fold")
    table.add_column("Subject", overflow="fold")
    table.add_column("Date")
    table.add_column(last, overflow="fold")
    for r in rows:
        table.add_row(str(r["seq"]), r["folder"], r.get("message_id") or "", r.get("subject") or "",
                      r.get("date") or "", r[key])
    return table


def _time_lines(m: Mapping[str, Any]) -> list[str]:
    """History, lagged copy and mass-delete guard (recovery gateway), where the mailbox has them."""
    out = []
    if m.get("replay_delay_seconds") is not None:
        out.append(f"lagged copy: replay delay {_lag(m['replay_delay_seconds'])}, "
                   f"{_number(m.get('delayed_changes'))} received changes not yet due")
    if m.get("held_deletions") is not None:
        out.append(f"mass-delete guard: {m['held_deletions']} changes held (mailrepl guard --release / --discard)")
    if m.get("history_bytes") is not None:
        out.append(f"history: {_size(m['history_bytes'])} kept")
    return out
