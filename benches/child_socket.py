#!/usr/bin/env python3
"""Unix or TCP for the upstream hop: which `--child-socket` is faster, measured.

Starts three `ringmux serve --demo` instances on this machine: `unix-a` and
`unix-b` (`--child-socket unix`, the A/A control: the same setup twice) and
`tcp` (`--child-socket tcp`). Each round runs, for every instance in a random
order and through one warm key (so the same demo child answers):

* one keep-alive connection at 200 req/s (open loop, benches/loadgen.rs):
  p50 latency;
* 32 connections at 8,000 req/s: CPU per request of ringmux itself and,
  separately, of its children (the hop costs on both ends);
* 32 connections at an offered rate above saturation: throughput.

Per round it takes the ratios `tcp / unix-a` and, as the noise floor,
`unix-b / unix-a`; it prints the median ratio of the rounds with a bootstrap
95 % interval for each. A difference is real where the tcp interval does not
overlap the A/A interval.

Usage: benches/child_socket.py [--rounds 9] [--secs 3] [--json FILE]
(needs `cargo build --release --bin ringmux --examples`). Loopback only; every
loop is bounded in count and time.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

METRICS = ("p50_us", "sat_rps", "proxy_cpu_us", "child_cpu_us")
FIXED_RATE = 8000


class Tree:
    """cpu_of shim for harness.loadgen: ringmux and all its descendants."""

    def __init__(self, proc):
        self.proc = proc

    def cpu_pids(self):
        kids = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            ppid = int(data[data.rindex(")") + 2 :].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        out, todo = [], [self.proc.pid]
        while todo and len(out) < 10_000:
            p = todo.pop()
            out.append(p)
            todo += kids.get(p, [])
        return out


def measure(proc, path, secs):
    one = h.loadgen(proc.port, path, 200, secs, 1, body=h.SMALL_BODY)
    kids = [p for p in Tree(proc).cpu_pids() if p != proc.pid]
    p0, k0 = h.cpu_seconds([proc.pid]), h.cpu_seconds(kids)
    fixed = h.loadgen(proc.port, path, FIXED_RATE, secs, 32, body=h.SMALL_BODY)
    n = fixed["completed"] + fixed.get("warmup_sent", 0)
    p1, k1 = h.cpu_seconds([proc.pid]), h.cpu_seconds(kids)
    sat = h.loadgen(proc.port, path, 200_000, secs, 32, body=h.SMALL_BODY)
    errors = one["errors"] + fixed["errors"] + sat["errors"]
    if errors or not n:
        raise RuntimeError(f"{errors} errors, {n} requests in the fixed-rate window")
    return {"p50_us": one["p50_us"], "sat_rps": sat["achieved_rps"],
            "proxy_cpu_us": (p1 - p0) * 1e6 / n, "child_cpu_us": (k1 - k0) * 1e6 / n}


def measure_churn(proc, path, secs):
    """A new connection per request (`Connection: close`), closed loop on 32
    connections: the same four figures as [`measure`], all from this one
    window (`p50_us` then includes the connect, `sat_rps` is the closed
    loop's throughput)."""
    kids = [p for p in Tree(proc).cpu_pids() if p != proc.pid]
    p0, k0 = h.cpu_seconds([proc.pid]), h.cpu_seconds(kids)
    r = h.loadgen(proc.port, path, None, secs, 32, body=h.SMALL_BODY, extra=["--close"])
    p1, k1 = h.cpu_seconds([proc.pid]), h.cpu_seconds(kids)
    n = r["completed"] + r.get("warmup_sent", 0)
    if r["errors"] or r["timeouts"] or not n:
        raise RuntimeError(f"churn window: {r}")
    return {"p50_us": r["p50_us"], "sat_rps": r["achieved_rps"],
            "proxy_cpu_us": (p1 - p0) * 1e6 / n, "child_cpu_us": (k1 - k0) * 1e6 / n}


STREAM_METRICS = ("blob_p50_us", "blob_sat_rps", "blob_proxy_cpu_us", "sse_last_event_p50_us")


def measure_streams(proc, path, secs):
    """The large-body and stream rows of the harness's Part 2: 64 KiB
    responses on one connection at 200 req/s (p50) and saturated on 32
    (throughput, ringmux CPU per response), and an SSE stream of 1,000 events
    at 10 streams/s (p50 time to the last event)."""
    key = path.split("=", 1)[1]
    blob = f"/blob?bytes=65536&{h.KEY}={key}"
    one = h.loadgen(proc.port, blob, 200, secs, 1)
    p0 = h.cpu_seconds([proc.pid])
    sat = h.loadgen(proc.port, blob, 200_000, secs, 32)
    n = sat["completed"] + sat.get("warmup_sent", 0)
    p1 = h.cpu_seconds([proc.pid])
    sse = h.loadgen(proc.port, f"/sse?n=1000&interval_ms=0&{h.KEY}={key}", 10, secs, 1, mode="sse")
    errors = one["errors"] + sat["errors"] + sse["errors"]
    if errors or not n or sse["events"] != 1000 * sse["completed"]:
        raise RuntimeError(f"{errors} errors, {n} saturated responses, {sse['events']} events")
    return {"blob_p50_us": one["p50_us"], "blob_sat_rps": sat["achieved_rps"],
            "blob_proxy_cpu_us": (p1 - p0) * 1e6 / n, "sse_last_event_p50_us": sse["p50_us"]}


MODES = {"request": (measure, METRICS), "churn": (measure_churn, METRICS), "streams": (measure_streams, STREAM_METRICS)}


def compare(procs, rounds, secs, base, test, control, seed=7, mode="request"):
    """Warms one key on every instance in `procs` (name -> Proc), measures
    them `rounds` times in random order, prints each round and then the
    median ratios `test / base` and `control / base` (the A/A) with
    bootstrap 95 % intervals; returns the raw rounds and the ratios."""
    key = "ratio-bench"
    path = f"/mcp?{h.KEY}={key}"
    for p in procs.values():
        for _ in range(3):
            h.call(p.port, key, "echo", {"text": "warm"})
    rows = {n: [] for n in procs}
    fn, metrics = MODES[mode]
    rnd = random.Random(seed)
    for r in range(rounds):
        order = list(procs)
        rnd.shuffle(order)
        for n in order:
            rows[n].append(fn(procs[n], path, secs))
        print(f"round {r + 1}/{rounds}: " + "; ".join(
            f"{n} " + " ".join(f"{m} {rows[n][-1][m]:.1f}" for m in metrics) for n in procs), flush=True)
    out = {"rounds": rounds, "secs": secs, "raw": rows, "ratios": {}}
    print(f"\nmedian of {rounds} rounds (ratio to {base}, bootstrap 95 % interval)")
    print(f"{'metric':<22} {base:>10} {test + '/' + base:>24} {'A/A ' + control + '/' + base:>24}")
    for m in metrics:
        ref = [x[m] for x in rows[base]]
        res = {}
        for n in (test, control):
            ratios = [x[m] / b for x, b in zip(rows[n], ref)]
            lo, hi = h.boot(ratios)
            res[n] = {"median": h.med(ratios), "ci95": [lo, hi]}
        out["ratios"][m] = res
        cell = lambda r: f"{r['median']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"  # noqa: E731
        print(f"{m:<22} {h.med(ref):>10.1f} {cell(res[test]):>24} {cell(res[control]):>24}")
    return out


def run(specs, rounds, secs, base, test, control, json_path=None, seed=7, mode="request"):
    """Starts one `ringmux serve --demo` per `(name, binary, flags)` in
    `specs`, runs [`compare`] on them, stops them, and writes the result to
    `json_path` if given."""
    work = tempfile.mkdtemp(prefix="ringmux-compare-")
    procs = {}
    try:
        for name, binary, flags in specs:
            dir_ = os.path.join(work, name)
            os.mkdir(dir_)
            h.RINGMUX = os.path.abspath(binary)
            procs[name] = h.start_ringmux(dir_, extra=tuple(flags))
        out = compare(procs, rounds, secs, base, test, control, seed=seed, mode=mode)
    finally:
        for p in procs.values():
            p.stop()
        shutil.rmtree(work, ignore_errors=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    if not (1 <= a.rounds <= 100 and 0.5 <= a.secs <= 60):
        sys.exit("--rounds must be 1..100 and --secs 0.5..60")
    specs = [(n, h.RINGMUX, ("--child-socket", k)) for n, k in (("unix-a", "unix"), ("unix-b", "unix"), ("tcp", "tcp"))]
    run(specs, a.rounds, a.secs, "unix-a", "tcp", "unix-b", a.json)


if __name__ == "__main__":
    main()
