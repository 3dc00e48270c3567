#!/usr/bin/env python3
"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): the top frames by self time
and by total time, in percent of all samples.

    python tests/bench/profile_summary.py source.txt [--top 15]

A frame is ``function (file:line)`` as py-spy writes it; self time counts the samples whose
innermost frame it is, total time the samples that have it anywhere on the stack (shown for
mailrepl's own frames, without the thread and worker plumbing).
"""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")


def stop_profilers(procs: list[subprocess.Popen]) -> None:
    """End py-spy recorders (SIGINT makes them write their output), killing any that hang."""
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def _short(frame: str) -> str:
    """``name (path/to/file.py:12)`` -> ``name (file.py)``: lines differ between samples."""
    m = re.match(r"^(.*) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    name, path = m.groups()
    parts = Path(path).parts
    tail = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{name} ({tail})"


def _product(frame: str) -> bool:
    """A frame of mailrepl's own code (not the runtime's thread and worker plumbing)."""
    m = re.match(r"^.* \((.*?):\d+\)$", frame)
    path = m.group(1) if m else ""  # py-spy writes paths relative to their import root
    return path.split("/", 1)[0] in ("shared", "gateway", "recovery") and not path.startswith("shared/runtime/")


def summarise(text: str) -> tuple[int, Counter, Counter]:
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        stack, n = m.group(1), int(m.group(2))
        raw = [f for f in stack.split(";") if f]
        if not raw:
            continue
        samples += n
        own[_short(raw[-1])] += n
        for f in {_short(f) for f in raw if _product(f)}:
            total[f] += n
    return samples, own, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    samples, own, total = summarise(Path(a.profile).read_text())
    if not samples:
        print("no samples")
        return 1
    print(f"{samples} samples")
    print("self:")
    for frame, n in own.most_common(a.top):
        print(f"  {100 * n / samples:5.1f} %  {frame}")
    print("total, mailrepl's own frames:")
    for frame, n in total.most_common(a.top):
        print(f"  {100 * n / samples:5.1f} %  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
