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


# --- schema revisions: Alembic only where the schema is behind, and then in a process of its own

def test_the_newest_revision_read_from_the_files_is_alembics_head(tmp_path):
    from alembic.script import ScriptDirectory
    from mailrepl.shared.store import db
    from mailrepl.shared.store.schema_revision import VERSIONS, newest_revision

    assert newest_revision() == ScriptDirectory(str(db._MIGRATIONS)).get_current_head()
    # anything not plain is left to Alembic: two heads, a file without its revision line
    for name, text in (("a.py", 'revision = "x1"\ndown_revision = None\n'),
                       ("b.py", 'revision = "x2"\ndown_revision = "x1"\n')):
        (tmp_path / name).write_text(text)
    assert newest_revision(tmp_path) == "x2"
    (tmp_path / "c.py").write_text('revision = "x3"\ndown_revision = "x1"\n')
    assert newest_revision(tmp_path) is None
    (tmp_path / "c.py").write_text('"""no revision here"""\n')
    assert newest_revision(tmp_path) is None
    assert newest_revision(tmp_path / "empty") is None
    assert len(list(VERSIONS.glob("*.py"))) >= 12


def test_a_gateway_process_migrates_without_importing_alembic(gateway_states, tmp_path):
    """migrate_apart runs Alembic in a child process; the store is then at the newest revision
    and neither it nor a later start (already there) imports Alembic in the calling process."""
    import subprocess
    import sys

    from mailrepl.shared.store.schema_revision import newest_revision

    url = gateway_states[0]
    probe = ("import sys; from mailrepl.shared.store.db import migrate_apart, open_store; "
             f"migrate_apart({url!r}); s = open_store({url!r}); s.migrate(); "
             "print(s.revisions(), 'alembic' in sys.modules)")
    for _ in range(2):  # a new store, then one already at the newest revision
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"[{newest_revision()!r}] False"
    if url.startswith("sqlite"):
        assert (tmp_path / "source.sqlite").stat().st_mode & 0o077 == 0
    store = open_store(url)
    with store.tx() as s:
        s.add(Mailbox(server="primary", address="a@example.org"))
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Mailbox)) == 1


def test_a_failed_migration_apart_is_done_in_process(tmp_path, monkeypatch):
    import sys

    from mailrepl.shared.store.schema_revision import newest_revision

    monkeypatch.setattr(sys, "executable", "/bin/false")  # the child cannot run
    store = open_store(f"sqlite:///{tmp_path}/state.sqlite")
    assert store.revisions() == []
    store.migrate(apart=True)
    assert store.revisions() == [newest_revision()]
    memory = open_store("sqlite://")  # in memory: a child could not see it, migrated here
    memory.migrate(apart=True)
    assert memory.revisions() == [newest_revision()]
