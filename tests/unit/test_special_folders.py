"""Special folders pair with the standby's own (``engines/special_folders``), in memory."""
from __future__ import annotations

from datetime import datetime, timezone

from mailrepl.shared.adapters.base import AppendItem
from mailrepl.shared.engines.special_folders import AliasingAdapter, FolderAliases
from mailrepl.shared.store import open_store
from tests.unit.memory_server import Folder, MemoryAdapter, MemoryServer

DATE = datetime(2024, 1, 2, tzinfo=timezone.utc)


def standby(tmp_path):
    server = MemoryServer(["alice"])
    server.box("alice")["Sent"] = Folder("Sent", special_use=frozenset({"\\Sent"}))
    store = open_store(f"sqlite:///{tmp_path}/r.sqlite")
    store.migrate()
    return server, store, AliasingAdapter(MemoryAdapter("standby", server), FolderAliases(store, "standby"))


def test_a_special_folder_pairs_with_the_standbys_own_and_keeps_its_name(tmp_path):
    server, store, adapter = standby(tmp_path)
    session = adapter.open("alice")
    session.create_folder("Sent Items", frozenset({"\\Sent"}))
    session.create_folder("Sent Items/2024")
    session.append("Sent Items", [AppendItem(b"Subject: sent\r\n\r\nx\r\n", frozenset({"\\Seen"}), DATE)])
    session.append("Sent Items/2024", [AppendItem(b"Subject: old\r\n\r\ny\r\n", frozenset(), DATE)])
    box = server.box("alice")
    assert "Sent Items" not in box and len(box["Sent"].msgs) == 1 and len(box["Sent/2024"].msgs) == 1
    names = [f.name for f in session.list_folders()]
    assert "Sent Items" in names and "Sent Items/2024" in names and "Sent" not in names
    assert session.folder_info("Sent Items").special_use == frozenset({"\\Sent"})
    # a new session (a restart) knows the pairing; a rename moves the pairing, not the folder
    again = AliasingAdapter(MemoryAdapter("standby", server), FolderAliases(store, "standby")).open("alice")
    again.rename_folder("Sent Items", "Gesendet")
    assert "Gesendet" in {f.name for f in again.list_folders()} and "Sent" in server.box("alice")
    again.delete_folder("Gesendet")  # the standby's own special folder stays
    assert "Sent" in server.box("alice") and "Sent" in {f.name for f in again.list_folders()}


def test_a_folder_without_special_use_or_with_a_free_one_is_created_as_named(tmp_path):
    server, _, adapter = standby(tmp_path)
    session = adapter.open("alice")
    session.create_folder("Projects")
    session.create_folder("My Drafts", frozenset({"\\Drafts"}))  # the standby has no \Drafts folder
    session.create_folder("Sent", frozenset({"\\Sent"}))  # the same name: itself
    assert {"Projects", "My Drafts", "Sent"} <= set(server.box("alice"))
    assert {f.name for f in session.list_folders()} >= {"Projects", "My Drafts", "Sent"}


def test_parents_the_standby_makes_by_itself_are_hidden_while_empty_and_removed_with_their_child(tmp_path, monkeypatch):
    server, _, adapter = standby(tmp_path)
    session = adapter.open("alice")
    inner = session.inner
    plain_create = type(inner).create_folder

    def create_with_parents(self, folder, special_use=frozenset()):  # as Cyrus does
        levels = folder.split("/")
        for n in range(1, len(levels)):
            plain_create(self, "/".join(levels[:n]))
        plain_create(self, folder, special_use)

    monkeypatch.setattr(type(inner), "create_folder", create_with_parents)
    session.create_folder("Lists")  # the source has this one
    session.create_folder("Lists/a/b/c")
    box = server.box("alice")
    assert {"Lists", "Lists/a", "Lists/a/b", "Lists/a/b/c"} <= set(box)
    names = {f.name for f in session.list_folders()}
    assert "Lists" in names and "Lists/a/b/c" in names and not {"Lists/a", "Lists/a/b"} & names
    session.delete_folder("Lists/a/b/c")
    assert "Lists" in box and not {"Lists/a", "Lists/a/b"} & set(box)
    session.create_folder("P/Q")
    session.append("P", [AppendItem(b"Subject: x\r\n\r\ny\r\n", frozenset(), DATE)])  # mail in it: a folder
    assert "P" in {f.name for f in session.list_folders()}
    session.rename_folder("P/Q", "R")
    assert "P" in box  # not empty: kept


def test_pairings_are_read_from_the_store_once_and_again_after_each_save(tmp_path):
    _, store, adapter = standby(tmp_path)
    reads = []
    real_read = store.read

    def counting_read():
        reads.append(1)
        return real_read()

    store.read = counting_read
    adapter.open("alice").create_folder("Sent Items", frozenset({"\\Sent"}))  # paired: saved
    reads.clear()
    for _ in range(3):  # a session per replay pass
        assert adapter.open("alice").map == {"Sent Items": "Sent"}
    assert len(reads) == 1  # the special pairings (saved since the first session read them), once
    session = adapter.open("alice")
    session.rename_folder("Sent Items", "Gesendet")  # a save: read again
    assert adapter.open("alice").map == {"Gesendet": "Sent"}
    assert FolderAliases(store, "standby").load("alice") == {"Gesendet": "Sent"}  # as stored
    session.map["Elsewhere"] = "x"  # a session's own copy
    assert adapter.open("alice").map == {"Gesendet": "Sent"}
