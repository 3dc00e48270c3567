"""``bench_wan.py --cap MBIT``: the link rate cap on the shaped two-site link, with live mail flowing.

1. The two-site rig with the shaped link (tbf ``--rate`` Mbit/s both ends, ``--delay`` ms each
   way) and the source gateway's ``[link] rate_mbit = MBIT`` (``live_share_percent`` default).
2. Mailbox ``live`` gets 20 small messages, is protected and seeded; mailbox ``gen`` gets the
   generated corpus (``--count``, as ``bench_seed.py`` makes it).
3. ``gen`` is protected. While it seeds, one message is delivered by LMTP to ``live`` every
   ``--live-interval`` s (default 1), each with a unique Message-ID, and the link's interface
   counters are read every second.
4. Rate: bytes sent to the DR site (the root veth end's ``tx_bytes``: Ethernet frames, so TCP/IP
   headers count) per second over the seed's active span (from the first to the last second that
   carried at least half the cap), mean and the spread of consecutive 5 s windows, each against
   the cap. Also the bytes the gateway let through the cap (``/healthz``: payload only).
5. Live lag: from the LMTP server's acceptance (the 250 reply to DATA) to the moment an IMAP
   session on the standby first showed the message (``tests/support/arrival_watch.py``, inside
   the namespace on its loopback, so it neither crosses nor loads the link): p50 / p99 / max.
   Only deliveries made while the seed was under way are counted.
6. Both mailboxes are compared with the primary afterwards.
"""
from __future__ import annotations

import json
import os
import smtplib
import statistics
import threading
import time
from pathlib import Path

import httpx

from tests.bench.wan_corpus import LinkSampler, fill_generated, harness_dir, mailbox_size, wait_synced
from tests.support.arrival_watch import ArrivalWatch
from tests.support.dovecot import lmtp_recipient, lmtp_send
from tests.support.gateways import ADMIN_TOKEN
from tests.support.mailcompare import assert_same_mailbox
from tests.support.netns import run, socket_in_netns
from tests.support.two_site import TwoSiteRig

__all__ = ["measure_cap"]

WINDOW = 5  # seconds per window of the spread
LIVE_USER, SEED_USER = "live", "gen"


def live_message(i: int) -> tuple[str, bytes]:
    msgid = f"<cap.live.{i}.{os.getpid()}@bench.example.org>"
    return msgid, (f"From: bench@example.org\r\nTo: {LIVE_USER}@example.org\r\nSubject: live {i}\r\n"
                   f"Message-ID: {msgid}\r\nDate: Sun, 6 Dec 2026 10:00:00 +0000\r\n\r\n"
                   f"a live change while a seed is throttled, number {i}\r\n").encode()


class LiveDeliveries:
    """One delivery to ``live`` every ``interval`` s on one LMTP session, in a thread;
    ``accepted``: Message-ID -> ``time.monotonic()`` of the 250 reply to DATA."""

    def __init__(self, rig: TwoSiteRig, interval: float) -> None:
        self.rig, self.interval = rig, interval
        self.accepted: dict[str, float] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-deliveries", daemon=True)

    def _run(self) -> None:
        try:
            with smtplib.LMTP(self.rig.primary.host, self.rig.primary.lmtp_port, timeout=60) as lmtp:
                start, i = time.monotonic(), 0
                while not self._stop.wait(max(0.0, start + i * self.interval - time.monotonic())):
                    msgid, raw = live_message(i)
                    code, reply = lmtp_send(lmtp, lmtp_recipient(LIVE_USER, None), raw)
                    if code != 250:
                        raise RuntimeError(f"LMTP refused a live delivery: {code} {reply!r}")
                    self.accepted[msgid] = time.monotonic()
                    i += 1
        except BaseException as exc:  # reported by the caller, which stops the run
            self.error = exc

    def __enter__(self) -> LiveDeliveries:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def qdisc_drops(rig: TwoSiteRig) -> int:
    """Packets the root end's tbf dropped so far (a drop is a retransmission on the link)."""
    out = run("tc", "-s", "-j", "qdisc", "show", "dev", rig.link.root_dev).stdout
    return sum(int(q.get("drops", 0)) for q in json.loads(out or "[]"))


