"""The soak: ringmux under steady load for a long time, with rollouts opened
and closed all along and some of their children crashing; what it holds
(fds, memory, children, threads) and how fast it answers, over time. Nothing
may grow.

One ringmux (2 workers) in front of tests/py/children/raw_child.py:
  * steady traffic: benches/loadgen (open-loop, 16 keep-alive connections)
    on one long-lived key at --load (default 0.7) of the saturation rate
    measured at the start, in consecutive windows of --window seconds
    (p50 / p99 / max per window);
  * churn: --churn rollouts per second (a new key, a few requests, then a
    close; every 20th child crashes instead, POST /exit, and the key is used
    once more so the crash is seen and a fresh child answers, then closed);
  * every --sample seconds: ringmux's open fds, RSS, threads, its live
    children (metrics) and every child process of ringmux.

Writes benches/results/soak/soak.json and soak.{svg,png}; prints a summary
with the least-squares slope of fds and RSS over the second half (the first
half includes warm-up: allocator arenas, buffer rings). Loopback only,
bounded by --minutes.

  scripts/soak.sh [--minutes 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import proc_status  # noqa: E402  (VmRSS, Threads, fds of a pid)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGMUX = os.path.join(ROOT, "target/release/ringmux")
LOADGEN = os.path.join(ROOT, "target/release/examples/loadgen")
RAW_CHILD = os.path.join(ROOT, "tests/py/children/raw_child.py")
OUT = os.path.join(ROOT, "benches/results/soak")


def start(base: str) -> tuple[subprocess.Popen, int, str]:
    p = subprocess.Popen(
        [RINGMUX, "serve", "--listen", "127.0.0.1:0", "--workers", "2", "--base-dir", base,
         "--admin", "127.0.0.1:0", "--max-children", "512", "--", sys.executable, RAW_CHILD],
        stdout=subprocess.PIPE, stderr=open(os.path.join(base, "..", "ringmux.log"), "w"), text=True)
    port = metrics = None
    deadline = time.monotonic() + 20
    while port is None or metrics is None:
        line = p.stdout.readline()
        if not line or time.monotonic() > deadline:
            raise RuntimeError("ringmux did not start")
        m = re.search(r"listening on http://[\d.]+:(\d+)", line)
        port = int(m.group(1)) if m else port
        m = re.search(r"metrics on (http://\S+)", line)
        metrics = m.group(1) if m else metrics
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, port, metrics


def get(port: int, path: str, method: str = "GET", body: bytes | None = None) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def metric(url: str, name: str) -> float:
    host, port = url.split("//")[1].split("/")[0].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def children_of(pid: int) -> int:
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        n += 1
            except (OSError, IndexError, ValueError):
                pass
    return n


def loadgen(port: int, rate: float, secs: float) -> dict:
    r = subprocess.run([LOADGEN, "--addr", f"127.0.0.1:{port}", "--rate", str(int(rate)), "--secs", str(secs),
                        "--conns", "16", "--warmup", "0.5", "--path", "/state?vf_state_secret=steady",
                        "--method", "GET"], capture_output=True, text=True, timeout=secs + 60)
    if r.returncode != 0:
        raise RuntimeError(f"loadgen failed: {r.stderr[-500:]}")
    return json.loads(r.stdout)


def churn(port: int, per_s: float, stop: threading.Event, stats: dict) -> None:
    i = 0
    while not stop.is_set():
        t0 = time.monotonic()
        key = f"soak-{uuid.uuid4().hex}"
        try:
            get(port, f"/state?vf_state_secret={key}", "PUT", b"x")
            get(port, f"/state?vf_state_secret={key}")
            if i % 20 == 19:
                get(port, f"/exit?vf_state_secret={key}", "POST", b"")
                stats["crashed"] += 1
                # Until the crash is seen a request may get 502; then a fresh
                # child answers (bounded: 40 tries, 2 s).
                for _ in range(40):
                    if get(port, f"/state?vf_state_secret={key}") == 200:
                        stats["respawned"] += 1
                        break
                    time.sleep(0.05)
            get(port, f"/vf/close?vf_state_secret={key}", "POST", b"")
            stats["rollouts"] += 1
        except OSError as e:
            stats["errors"] += 1
            stats["last_error"] = repr(e)
        i += 1
        stop.wait(max(0.0, 1.0 / per_s - (time.monotonic() - t0)))


def slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 3:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def plot(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = res["samples"]
    w = res["windows"]
    t = [x["t"] / 60 for x in s]
    fig, ax = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    ax[0][0].plot(t, [x["fds"] for x in s])
    ax[0][0].set_ylabel("ringmux open fds")
    ax[0][1].plot(t, [x["rss_kib"] / 1024 for x in s])
    ax[0][1].set_ylabel("ringmux RSS (MiB)")
    ax[1][0].plot(t, [x["live_children"] for x in s], label="live children (metric)")
    ax[1][0].plot(t, [x["child_procs"] for x in s], label="child processes", alpha=0.7)
    ax[1][0].plot(t, [x["threads"] for x in s], label="ringmux threads", alpha=0.7)
    ax[1][0].legend(fontsize=8)
    ax[1][0].set_xlabel("minutes")
    tw = [x["t_end"] / 60 for x in w]
    ax[1][1].plot(tw, [x["p50_us"] / 1000 for x in w], label="p50")
    ax[1][1].plot(tw, [x["p99_us"] / 1000 for x in w], label="p99")
    ax[1][1].plot(tw, [x["max_us"] / 1000 for x in w], label="max", alpha=0.5)
    ax[1][1].set_yscale("log")
    ax[1][1].set_ylabel(f"steady-key latency (ms) at {res['rate']:.0f} req/s")
    ax[1][1].legend(fontsize=8)
    ax[1][1].set_xlabel("minutes")
    fig.suptitle(f"ringmux soak: {res['minutes']} min, {res['churn']['rollouts']} rollouts opened and closed, "
                 f"{res['churn']['crashed']} crashed")
    fig.tight_layout()
    fig.savefig(path + ".svg")
    fig.savefig(path + ".png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--load", type=float, default=0.7, help="share of the measured saturation rate")
    ap.add_argument("--churn", type=float, default=4, help="rollouts opened and closed per second")
    ap.add_argument("--window", type=float, default=30)
    ap.add_argument("--sample", type=float, default=5)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ringmux-soak-")
    base = os.path.join(work, "base")
    os.mkdir(base)
    p, port, murl = start(base)
    samples, windows = [], []
    stop = threading.Event()
    stats = {"rollouts": 0, "crashed": 0, "respawned": 0, "errors": 0}
    try:
        get(port, "/state?vf_state_secret=steady")
        sat = loadgen(port, 100000, 5)["achieved_rps"]
        rate = a.load * sat
        print(f"soak: saturation {sat:.0f} req/s on the steady key; running at {rate:.0f} req/s "
              f"for {a.minutes} min with {a.churn} rollouts/s of churn", file=sys.stderr, flush=True)
        t0 = time.monotonic()

        def sampler():
            while not stop.is_set():
                st = proc_status(p.pid)
                samples.append({"t": time.monotonic() - t0, "fds": st["fds"], "rss_kib": st["VmRSS"],
                                "threads": st["Threads"], "live_children": metric(murl, "ringmux_live_children"),
                                "child_procs": children_of(p.pid)})
                stop.wait(a.sample)

        threads = [threading.Thread(target=sampler, daemon=True),
                   threading.Thread(target=churn, args=(port, a.churn, stop, stats), daemon=True)]
        for th in threads:
            th.start()
        end = t0 + a.minutes * 60
        while time.monotonic() + a.window <= end + 1:
            r = loadgen(port, rate, a.window)
            r["t_end"] = time.monotonic() - t0
            windows.append({k: r[k] for k in ("t_end", "p50_us", "p99_us", "max_us", "achieved_rps",
                                              "errors", "timeouts", "non_2xx")})
            print(f"soak: {r['t_end'] / 60:5.1f} min  p50 {r['p50_us'] / 1000:.2f} ms  p99 "
                  f"{r['p99_us'] / 1000:.2f} ms  errors {r['errors']}  fds {samples[-1]['fds']}  rss "
                  f"{samples[-1]['rss_kib'] / 1024:.1f} MiB  rollouts {stats['rollouts']}",
                  file=sys.stderr, flush=True)
        stop.set()
        for th in threads:
            th.join(60)
        time.sleep(2)
        final = proc_status(p.pid)
        final["live_children"] = metric(murl, "ringmux_live_children") - 1  # the steady key's child
    finally:
        stop.set()
        p.terminate()
        try:
            rc = p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        leftovers = os.listdir(base)
        os.makedirs(OUT, exist_ok=True)
        shutil.copy(os.path.join(work, "ringmux.log"), os.path.join(OUT, "ringmux.log"))
        shutil.rmtree(work, ignore_errors=True)
    half = [x for x in samples if x["t"] >= a.minutes * 30]
    res = {
        "minutes": a.minutes, "saturation_rps": sat, "rate": rate, "churn": stats,
        "windows": windows, "samples": samples, "final": final, "exit_code": rc,
        "dirs_left_after_stop": leftovers,
        "second_half_slope": {
            "fds_per_min": slope([x["t"] / 60 for x in half], [x["fds"] for x in half]),
            "rss_kib_per_min": slope([x["t"] / 60 for x in half], [x["rss_kib"] for x in half]),
        },
    }
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "soak.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot(res, os.path.join(OUT, "soak"))
    p50 = [w["p50_us"] / 1000 for w in windows]
    p99 = [w["p99_us"] / 1000 for w in windows]
    print(f"\nsoak: {a.minutes} min at {rate:.0f} req/s ({a.load:.0%} of {sat:.0f}), "
          f"{stats['rollouts']} rollouts ({stats['crashed']} crashed, {stats['respawned']} answered again "
          f"after the crash), {stats['errors']} churn errors")
    print(f"  steady key per {a.window:.0f} s window: p50 median {statistics.median(p50):.2f} ms "
          f"(first {p50[0]:.2f}, last {p50[-1]:.2f}); p99 median {statistics.median(p99):.2f} ms "
          f"(first {p99[0]:.2f}, last {p99[-1]:.2f}); errors {sum(w['errors'] for w in windows)}, "
          f"timeouts {sum(w['timeouts'] for w in windows)}")
    print(f"  ringmux fds {samples[0]['fds']} → {final['fds']}, RSS {samples[0]['rss_kib'] / 1024:.1f} → "
          f"{final['VmRSS'] / 1024:.1f} MiB, threads {samples[0]['threads']} → {final['Threads']}; "
          f"second-half slope {res['second_half_slope']['fds_per_min']:+.3f} fds/min, "
          f"{res['second_half_slope']['rss_kib_per_min']:+.1f} KiB/min")
    print(f"  churn children left at the end: {final['live_children']:.0f}; exit code {rc}; "
          f"directories left after stop: {leftovers}")
    print(f"  wrote {OUT}/soak.json, soak.svg, soak.png")


if __name__ == "__main__":
    main()
