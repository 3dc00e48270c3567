"""``[guard]`` of the recovery gateway's config: when a mailbox's deletions are held.

::

    [guard]
    enabled = true
    window_minutes = 10        # deletions counted over this window (by capture time)
    min_messages = 250         # trips when at least this many were deleted in the window ...
    share_percent = 30         # ... and they are at least this share of the mailbox,
    max_messages = 10000       # or when this many were, whatever the mailbox's size
    trash_folders = ["Trash", "Junk", "Spam", "Deleted Items", "Deleted Messages", "Junk E-mail"]

A deletion is an expunge, a move into a folder named in ``trash_folders`` (its last name
segment, case-insensitive) or a folder delete. Read here only; the guard
(``mailrepl.recovery.delete_guard``) takes the typed :class:`GuardSettings`.
"""
from __future__ import annotations

from dataclasses import dataclass

from mailrepl.shared.config.toml_reader import Table

__all__ = ["GuardSettings", "read_guard"]

DEFAULT_TRASH = ("Trash", "Junk", "Spam", "Deleted Items", "Deleted Messages", "Junk E-mail")


@dataclass(frozen=True, kw_only=True)
class GuardSettings:
    enabled: bool = True
    window_seconds: float = 600.0
    min_messages: int = 250
    share: float = 0.30
    max_messages: int = 10_000
    trash_folders: tuple[str, ...] = DEFAULT_TRASH

    def trips(self, deleted: int, mailbox_messages: int) -> bool:
        """Whether ``deleted`` deletions within the window of a mailbox of ``mailbox_messages`` trip it."""
        if not self.enabled or deleted <= 0:
            return False
        return deleted >= self.max_messages or (deleted >= self.min_messages
                                                and deleted >= self.share * max(mailbox_messages, 1))

    def is_trash(self, folder: str) -> bool:
        last = folder.rsplit("/", 1)[-1].casefold()
        return any(last == t.casefold() for t in self.trash_folders)

    def describe(self) -> str:
        if not self.enabled:
            return "mass-delete guard off"
        return (f"mass-delete guard: holds deletions after {self.min_messages} and {self.share:.0%} of a mailbox "
                f"(or {self.max_messages}) within {self.window_seconds:g}s")


def read_guard(table: Table) -> GuardSettings:
    window = table.seconds("window_minutes", 10) * 60
    settings = GuardSettings(
        enabled=table.boolean("enabled", True),
        window_seconds=window,
        min_messages=table.integer("min_messages", 250, minimum=1),
        share=table.integer("share_percent", 30, minimum=0, maximum=100) / 100,
        max_messages=table.integer("max_messages", 10_000, minimum=1),
        trash_folders=table.strings("trash_folders", DEFAULT_TRASH),
    )
    table.finish()
    return settings