def link_status(rig: TwoSiteRig) -> dict:
    r = httpx.get(rig.source_url + "/healthz", timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    r.raise_for_status()
    return r.json()["link"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def rate_figures(samples: list[tuple[float, int, int]], cap_bps: float) -> dict:
    """Per-second rates from the sampler; the active span; its mean and 5 s windows."""
    per_second = [((b[1] - a[1]) / (b[0] - a[0]), (b[2] - a[2]) / (b[0] - a[0]), a[0], b[0])
                  for a, b in zip(samples, samples[1:]) if b[0] > a[0]]
    active = [i for i, (to_dr, *_rest) in enumerate(per_second) if to_dr * 8 >= cap_bps / 2]
    if not active:
        return {"active_seconds": 0}
    span = per_second[active[0]:active[-1] + 1]
    seconds = span[-1][3] - span[0][2]
    to_dr = sum(s[0] * (s[3] - s[2]) for s in span)
    from_dr = sum(s[1] * (s[3] - s[2]) for s in span)
    windows = []
    for i in range(0, len(span) - WINDOW + 1, WINDOW):
        part = span[i:i + WINDOW]
        windows.append(sum(s[0] * (s[3] - s[2]) for s in part) * 8 / (part[-1][3] - part[0][2]))
    mean = to_dr * 8 / seconds
    return {"active_seconds": seconds, "mean_bps": mean, "from_dr_bps": from_dr * 8 / seconds,
            "mean_off_percent": (mean / cap_bps - 1) * 100, "windows_bps": windows,
            "per_second_bps": [s[0] * 8 for s in span]}


def measure_cap(args, work: Path) -> dict:
    harness = harness_dir(args.harness)
    cap_bps = args.cap * 1e6
    extra = f"\n[link]\nrate_mbit = {args.cap:g}\n"
    with TwoSiteRig(work / "rig", [SEED_USER, LIVE_USER], source_extra=extra) as rig:
        rig.set_rate(args.rate)
        rig.set_delay(args.delay)
        rig.primary.deliver_many(LIVE_USER, [live_message(-1 - i)[1] for i in range(20)])
        fill_generated(rig, SEED_USER, args.count, harness)
        msgs, size = mailbox_size(rig, SEED_USER)
        print(f"corpus gen: {msgs} messages, {size / 1e6:.1f} MB; link: tbf {args.rate:g} Mbit/s, "
              f"{args.delay:g} ms each way; cap {args.cap:g} Mbit/s", flush=True)
        rig.pair.protect(LIVE_USER)
        wait_synced(rig, LIVE_USER, timeout=120)
        inbox = rig.standby.base / "mail" / LIVE_USER / "mdbox" / "mailboxes" / "INBOX" / "dbox-Mails"
        watch = ArrivalWatch(lambda _u: socket_in_netns(rig.link.netns, ("127.0.0.1", rig.standby.imap_port)),
                             [LIVE_USER], {LIVE_USER: inbox}, rig.standby.master_user, rig.standby.master_password)
        watch.start()
        try:
            print(f"load average before the seed {'/'.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
            link0, drops0 = link_status(rig), qdisc_drops(rig)
            with LinkSampler(rig) as sampler, LiveDeliveries(rig, args.live_interval) as live:
                t0 = time.monotonic()
                rig.pair.protect(SEED_USER)
                wait_synced(rig, SEED_USER, timeout=1800)
                seed_s = time.monotonic() - t0
                during = dict(live.accepted)
            if live.error:
                raise SystemExit(f"bench_wan: live deliveries failed: {live.error}")
            link1 = link_status(rig)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(m in watch.seen for m in live.accepted):
                time.sleep(0.2)
        finally:
            watch.stop()
        load_end = "/".join(f"{x:.2f}" for x in os.getloadavg())
        assert_same_mailbox(rig.primary, rig.standby_local, SEED_USER)
        assert_same_mailbox(rig.primary, rig.standby_local, LIVE_USER)
        lags = [watch.seen[m] - t for m, t in during.items() if m in watch.seen]
        unseen = len(during) - len(lags)
        rates = rate_figures(sampler.samples, cap_bps)
        through = (link1["bulk_bytes"] + link1["live_bytes"]) - (link0["bulk_bytes"] + link0["live_bytes"])
        to_dr_total = sampler.samples[-1][1] - sampler.samples[0][1]
        drops = qdisc_drops(rig) - drops0
        figures = {"cap_mbit": args.cap, "messages": msgs, "bytes": size, "seed_s": seed_s, "load_end": load_end,
                   "through_cap_bytes": through, "to_dr_bytes": to_dr_total, "tbf_drops": drops, "live_bytes": link1["live_bytes"] - link0["live_bytes"],
                   "waited_s": link1["waited_seconds"] - link0["waited_seconds"], "live_deliveries": len(during),
                   "live_unseen": unseen, "lag_p50_s": percentile(lags, 0.5), "lag_p99_s": percentile(lags, 0.99),
                   "lag_max_s": max(lags) if lags else float("nan"), **rates}
        report(figures, cap_bps)
        return figures


def report(f: dict, cap_bps: float) -> None:
    print(f"\nseed of {f['messages']} messages ({f['bytes'] / 1e6:.1f} MB) under a {f['cap_mbit']:g} Mbit/s cap: "
          f"standby equal after {f['seed_s']:.1f} s; {f['through_cap_bytes'] / 1e6:.1f} MB let through the cap "
          f"({f['live_bytes'] / 1e3:.0f} kB of it live), senders waited {f['waited_s']:.1f} s; "
          f"{f['to_dr_bytes'] / 1e6:.1f} MB crossed the link to DR meanwhile "
          f"({f['to_dr_bytes'] / max(1, f['through_cap_bytes']):.3f}x what the cap counted; "
          f"packets the link's tbf dropped toward DR: {f['tbf_drops']})")
    if not f.get("active_seconds"):
        print("no second carried half the cap: no rate to show")
    else:
        w = f["windows_bps"]
        print(f"rate to DR on the link over the active {f['active_seconds']:.1f} s: mean {f['mean_bps'] / 1e6:.2f} Mbit/s "
              f"({f['mean_off_percent']:+.1f} % from the cap; target within 5 %); back from DR "
              f"{f['from_dr_bps'] / 1e6:.2f} Mbit/s")
        if w:
            off = max(abs(x / cap_bps - 1) for x in w) * 100
            print(f"{len(w)} windows of {WINDOW} s: min {min(w) / 1e6:.2f}, max {max(w) / 1e6:.2f}, "
                  f"stdev {statistics.pstdev(w) / 1e6:.2f} Mbit/s; farthest window {off:.1f} % from the cap "
                  f"[{', '.join(f'{x / 1e6:.1f}' for x in w)}]")
        print("per second (Mbit/s): " + " ".join(f"{x / 1e6:.1f}" for x in f["per_second_bps"]))
    print(f"live deliveries during the seed: {f['live_deliveries']}, lag p50 {f['lag_p50_s']:.2f} s, "
          f"p99 {f['lag_p99_s']:.2f} s, max {f['lag_max_s']:.2f} s (target within 2 s); never seen {f['live_unseen']}")
    print(f"load average at the end {f['load_end']}")
