"""The installed distribution: one top-level import name, ``mailrepl``, and a working command.

A real ``pip install .`` into a new, empty virtualenv (dependencies from the package index, as a
user's install gets them), then every check runs from a directory outside the source tree.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
ROLES = ("gateway", "recovery")


def _package_dirs() -> dict[str, Path]:
    """Every import package of the source tree by its installed dotted name."""
    setup = PYPROJECT["tool"]["setuptools"]
    out = {}
    for top, folder in setup["package-dir"].items():
        base = REPO / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if any(part in ("migrations", "__pycache__") for part in rel.parts):
                continue
            if top == "mailrepl.shared" and rel.parts[:1] == ("root",):
                continue  # the namespace root itself, installed as ``mailrepl``
            out[".".join((top, *rel.parts))] = init.parent
    return out


def test_every_package_folder_is_installed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert set(_package_dirs()) == listed


def test_no_module_imports_a_top_level_project_folder():
    """Imports name ``mailrepl....``: a bare ``shared``/``gateway``/``recovery`` would load a
    second copy of the module from the source tree (or nothing, once installed)."""
    bad = []
    for folder in ("shared", "gateway", "recovery", "tests", "deploy"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                bad += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                        if n.split(".")[0] in ("shared", "gateway", "recovery")]
    assert bad == []


def test_shared_code_never_imports_a_role():
    bad = []
    for path in (REPO / "shared").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            bad += [f"{path.relative_to(REPO)}:{node.lineno} {m}" for m in mods
                    if m.startswith(tuple(f"mailrepl.{r}" for r in ROLES))]
    assert bad == []


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new, empty virtualenv with ``pip install .``."""
    venv = tmp_path_factory.mktemp("venv")
    # a copy of the source tree, so that the build leaves nothing in the checkout
    source = tmp_path_factory.mktemp("source") / "mailrepl"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.sqlite*", "mailrepl-blobs"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    build = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    return venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_installed_distribution_has_one_top_level_name(installed, tmp_path):
    py = str(installed / "bin" / "python")
    where = _run(installed, py, "-c", "import mailrepl, sys; print(mailrepl.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert str(installed) in where.stdout  # the installed copy, not the source tree
    site = Path(where.stdout.strip()).parents[1]
    ours = sorted(p.name for p in site.iterdir() if p.name.lower().startswith("mailrepl"))
    assert ours == ["mailrepl", "mailrepl-0.1.0.dist-info"]
    top_level = [p.name for p in (site / "mailrepl").iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert sorted(top_level) == ["gateway", "recovery", "shared"]
    assert (site / "mailrepl" / "shared" / "store" / "migrations" / "versions").is_dir()
    for name in ("shared", "gateway", "recovery"):
        r = _run(installed, py, "-c", f"import {name}", cwd=tmp_path)
        assert r.returncode != 0 and f"No module named '{name}'" in r.stderr
    ok = _run(installed, py, "-c", "import mailrepl.gateway.app, mailrepl.recovery.app, mailrepl.shared.store.db",
              cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_installed_command_and_module_entry(installed, tmp_path):
    for argv in ([str(installed / "bin" / "mailrepl"), "--help"],
                 [str(installed / "bin" / "python"), "-m", "mailrepl", "--help"]):
        r = _run(installed, *argv, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        for command in ("source", "recovery", "protect", "status", "cutover", "failback"):
            assert command in r.stdout
    # the roles are found through their entry points: check-config loads each role's settings
    examples = REPO / "deploy" / "examples"
    for role in ("source", "recovery"):
        r = _run(installed, str(installed / "bin" / "python"), "-m", "mailrepl", role, "check-config",
                 "--config", str(examples / f"{role}.toml"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("ok: ")


CAPTURE_STATE_TABLES = ("FolderState", "CatalogEntry", "IdMapEntry", "MidAlias")
CAPTURE_STATE_OWNERS = ("shared/capture_state/", "shared/store/models.py", "shared/store/migrations/")


def test_capture_state_tables_are_written_only_by_their_owner():
    """Folder cursors, the catalogue, the id map and id aliases have one writer: no insert,
    update, delete or new row of those models anywhere else in the product."""
    import re

    names = "|".join(CAPTURE_STATE_TABLES)
    writes = re.compile(rf"\b(?:insert|update|delete)\(\s*(?:{names})\b|\b(?:{names})\(|\b(?:{names})\.__table__")
    bad = []
    for folder in ("shared", "gateway", "recovery"):
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(CAPTURE_STATE_OWNERS):
                continue
            bad += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
                    if writes.search(line)]
    assert bad == []


def test_http_calls_only_in_the_two_clients():
    """The peer protocol has one client, the admin API another, the alerts' webhooks a third;
    nothing else speaks HTTP."""
    allowed = {"shared/protocol/peer_client.py", "shared/cli/admin_client.py", "shared/alerts/webhook.py"}
    bad = []
    for folder in ("shared", "gateway", "recovery"):
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    if any(m.split(".")[0] == "httpx" for m in mods) and rel not in allowed:
                        bad.append(f"{rel}:{node.lineno}")
    assert bad == []
