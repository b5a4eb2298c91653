#!/usr/bin/env python3
"""Two ringmux binaries against each other: is a change faster, measured.

Starts `ringmux serve --demo` from binary A twice (`a1`, `a2`: the A/A
control) and from binary B once, and measures them round by round in random
order with the same windows as benches/child_socket.py (p50 on one
connection at 200 req/s; ringmux's own CPU per request and its children's at
8,000 req/s over 32 connections; throughput at saturation). Prints the
median of the per-round ratios `b / a1` and `a2 / a1` with bootstrap 95 %
intervals: a difference is real where B's interval clears the A/A one.

Usage: benches/ab.py --a OLD/ringmux --b NEW/ringmux [--rounds 9] [--secs 3]
[--extra "ringmux flags"] [--json FILE]. To compare with an earlier commit:
`git worktree add /tmp/old <commit> && cargo build --release
--manifest-path /tmp/old/Cargo.toml`. Loopback only; bounded loops.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import child_socket as cs  # noqa: E402
import harness as h  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="baseline ringmux binary")
    ap.add_argument("--b", required=True, help="changed ringmux binary")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--extra", default="", help="ringmux flags for all three, space-separated")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not (1 <= a.rounds <= 100 and 0.5 <= a.secs <= 60):
        sys.exit("--rounds must be 1..100 and --secs 0.5..60")
    for b in (a.a, a.b):
        if not os.access(b, os.X_OK):
            sys.exit(f"not an executable: {b}")
    work = tempfile.mkdtemp(prefix="ringmux-ab-")
    procs = {}
    try:
        for name, binary in (("a1", a.a), ("a2", a.a), ("b", a.b)):
            base = os.path.join(work, name)
            os.mkdir(base)
            h.RINGMUX = os.path.abspath(binary)
            procs[name] = h.start_ringmux(base, extra=tuple(a.extra.split()))
        key = "ab-bench"
        path = f"/mcp?{h.KEY}={key}"
        for p in procs.values():
            for _ in range(3):
                h.call(p.port, key, "echo", {"text": "warm"})
        rows = {n: [] for n in procs}
        rnd = random.Random(11)
        for r in range(a.rounds):
            order = list(procs)
            rnd.shuffle(order)
            for n in order:
                rows[n].append(cs.measure(procs[n], path, a.secs))
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(
                f"{n} p50 {rows[n][-1]['p50_us']:.0f} µs, {rows[n][-1]['sat_rps']:.0f}/s, "
                f"CPU {rows[n][-1]['proxy_cpu_us']:.1f} + {rows[n][-1]['child_cpu_us']:.1f} µs" for n in procs),
                flush=True)
    finally:
        for p in procs.values():
            p.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = {"a": a.a, "b": a.b, "rounds": a.rounds, "secs": a.secs, "raw": rows, "ratios": {}}
    print(f"\nmedian of {a.rounds} rounds (ratio to a1, bootstrap 95 % interval)")
    print(f"{'metric':<16} {'a1':>10} {'b/a1':>24} {'A/A a2/a1':>24}")
    for m in cs.METRICS:
        base = [x[m] for x in rows["a1"]]
        res = {}
        for n in ("b", "a2"):
            ratios = [x[m] / v for x, v in zip(rows[n], base)]
            lo, hi = h.boot(ratios)
            res[n] = {"median": h.med(ratios), "ci95": [lo, hi]}
        out["ratios"][m] = res
        cell = lambda r: f"{r['median']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"  # noqa: E731
        print(f"{m:<16} {h.med(base):>10.1f} {cell(res['b']):>24} {cell(res['a2']):>24}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
