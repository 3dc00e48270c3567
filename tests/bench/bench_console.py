#!/usr/bin/env python3
"""Console benchmark: the mailboxes page with 10,000 registered mailboxes. Not a test: it prints
figures (no assertions on time).

A primary and a standby Dovecot with ``--mailboxes`` users, both gateways as real processes;
the source gateway registers every user of the server (discovery), ``--protect`` of them are
protected and seeded (one message each). Then, signed in to the console with a viewer token:

- the requests the mailboxes page makes (``/ui/api/mailbox-search``: the first page of 50,
  sorted by lag, a search, the last page), each ``--runs`` times: with the status snapshot
  older than its 1 s (as at each refresh of the page every 3 s: the answer comes from the
  snapshot, which is reloaded in the background) and current;
- the gateway's CPU time per page request and per listing of every mailbox (from /proc, so
  the figure holds on a machine shared with other work);
- the overview, and the API's full list (``GET /api/v1/mailboxes``) for comparison;
- with Chromium installed: the mailboxes page in the browser, from navigation to a filled table.

    python tests/bench/bench_console.py [--mailboxes 10000] [--protect 100] [--runs 7] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.browser import browser_missing_reason, make_driver, sign_in  # noqa: E402
from tests.support.dovecot import DovecotServer  # noqa: E402
from tests.support.gateways import GatewayPair  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn, runs: int, *, stale: bool) -> list[float]:
    out = []
    for _ in range(runs):
        if stale:
            time.sleep(1.05)  # the status snapshot is older than its 1 s: this request has it reloaded
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:7.1f} ms, max {max(xs) * 1000:7.1f} ms ({len(xs)} runs)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mailboxes", type=int, default=10_000)
    ap.add_argument("--protect", type=int, default=100)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    users = [f"u{i:05d}" for i in range(args.mailboxes)]
    tmp = Path(tempfile.mkdtemp(prefix="mailrepl-bench-console-"))
    primary, standby = DovecotServer("bconsole-p", users), DovecotServer("bconsole-s", users)
    primary.start()
    standby.start()
    figures: dict[str, object] = {"mailboxes": args.mailboxes, "protected": args.protect}
    pair = GatewayPair(tmp, primary, standby, users=users, source_state=f"sqlite:///{tmp}/s.sqlite",
                       recovery_state=f"sqlite:///{tmp}/r.sqlite")
    try:
        for u in users[: args.protect]:
            primary.deliver(u, f"Subject: hello {u}\r\nMessage-ID: <{u}@x>\r\n\r\nhi\r\n".encode())
        pair.start()
        t0 = time.monotonic()
        while len(pair.status()) < args.mailboxes:
            if time.monotonic() - t0 > 300:
                raise SystemExit("bench_console: discovery did not register every mailbox")
            time.sleep(0.5)
        pair.protect(*users[: args.protect])
        pair.wait_synced(users[: args.protect], timeout=600)
        with pair.source.api() as c:
            viewer = c.post("/api/v1/tokens", json={"name": "bench-viewer", "role": "viewer"}).json()["token"]
        ui = httpx.Client(base_url=pair.source.url, timeout=60)
        page = ui.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        assert ui.post("/ui/login", data={"token": viewer, "csrf": csrf}).status_code in (200, 303)
        assert ui.get("/ui/session").status_code == 200

        def get(path: str, **params):
            def call():
                r = ui.get(path, params=params)
                r.raise_for_status()
                return r.json()
            return call

        first = get("/ui/api/mailbox-search", limit=50)()
        assert first["total"] == args.mailboxes, first["total"]
        last_offset = args.mailboxes - 50
        cases = {
            "page 1 (50 rows)": get("/ui/api/mailbox-search", limit=50),
            "sorted by lag": get("/ui/api/mailbox-search", limit=50, sort="lag", order="desc"),
            "search 'u09'": get("/ui/api/mailbox-search", limit=50, q="u09"),
            "last page": get("/ui/api/mailbox-search", limit=50, offset=last_offset),
            "overview": get("/ui/api/overview"),
        }
        print(f"console, {args.mailboxes:,} registered mailboxes ({args.protect} protected), source gateway:")
        pid = pair.source.proc.pid
        for name, fn in cases.items():
            stale, warm = timed(fn, args.runs, stale=True), timed(fn, args.runs, stale=False)
            figures[name] = {"snapshot_stale": stale, "snapshot_current": warm}
            print(f"  {name:18s} snapshot stale: {summary(stale)} | current: {summary(warm)}")
        # what one listing of every mailbox costs the gateway (a background reload of the snapshot,
        # the alert round, GET /api/v1/mailboxes): CPU seconds of the gateway process, idle baseline off
        time.sleep(1.0)
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        time.sleep(3.0)
        idle = (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        for _ in range(args.runs):
            cases["page 1 (50 rows)"]()
        page_cpu = (cpu_seconds(pid) - c0 - idle * (time.perf_counter() - t0)) / args.runs
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        for _ in range(args.runs):
            pair.status()
        list_cpu = (cpu_seconds(pid) - c0 - idle * (time.perf_counter() - t0)) / args.runs
        figures["gateway CPU per page request"], figures["gateway CPU per full listing"] = page_cpu, list_cpu
        figures["gateway CPU idle (s/s)"] = idle
        print(f"  gateway CPU: {page_cpu * 1000:.0f} ms per page request, {list_cpu * 1000:.0f} ms per full listing "
              f"(GET /api/v1/mailboxes), {idle * 1000:.0f} ms/s in the background")
        print(f"  load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        full = timed(lambda: pair.status(), args.runs, stale=False)
        figures["GET /api/v1/mailboxes (full list)"] = full
        print(f"  {'API full list':18s} {summary(full)}")
        size = len(ui.get("/ui/api/mailbox-search", params={"limit": 50}).content)
        print(f"  one page is {size:,} bytes of JSON")
        figures["page_bytes"] = size

        reason = browser_missing_reason()
        if reason:
            print(f"  browser: not measured ({reason})")
        else:
            driver = make_driver()
            try:
                sign_in(driver, pair.source.url, viewer)
                loads = []
                for _ in range(args.runs):
                    driver.get(pair.source.url + "/ui/#/overview")
                    time.sleep(1.05)
                    t0 = time.perf_counter()
                    driver.get(pair.source.url + "/ui/#/mailboxes")
                    while driver.execute_script(
                            "return document.querySelectorAll('#mb-table tbody tr').length") < 50:
                        time.sleep(0.01)
                    loads.append(time.perf_counter() - t0)
                figures["browser page load"] = loads
                print(f"  {'in Chromium':18s} navigation to a filled table: {summary(loads)}")
            finally:
                driver.quit()
    finally:
        pair.stop()
        primary.cleanup()
        standby.cleanup()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
