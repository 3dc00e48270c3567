"""``python -m tests.faults [--full] [--seed N] [--table FILE] [pytest options]``: run the fault suite.

The same as ``MAILREPL_FAULTS=full MAILREPL_FAULTS_SEED=N MAILREPL_FAULTS_TABLE=FILE python -m
pytest tests/faults -s``; without ``--full`` the CI subset runs. Needs root and Debian's Dovecot.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="at least 20 faults per scenario (long)")
    p.add_argument("--seed", type=int, help="reproduce a run (default: the suite's fixed seed)")
    p.add_argument("--table", help="also write the result table (Markdown) to this file")
    args, rest = p.parse_known_args(argv)
    os.environ["MAILREPL_FAULTS"] = "full" if args.full else "ci"
    if args.seed is not None:
        os.environ["MAILREPL_FAULTS_SEED"] = str(args.seed)
    if args.table:
        os.environ["MAILREPL_FAULTS_TABLE"] = str(Path(args.table).resolve())
    here = Path(__file__).resolve().parent
    return int(pytest.main(["-p", "no:cacheprovider", "-s", "-q", str(here), *rest]))


if __name__ == "__main__":
    sys.exit(main())
