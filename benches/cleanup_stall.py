#!/usr/bin/env python3
"""Does one rollout's teardown stall another rollout's tool calls? (issue #12)

A demo child whose directory holds --files one-byte files in --dirs + 1 nested
directories is closed while another rollout's (ready) child is driven at
--rate requests/s on one keep-alive connection by the Rust open-loop probe
(benches/probe.rs; latency counts from each request's scheduled start).

Each round, for each deletion mode (random order), runs three windows of the
same length in random order:

  clean   the victim is closed --lead s into the window;
  quiet-a a window with no close (the reference);
  quiet-b another window with no close (the A/A control).

Every window is measured over the same span: from the close (at --lead) until
the victim's whole tree was gone in the clean window, plus --tail s (ringmux's
metrics are polled every 20 ms in all three windows alike, which is how "gone"
is seen). Per round: p99 and max of the clean window against quiet-a (ratio,
difference), and quiet-b against quiet-a the same way (A/A). Reported: medians
over rounds with bootstrap 95 % intervals, the close's own latency, the close
→ tree gone time, the close-teardown metric (child exit seen → directory moved
into the trash and close answered), and, with no traffic at all, ringmux's
deletion time against `rm -rf` of an identical tree on the same filesystem.

Modes: `full` = `--cleanup-pace off` (deletion at full speed, as before the
trash was paced), `paced` = `--cleanup-pace adaptive` (the default).

  python3 benches/cleanup_stall.py [--rounds 15] [--base-dir /dev/shm] [--sync]
      [--modes full,paced] [--json FILE]

Needs target/release/ringmux and target/release/examples/probe (built if
missing). Loopback only; bounded: rounds × modes × 3 windows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (  # noqa: E402  (same directory)
    PROBE, RINGMUX, boot, call, close_key, make_tree, pct_of, probe, ringmux_metrics,
    start_ringmux, window_latencies,
)

MODES = {"full": ["--cleanup-pace", "off"], "paced": ["--cleanup-pace", "adaptive"]}
POLL = 0.02


def trash_empty(m: dict) -> bool:
    return m.get("ringmux_trash_trees", 0) == 0 and m.get("ringmux_cleanups_in_flight", 0) == 0


def removed(m: dict) -> float:
    return m.get("ringmux_trash_removed_entries_total", 0)


class Poller:
    """Polls ringmux's metrics every 20 ms from start() to stop(); records when
    the trash was first seen empty after `armed` was set."""

    def __init__(self, admin: str, entries: int):
        self.admin = admin
        self.entries = entries
        self.removed0 = 0.0
        self.t0 = 0.0
        self.gone_at = None
        self.armed = threading.Event()
        self.stop_ev = threading.Event()
        self.th = None

    def start(self):
        self.t0 = time.perf_counter()
        self.gone_at = None
        self.armed.clear()
        self.stop_ev.clear()
        self.removed0 = removed(ringmux_metrics(self.admin))
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        while not self.stop_ev.wait(POLL):
            try:
                m = ringmux_metrics(self.admin)
            except OSError:
                continue
            # Gone: every entry of the tree deleted and nothing left.
            done = removed(m) - self.removed0 >= self.entries and trash_empty(m)
            if self.armed.is_set() and self.gone_at is None and done:
                self.gone_at = time.perf_counter() - self.t0

    def stop(self):
        self.stop_ev.set()
        self.th.join(timeout=5)


def wait_trash_empty(admin: str, since: float, entries: int, timeout: float = 120.0, poll: float = 0.005) -> float:
    """Waits until `entries` more than `since` were deleted and the trash is empty."""
    t = time.perf_counter()
    deadline = t + timeout
    while time.perf_counter() < deadline:
        m = ringmux_metrics(admin)
        if removed(m) - since >= entries and trash_empty(m):
            return time.perf_counter() - t
        time.sleep(poll)
    raise RuntimeError("the trash did not empty in time")


def new_victim(port: int, a) -> str:
    key = f"victim-{uuid.uuid4().hex}"
    call(port, key, "write_files", {"count": a.files, "dirs": a.dirs})
    if a.sync:
        os.sync()
    return key


def one_round(proc, a, workdir: str) -> dict:
    probe_key = a.probe_key
    victim = new_victim(proc.port, a)
    time.sleep(0.3)  # let the write's own after-effects pass before any window
    poller = Poller(proc.admin, a.files + a.dirs + 1)
    windows = ["clean", "quiet-a", "quiet-b"]
    random.shuffle(windows)
    series, side = {}, {}
    teardown_before = ringmux_metrics(proc.admin)
    for w in windows:
        path = os.path.join(workdir, f"series-{w}.txt")
        poller.start()
        if w == "clean":
            # Armed only after the close was sent: until then the trash is
            # empty too.
            threading.Timer(a.lead, poller.armed.set).start()
            r = probe(proc.port, probe_key, a.rate, a.window,
                      side_path=f"/vf/close?vf_state_secret={victim}", side_at_ms=int(a.lead * 1000),
                      series=path)
            side = r
            gone = poller.gone_at
        else:
            probe(proc.port, probe_key, a.rate, a.window, series=path)
        poller.stop()
        series[w] = path
        if w == "clean":
            if gone is None:
                # Not gone within the window: wait, and measure to the end.
                wait_trash_empty(proc.admin, poller.removed0, poller.entries)
                gone_s = None
            else:
                gone_s = gone - a.lead
    after = ringmux_metrics(proc.admin)
    end = a.window if gone_s is None else min(a.window, a.lead + gone_s + a.tail)
    span = (int(a.lead * 1e6), int(end * 1e6))
    lat = {w: window_latencies(series[w], span) for w in windows}
    p99 = {w: pct_of(v, 0.99) / 1e3 for w, v in lat.items()}
    mx = {w: max(v) / 1e3 for w, v in lat.items()}
    td_n = after["ringmux_close_teardown_seconds_count"] - teardown_before["ringmux_close_teardown_seconds_count"]
    td_s = after["ringmux_close_teardown_seconds_sum"] - teardown_before["ringmux_close_teardown_seconds_sum"]
    return {
        "order": windows,
        "span_s": (end - a.lead),
        "gone_s": gone_s,
        "close_ms": side["side_ms"],
        "teardown_ms": td_s / td_n * 1e3 if td_n else None,
        "p99_ms": p99,
        "max_ms": mx,
        "p99_ratio": p99["clean"] / p99["quiet-a"],
        "aa_p99_ratio": p99["quiet-b"] / p99["quiet-a"],
        "max_added_ms": mx["clean"] - mx["quiet-a"],
        "aa_max_added_ms": mx["quiet-b"] - mx["quiet-a"],
        "requests_in_span": len(lat["clean"]),
        "over_cap": after.get("ringmux_trash_over_cap_total", 0),
    }


def idle_speed(proc, a, base: str, reps: int) -> dict:
    """No traffic: ringmux's close → tree gone, against rm -rf of the same
    tree on the same filesystem, alternating."""
    ours, rmrf = [], []
    for i in range(reps):
        for what in random.sample(["ringmux", "rm"], 2):
            if what == "ringmux":
                victim = new_victim(proc.port, a)
                time.sleep(0.3)
                since = removed(ringmux_metrics(proc.admin))
                t = time.perf_counter()
                if close_key(proc.port, victim) != 200:
                    raise RuntimeError("close did not answer 200")
                wait_trash_empty(proc.admin, since, a.files + a.dirs + 1)
                ours.append(time.perf_counter() - t)
            else:
                tree = os.path.join(base, f"rmrf-{i}-{uuid.uuid4().hex[:6]}")
                make_tree(tree, a.files, a.dirs)
                if a.sync:
                    os.sync()
                time.sleep(0.3)
                t = time.perf_counter()
                subprocess.run(["rm", "-rf", tree], check=True)
                rmrf.append(time.perf_counter() - t)
    return {"ringmux_s": ours, "rm_rf_s": rmrf}


def summarize(rounds: list[dict]) -> dict:
    out = {}
    for k in ("p99_ratio", "aa_p99_ratio", "max_added_ms", "aa_max_added_ms", "close_ms", "teardown_ms",
              "span_s"):
        xs = [r[k] for r in rounds if r[k] is not None]
        lo, hi = boot(xs)
        out[k] = {"median": statistics.median(xs), "ci95": [lo, hi], "min": min(xs), "max": max(xs)}
    gone = [r["gone_s"] for r in rounds if r["gone_s"] is not None]
    out["gone_s"] = {"median": statistics.median(gone) if gone else None, "max": max(gone) if gone else None,
                     "not_gone_in_window": sum(1 for r in rounds if r["gone_s"] is None)}
    for w in ("clean", "quiet-a", "quiet-b"):
        out[f"p99_{w}_ms"] = statistics.median(r["p99_ms"][w] for r in rounds)
        out[f"max_{w}_ms"] = statistics.median(r["max_ms"][w] for r in rounds)
    out["over_cap_total"] = rounds[-1]["over_cap"]
    return out


def fmt_ci(d: dict, nd: int = 2) -> str:
    return f"{d['median']:.{nd}f} [{d['ci95'][0]:.{nd}f}, {d['ci95'][1]:.{nd}f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--dirs", type=int, default=20)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--window", type=float, default=4.5, help="probe window, s (must hold lead + gone + tail)")
    ap.add_argument("--lead", type=float, default=0.3, help="close sent this far into the window, s")
    ap.add_argument("--tail", type=float, default=0.5, help="measured past the tree's end, s")
    ap.add_argument("--modes", default="full,paced")
    ap.add_argument("--base-dir", default=None, help="filesystem to test (default: $TMPDIR)")
    ap.add_argument("--idle-reps", type=int, default=5)
    ap.add_argument("--sync", action="store_true", help="sync(2) after making each tree (written-back files)")
    ap.add_argument("--extra", default="", help="more ringmux flags, space-separated")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not os.path.exists(PROBE):
        subprocess.run(["cargo", "build", "--release", "-q", "--example", "probe"], check=True)
    if not os.path.exists(RINGMUX):
        sys.exit(f"{RINGMUX} is missing: cargo build --release")
    modes = [m for m in a.modes.split(",") if m]
    base = tempfile.mkdtemp(prefix="ringmux-stall-", dir=a.base_dir)
    workdir = tempfile.mkdtemp(prefix="ringmux-stall-series-")
    fs = subprocess.run(["stat", "-f", "-c", "%T", base], capture_output=True, text=True).stdout.strip()
    procs = {}
    results = {"config": {**vars(a), "filesystem": fs}, "modes": {}}
    try:
        for m in modes:
            os.makedirs(os.path.join(base, m))
            procs[m] = start_ringmux(os.path.join(base, m), [*MODES[m], *a.extra.split()])
        a.probe_key = f"probe-{uuid.uuid4().hex}"
        for m in modes:
            call(procs[m].port, a.probe_key, "echo", {"text": "warm"})
        rounds = {m: [] for m in modes}
        for i in range(a.rounds):
            for m in random.sample(modes, len(modes)):
                r = one_round(procs[m], a, workdir)
                rounds[m].append(r)
                print(f"round {i + 1}/{a.rounds} {m}: p99 ×{r['p99_ratio']:.2f} (A/A ×{r['aa_p99_ratio']:.2f}), "
                      f"max {r['max_added_ms']:+.2f} ms (A/A {r['aa_max_added_ms']:+.2f}), gone "
                      f"{r['gone_s'] if r['gone_s'] is None else round(r['gone_s'], 3)} s, close "
                      f"{r['close_ms']:.2f} ms", file=sys.stderr, flush=True)
        for m in modes:
            idle = idle_speed(procs[m], a, os.path.join(base, m), a.idle_reps)
            results["modes"][m] = {"summary": summarize(rounds[m]), "rounds": rounds[m], "idle": idle}
    finally:
        for p in procs.values():
            p.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{a.files} files in {a.dirs + 1} dirs, {fs}, bystander {a.rate:.0f} req/s, {a.rounds} rounds"
          f"{', synced' if a.sync else ''}")
    print("| mode | p99 ratio [95% CI] | A/A p99 ratio | max added ms | A/A max added ms | close → gone s "
          "(median / max) | close ms | teardown ms | idle: ringmux / rm -rf s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, res in results["modes"].items():
        s, idle = res["summary"], res["idle"]
        g = s["gone_s"]
        gone = "n/a" if g["median"] is None else f"{g['median']:.2f} / {g['max']:.2f}"
        if g["not_gone_in_window"]:
            gone += f" ({g['not_gone_in_window']} past the window)"
        print(f"| {m} | {fmt_ci(s['p99_ratio'])} | {fmt_ci(s['aa_p99_ratio'])} | {fmt_ci(s['max_added_ms'])} | "
              f"{fmt_ci(s['aa_max_added_ms'])} | {gone} | {s['close_ms']['median']:.2f} | "
              f"{s['teardown_ms']['median']:.3f} | {statistics.median(idle['ringmux_s']):.3f} / "
              f"{statistics.median(idle['rm_rf_s']):.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
