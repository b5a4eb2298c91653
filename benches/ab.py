#!/usr/bin/env python3
"""Two ringmux binaries against each other: is a change faster, measured.

Starts `ringmux serve --demo` from binary A twice (`a1`, `a2`: the A/A
control) and from binary B once, and measures them round by round in random
order with the same windows as benches/child_socket.py (p50 on one
connection at 200 req/s; ringmux's own CPU per request and its children's at
8,000 req/s over 32 connections; throughput at saturation). Prints the
median of the per-round ratios `b / a1` and `a2 / a1` with bootstrap 95 %
intervals: a difference is real where B's interval clears the A/A one.

With `--churn` the windows are instead a new connection per request
(`Connection: close`, closed loop on 32 connections): throughput and CPU
per request of ringmux and of its child, what connection setup and
teardown cost. With `--streams` they are the large-body and stream rows
of the harness's Part 2: 64 KiB responses (p50 on one connection,
throughput and ringmux CPU saturated on 32) and an SSE stream of 1,000
events (p50 time to the last event).

Usage: benches/ab.py --a OLD/ringmux --b NEW/ringmux [--rounds 9] [--secs 3]
[--extra "ringmux flags"] [--churn | --streams] [--json FILE]. To compare with an earlier commit:
`git worktree add /tmp/old <commit> && cargo build --release
--manifest-path /tmp/old/Cargo.toml`. Loopback only; bounded loops.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from child_socket import run  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="baseline ringmux binary")
    ap.add_argument("--b", required=True, help="changed ringmux binary")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--extra", default="", help="ringmux flags for all three, space-separated")
    ap.add_argument("--churn", action="store_true", help="a new connection per request")
    ap.add_argument("--streams", action="store_true", help="64 KiB responses and an SSE stream")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not (1 <= a.rounds <= 100 and 0.5 <= a.secs <= 60):
        sys.exit("--rounds must be 1..100 and --secs 0.5..60")
    for b in (a.a, a.b):
        if not os.access(b, os.X_OK):
            sys.exit(f"not an executable: {b}")
    flags = a.extra.split()
    specs = [("a1", a.a, flags), ("a2", a.a, flags), ("b", a.b, flags)]
    if a.churn and a.streams:
        sys.exit("--churn and --streams exclude each other")
    mode = "churn" if a.churn else "streams" if a.streams else "request"
    out = run(specs, a.rounds, a.secs, "a1", "b", "a2", seed=11, mode=mode)
    out.update(a=a.a, b=a.b)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
