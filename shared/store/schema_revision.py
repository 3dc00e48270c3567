"""Which schema revision is the newest, and migrating a state store in a process of its own.

A gateway runs for months; Alembic, once imported, stays in its memory (about 10 MB) although it
is needed only at start and only when the schema is behind. So:

* :func:`newest_revision` reads the head revision from the migration files themselves (their
  ``revision``/``down_revision`` lines), without importing Alembic; anything it cannot read
  plainly (a file without exactly one of each, branches) answers None, and Alembic decides;
* :func:`main`, run in a child process by ``Store.migrate(apart=True)``, migrates the store whose
  URL it reads on standard input (never on the command line: it may hold a password) and exits;
  the gateway migrates in its own process if that fails.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

__all__ = ["main", "newest_revision"]

VERSIONS = Path(__file__).with_name("migrations") / "versions"
_REVISION = re.compile(r"""^revision\s*(?::\s*str\s*)?=\s*["']([^"']+)["']\s*$""", re.MULTILINE)
_DOWN_REVISION = re.compile(r"""^down_revision\s*(?::[^=\n]*)?=\s*(?:["']([^"']+)["']|None)\s*$""", re.MULTILINE)


def newest_revision(versions: Path = VERSIONS) -> str | None:
    """The one head revision of the migrations in ``versions``; None if that is not plain."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(versions.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.findall(text), _DOWN_REVISION.findall(text)
        if len(revision) != 1 or len(down) != 1 or revision[0] in revisions:
            return None
        revisions.add(revision[0])
        if down[0]:
            parents.add(down[0])
    heads = revisions - parents
    if len(heads) != 1 or not parents <= revisions:
        return None
    return heads.pop()


def main() -> int:
    from mailrepl.shared.runtime.process import PRIVATE_UMASK
    from mailrepl.shared.store.db import open_store

    os.umask(PRIVATE_UMASK)  # as in the gateway: the files it creates are its owner's alone
    url = sys.stdin.readline().rstrip("\n")
    try:
        store = open_store(url)
        try:
            store.migrate()
        finally:
            store.dispose()
    except Exception as exc:  # noqa: BLE001 - one line: the gateway migrates itself and reports it
        print(f"schema migration in a separate process failed: {exc.__class__.__name__}: "
              f"{str(exc).replace(url, '(state URL)')}".splitlines()[0], file=sys.stderr)
        return 1
    return 0

