"""State store transactions: writers queue, readers never wait for a writer (SQLite WAL)."""
from __future__ import annotations

import threading

from sqlalchemy import func, select

from mailrepl.shared.store import open_store
from mailrepl.shared.store.models import Mailbox


def test_a_read_does_not_wait_for_an_open_write_and_sees_only_committed_rows(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/state.sqlite")
    store.migrate()
    with store.tx() as s:
        s.add(Mailbox(server="primary", address="alice"))
    writing, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.tx() as s:
            s.add(Mailbox(server="primary", address="bob"))
            s.flush()  # holds the write lock from here until the block ends
            writing.set()
            release.wait(30)

    counts: list[int] = []

    def reader() -> None:
        with store.read() as s:
            counts.append(s.scalar(select(func.count()).select_from(Mailbox)))

    w = threading.Thread(target=writer)
    w.start()
    assert writing.wait(10)
    r = threading.Thread(target=reader)
    r.start()
    r.join(10)
    finished = not r.is_alive()
    release.set()
    w.join(10)
    r.join(10)
    assert finished, "the read waited for the writer"
    assert counts == [1], "the read saw an uncommitted row"
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Mailbox)) == 2
    store.dispose()


def test_a_message_id_is_never_handed_out_twice(tmp_path):
    """Message ids name messages in the change stream and in cutover/failback id aliases: the id
    of a deleted newest message must not come back for the next one."""
    from mailrepl.shared.store.models import CatalogEntry, FolderState

    store = open_store(f"sqlite:///{tmp_path}/state.sqlite")
    store.migrate()
    with store.tx() as s:
        mbx = Mailbox(server="primary", address="alice")
        s.add(mbx)
        s.flush()
        folder = FolderState(mailbox_id=mbx.id, name="INBOX")
        s.add(folder)
        s.flush()
        cats = [CatalogEntry(mailbox_id=mbx.id, folder_id=folder.id, uid=u, sha256="0" * 64, size=1) for u in (1, 2)]
        s.add_all(cats)
        s.flush()
        newest = cats[-1].mid
        s.delete(cats[-1])
    with store.tx() as s:
        again = CatalogEntry(mailbox_id=mbx.id, folder_id=folder.id, uid=3, sha256="1" * 64, size=1)
        s.add(again)
        s.flush()
        assert again.mid > newest


def test_migrations_are_self_contained_and_0003_writes_skeletons_current_code_reads():
    """A migration must do the same forever: it imports no live code of the project (the
    environment may import the models), and revision 0003's frozen skeleton format is the one
    the current code reads back byte-exactly."""
    import ast
    import importlib.util
    from pathlib import Path

    from mailrepl.shared.content.mime_split import reassemble, whole_skeleton

    versions = Path(open_store.__code__.co_filename).with_name("migrations") / "versions"
    for path in sorted(versions.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [m for m in mods if m.split(".")[0] == "mailrepl"], f"{path.name} imports {mods}"
    spec = importlib.util.spec_from_file_location("m0003", versions / "0003_content_addressed_parts.py")
    m0003 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m0003)
    for raw in (b"", b"Subject: x\r\n\r\nbody\r\n", bytes(range(256)) * 100):
        frozen = m0003.whole_skeleton(raw)
        assert frozen == whole_skeleton(raw)
        assert reassemble(frozen, {}) == raw
