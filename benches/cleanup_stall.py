#!/usr/bin/env python3
"""Does one rollout's teardown stall another rollout's tool calls?

The seed's experiment, on ringmux: a child whose directory holds 20,000 one-byte
files in 21 directories is closed while another rollout's (ready) child is
driven at a steady request rate. For each of N paired runs we measure, in the
same run and on the same connection:

* baseline window: the probe rollout's request latencies with no cleanup
  (measured by the Rust open-loop probe, benches/probe.rs);
* cleanup window: the same, while the victim is closed (close sent shortly
  after the window starts);

and a third window with `rm -rf` of an identical tree running beside the
probe in another process (the control: what deleting such a tree costs this
machine whoever does it); report p50/p99/max of the windows, their ratios, the workers' event-loop
lag (heartbeat lateness, from the admin metrics, reset per window), the
cleanup's wall time (ringmux's own metric, and the close request's latency),
and `rm -rf` of an identical tree made the same way, in the same run.
A second quiet window compared with the first (`aa_*`) shows how far two
windows with no cleanup at all differ here: the noise floor of the ratios.

Usage: benches/cleanup_stall.py [--bin target/release/ringmux] [--runs 3]
       [--files 20000] [--dirs 20] [--rate 500] [--window 1.5]
Prints a JSON summary (medians over runs) and, with --json FILE, writes it.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from harness import make_tree  # same directory: the benchmark harness
from harness import ringmux_metrics as metrics
from harness import worker_lag


def call(conn, key, name, args):
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": args}}
    ).encode()
    conn.request(
        "POST", f"/mcp?vf_state_secret={key}", body=body, headers={"content-type": "application/json"}
    )
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit(f"unexpected {r.status}: {data[:200]!r}")
    return data


def probe_window(probe, port, key, rate, window, side_path=None, side_at_ms=0):
    """Runs the Rust open-loop probe (benches/probe.rs) on one keep-alive
    connection: requests scheduled every 1/rate s, latency measured from the
    scheduled start. `side_path` is requested once from another connection
    `side_at_ms` into the window (the close of the victim)."""
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}
    )
    cmd = [
        probe, "--addr", f"127.0.0.1:{port}", "--path", f"/mcp?vf_state_secret={key}",
        "--body", body, "--rate", str(rate), "--secs", str(window),
    ]
    if side_path:
        cmd += ["--side-url", side_path, "--side-at-ms", str(side_at_ms)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=window + 120)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/ringmux")
    ap.add_argument("--probe", default="target/release/examples/probe")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--dirs", type=int, default=20)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--window", type=float, default=1.5)
    ap.add_argument("--json")
    ap.add_argument("--cleanup-workers", type=int, default=2)
    ap.add_argument("--cleanup-cpus", default="auto")
    ap.add_argument(
        "--sync",
        action="store_true",
        help="sync(2) after creating each tree (unlinking written-back files is much slower on ext4)",
    )
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    probe_bin = os.path.abspath(a.probe)
    if not os.path.exists(probe_bin):
        subprocess.run(["cargo", "build", "--release", "-q", "--example", "probe"], check=True)
    base = tempfile.mkdtemp(prefix="ringmux-stall-")
    p = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--base-dir", base, "--demo",
         "--cleanup-workers", str(a.cleanup_workers), "--cleanup-cpus", a.cleanup_cpus],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    port = admin = None
    deadline = time.time() + 20
    while time.time() < deadline and port is None:
        line = p.stdout.readline()
        m = re.search(r"metrics on http://([\d.:]+)/metrics", line)
        if m:
            admin = m.group(1)
        m = re.search(r"listening on http://[\d.]+:(\d+)", line)
        if m:
            port = int(m.group(1))
    if port is None or admin is None:
        p.kill()
        sys.exit("ringmux did not start")
    runs = []
    try:
        probe = f"probe-{uuid.uuid4().hex}"
        for run in range(a.runs):
            victim = f"victim-{uuid.uuid4().hex}"
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            call(c, victim, "write_files", {"count": a.files, "dirs": a.dirs})
            c.close()
            if a.sync:
                os.sync()
            before = metrics(admin)  # also resets the per-window lag gauges
            quiet = probe_window(probe_bin, port, probe, a.rate, a.window)
            base_lag = worker_lag(metrics(admin))
            # A/A control: a second quiet window, compared with the first the
            # same way the cleanup window is. It shows the noise floor of the
            # ratio and the max on this machine.
            quiet2 = probe_window(probe_bin, port, probe, a.rate, a.window)
            metrics(admin)
            clean = probe_window(
                probe_bin, port, probe, a.rate, a.window,
                side_path=f"/vf/close?vf_state_secret={victim}",
                side_at_ms=int(a.window * 200),
            )
            m = metrics(admin)
            clean_lag = worker_lag(m)
            if m["ringmux_cleanup_duration_seconds_count"] <= before["ringmux_cleanup_duration_seconds_count"]:
                sys.exit("the victim's cleanup did not happen in the window")

            # Control: the same deletion done by `rm -rf` in another process
            # while the probe runs (how much does deleting such a tree disturb
            # this machine at all, whoever does it?). Its wall time is the
            # reference for the cleanup's.
            tree = os.path.join(base, f"rmrf-{run}")
            make_tree(tree, a.files, a.dirs)
            if a.sync:
                os.sync()
            rm_box = {}

            def rm_later():
                time.sleep(a.window * 0.2)
                t = time.perf_counter()
                subprocess.run(["rm", "-rf", tree], check=True)
                rm_box["s"] = time.perf_counter() - t

            th = threading.Thread(target=rm_later)
            th.start()
            beside = probe_window(probe_bin, port, probe, a.rate, a.window)
            th.join(timeout=120)
            rmrf = rm_box["s"]

            r = {
                "baseline_p50_ms": quiet["p50_us"] / 1e3,
                "baseline_p99_ms": quiet["p99_us"] / 1e3,
                "baseline_max_ms": quiet["max_us"] / 1e3,
                "cleanup_p50_ms": clean["p50_us"] / 1e3,
                "cleanup_p99_ms": clean["p99_us"] / 1e3,
                "cleanup_max_ms": clean["max_us"] / 1e3,
                "baseline_worker_lag_max_ms": base_lag * 1e3,
                "cleanup_worker_lag_max_ms": clean_lag * 1e3,
                "close_latency_s": clean["side_ms"] / 1e3,
                "cleanup_wall_s": m["ringmux_cleanup_duration_seconds_sum"]
                - before["ringmux_cleanup_duration_seconds_sum"],
                "rm_rf_s": rmrf,
                "rm_rf_beside_p99_ms": beside["p99_us"] / 1e3,
                "rm_rf_beside_max_ms": beside["max_us"] / 1e3,
            }
            r["p99_ratio"] = r["cleanup_p99_ms"] / r["baseline_p99_ms"]
            r["max_added_ms"] = r["cleanup_max_ms"] - r["baseline_max_ms"]
            r["aa_p99_ratio"] = quiet2["p99_us"] / quiet["p99_us"]
            r["aa_max_added_ms"] = (quiet2["max_us"] - quiet["max_us"]) / 1e3
            runs.append(r)
            print(f"run {run + 1}/{a.runs}: " + json.dumps({k: round(v, 3) for k, v in r.items()}), file=sys.stderr)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
        shutil.rmtree(base, ignore_errors=True)
    summary = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    summary["runs"] = len(runs)
    summary["files"] = a.files
    summary["dirs"] = a.dirs + 1
    summary["rate_per_s"] = a.rate
    summary["synced"] = a.sync
    summary["cleanup_workers"] = a.cleanup_workers
    summary["cleanup_cpus"] = a.cleanup_cpus
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"summary": summary, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
