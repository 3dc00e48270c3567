#!/usr/bin/env python3
"""WAN benchmark: seeding the DR site across a shaped link, mailrepl against a WAN-tuned dsync.

Not a test: it prints figures (the machines are noisy, so nothing here asserts a speed).

The two-site rig (``tests/support/two_site.py``): the primary Dovecot and the source gateway in
the root network namespace, the standby Dovecot and the recovery gateway in their own, joined by a
veth pair. ``shaped`` link: tbf at ``--rate`` Mbit/s on both ends (default 100) and ``--delay`` ms
each way (default 20, a 40 ms round trip) from the rig's userspace delay relay; ``unshaped``:
the plain veth and the relays forwarding without delay.

Two corpora, each in a mailbox of its own on the primary (``wan_corpus.py`` says exactly how they
are made): ``gen``, the handbook generator's mail as ``bench_seed.py`` makes it (``--count``,
default 2,000 messages, about 80 MB), and ``real``, 2,000 messages of the realistic public corpus.

Per corpus and link, alternating (odd runs dsync first, even runs mailrepl first), ``--runs``
runs of each (default 2), every run from an empty standby:

- ``dsync``: ``doveadm backup -R`` over imapc, run at the DR site (inside the namespace, with the
  standby's configuration, so it writes the standby's mail files directly) pulling from the
  primary across the same link through a delay relay on the link's root address (delayed like
  the gateways' traffic), tuned for the WAN: ``mail_prefetch_count = --prefetch`` (default 400),
  ``imapc_features = rfc822.size fetch-headers``. Time: the doveadm process's wall time.
- ``mailrepl``: both gateways as processes, state and DR blob store removed and both restarted
  before the run and the source's pre-flight check of the primary run (start-up and the check,
  which runs once per server at the first protection, not timed); status polled every 0.1 s;
  time from protecting the mailbox until the source gateway
  reports it replicating with both queues empty and everything captured applied.

After each run the standby is compared with the primary message by message (SHA-256 of
BODY[], flags, internal date) through the namespace's loopback. Printed per run: wall time,
msgs/s, the bytes that crossed the link (the root veth end's kernel counters, both directions,
Ethernet frames), the gateways' CPU; per link a table of medians.

``--cap MBIT`` instead measures the link rate cap on the shaped link (``wan_cap.py``).

    python tests/bench/bench_wan.py [--runs 2] [--links shaped,unshaped] [--corpora gen,real] [--quick] [--timeline]
    python tests/bench/bench_wan.py --cap 20 [--quick]

Needs root (network namespaces), Debian's dovecot-imapd/dovecot-lmtpd, iproute2 and nftables.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.timeline import print_timeline  # noqa: E402
from tests.bench.wan_corpus import (  # noqa: E402
    cpu_seconds, fill_generated, fill_public, harness_dir, mailbox_size, reset_mailrepl, wait_synced,
)
from tests.support.dovecot import find_binary  # noqa: E402
from tests.support.mailcompare import assert_same_mailbox  # noqa: E402
from tests.support.two_site import DelayRelay, TwoSiteRig  # noqa: E402

CORPORA = ("gen", "real")
LINKS = ("shaped", "unshaped")
TOOLS = ("dsync", "mailrepl")


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def link_bytes(rig: TwoSiteRig) -> int:
    crossed = rig.bytes_crossed()
    return crossed["to_ns"] + crossed["from_ns"]


def run_dsync(rig: TwoSiteRig, relay: DelayRelay, user: str, prefetch: int, log: Path) -> dict:
    for u in rig.users:
        rig.standby.wipe_user(u)
    cmd = [*rig.link.prefix, find_binary("doveadm"), "-c", str(rig.standby.config),
           "-o", f"imapc_host={relay.host}", "-o", f"imapc_port={relay.port}", "-o", f"imapc_user={user}",
           "-o", f"imapc_password={rig.primary.user_password}", "-o", "imapc_ssl=no",
           "-o", "imapc_features=rfc822.size fetch-headers", "-o", f"mail_prefetch_count={prefetch}",
           "backup", "-R", "-u", user, "imapc:"]
    env = {"PATH": os.environ["PATH"], "HOME": str(log.parent)}
    bytes0, t0 = link_bytes(rig), time.monotonic()
    with log.open("ab") as out:
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=1800)
    secs = time.monotonic() - t0
    return {"seconds": secs, "link_bytes": link_bytes(rig) - bytes0, "cpu": ""}


def run_mailrepl(rig: TwoSiteRig, user: str, timeline: bool = False) -> dict:
    reset_mailrepl(rig)
    pids = (rig.pair.source.proc.pid, rig.pair.recovery.proc.pid)
    cpu0 = [cpu_seconds(p) for p in pids]
    bytes0, t0 = link_bytes(rig), time.monotonic()
    rig.pair.protect(user)
    polls: list | None = [] if timeline else None
    wait_synced(rig, user, timeout=1800, timeline=polls)
    secs = time.monotonic() - t0
    print_timeline(polls or [], indent="      ")
    cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0)]
    return {"seconds": secs, "link_bytes": link_bytes(rig) - bytes0, "cpu": f"{cpu[0]:.1f} / {cpu[1]:.1f}",
            "wire_bytes": rig.pair.wire_bytes()}


def set_link(rig: TwoSiteRig, relay: DelayRelay, link: str, rate: float, delay: float) -> None:
    rig.clear()
    relay.command("delay 0 0")
    if link == "shaped":
        rig.set_rate(rate)
        rig.set_delay(delay)
        relay.command(f"delay {delay:g} 0")


def measure_link(rig: TwoSiteRig, link: str, corpora: dict, args, relay: DelayRelay) -> list[dict]:
    rows = []
    for corpus, (user, msgs, size) in corpora.items():
        for run in range(args.runs):
            order = TOOLS if run % 2 == 0 else TOOLS[::-1]
            for tool in order:
                before = load()
                if tool == "dsync":
                    result = run_dsync(rig, relay, user, args.prefetch, rig.tmp / "dsync.log")
                else:
                    result = run_mailrepl(rig, user, timeline=args.timeline)
                assert_same_mailbox(rig.primary, rig.standby_local, user)
                row = {"link": link, "corpus": corpus, "tool": tool, "run": run + 1, "messages": msgs, "bytes": size,
                       "load_before": before, **result}
                rows.append(row)
                print(f"  {link:8s} {corpus:4s} run {run + 1} {tool:8s} {result['seconds']:7.2f} s "
                      f"{msgs / result['seconds']:6.0f} msg/s  link {result['link_bytes'] / 1e6:6.1f} MB  "
                      f"CPU src/rec {result['cpu'] or '-':>11s}  load {before}  standby equal: yes", flush=True)
    return rows


def table(rows: list[dict], link: str, runs: int) -> str:
    lines = [f"\n{link} link",
             "| corpus | tool | runs (s) | median s | msg/s | MB/s of mail | link MB (median) | mailrepl / dsync time |",
             "|---|---|---|---|---|---|---|---|"]
    medians = {}
    for corpus in CORPORA:
        for tool in TOOLS:
            picked = [r for r in rows if r["corpus"] == corpus and r["tool"] == tool and r["link"] == link]
            if not picked:
                continue
            med = statistics.median(r["seconds"] for r in picked)
            medians[corpus, tool] = med
            msgs, size = picked[0]["messages"], picked[0]["bytes"]
            ratio = ""
            if tool == "mailrepl" and (corpus, "dsync") in medians:
                ratio = f"{med / medians[corpus, 'dsync']:.2f}"
            times = ", ".join(f"{r['seconds']:.2f}" for r in picked)
            lines.append(f"| {corpus} ({msgs} msgs, {size / 1e6:.1f} MB) | {tool} | "
                         f"{times} | {med:.2f} | {msgs / med:.0f} | "
                         f"{size / 1e6 / med:.1f} | {statistics.median(r['link_bytes'] for r in picked) / 1e6:.1f} | "
                         f"{ratio} |")
    return "\n".join(lines)


def compare(args, work: Path) -> list[dict]:
    harness = harness_dir(args.harness)
    users = {"gen": "gen", "real": "real"}
    with TwoSiteRig(work / "rig", [users[c] for c in args.corpora]) as rig:
        relay = rig.primary_imap_relay()
        try:
            corpora = {}
            for corpus in args.corpora:
                t0 = time.monotonic()
                note = ""
                if corpus == "gen":
                    fill_generated(rig, users[corpus], args.count, harness)
                else:
                    stored, refused = fill_public(rig, users[corpus], args.public_count)
                    note = f", {refused} refused by the primary" if refused else ""
                msgs, size = mailbox_size(rig, users[corpus])
                corpora[corpus] = (users[corpus], msgs, size)
                print(f"corpus {corpus}: {msgs} messages, {size / 1e6:.1f} MB on the primary "
                      f"(filled in {time.monotonic() - t0:.1f} s{note})", flush=True)
            rows = []
            for link in args.links:
                set_link(rig, relay, link, args.rate, args.delay)
                shape = (f"tbf {args.rate:g} Mbit/s both ends, {args.delay:g} ms each way" if link == "shaped"
                         else "plain veth, relays without delay")
                print(f"\n== {link} link ({shape}); dsync mail_prefetch_count={args.prefetch}; "
                      f"load average {load()} on {os.cpu_count()} cores", flush=True)
                rows += measure_link(rig, link, corpora, args, relay)
                print(table(rows, link, args.runs), flush=True)
            print(f"\nload average at the end: {load()}")
            return rows
        finally:
            relay.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2, help="runs of each tool per corpus and link (default 2)")
    ap.add_argument("--count", type=int, default=2000, help="generated messages (default 2000)")
    ap.add_argument("--public-count", type=int, default=2000, help="public corpus messages (default 2000)")
    ap.add_argument("--corpora", default="gen,real", help="comma-separated: gen, real")
    ap.add_argument("--links", default="shaped,unshaped", help="comma-separated: shaped, unshaped")
    ap.add_argument("--rate", type=float, default=100.0, help="shaped link: Mbit/s (default 100)")
    ap.add_argument("--delay", type=float, default=20.0, help="shaped link: ms each way (default 20)")
    ap.add_argument("--prefetch", type=int, default=400, help="dsync's mail_prefetch_count (default 400)")
    ap.add_argument("--cap", type=float, help="measure the link rate cap at this many Mbit/s instead (wan_cap.py)")
    ap.add_argument("--live-interval", type=float, default=1.0, help="--cap: seconds between live deliveries")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 messages per corpus, one run each")
    ap.add_argument("--harness", help="directory holding make-corpus.py (default: ../shared/harness)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--timeline", action="store_true",
                    help="print each mailrepl run's progress at every status poll (captured, queues, applied)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    args.corpora = [c.strip() for c in args.corpora.split(",") if c.strip()]
    args.links = [x.strip() for x in args.links.split(",") if x.strip()]
    if not args.corpora or set(args.corpora) - set(CORPORA):
        ap.error("--corpora takes gen and/or real")
    if not args.links or set(args.links) - set(LINKS):
        ap.error("--links takes shaped and/or unshaped")
    if args.quick:
        args.count, args.public_count, args.runs = 200, 200, 1
    work = Path(tempfile.mkdtemp(prefix="mailrepl-bench-wan-"))
    print(f"bench_wan: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} cores, load average {load()}")
    try:
        if args.cap:
            from tests.bench.wan_cap import measure_cap
            figures = measure_cap(args, work)
        else:
            figures = compare(args, work)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
