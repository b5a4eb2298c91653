#!/usr/bin/env python3
"""Quick latency check: ringmux vs. straight to the same child, in one run.

Starts `ringmux serve --demo` and a standalone demo child (the same binary's
`demo-child`, on a socket handed over as fd 3), then measures on one keep-alive
connection each, interleaving rounds so machine noise hits both alike:

* p50/p99 of a small MCP `tools/call` (echo) straight to the child and through
  ringmux, and the added latency;
* first-request latency for new keys (spawn + first answer), for the demo child.

Usage: benches/quick_latency.py [--bin target/release/ringmux] [--n 4000]
This is the quick figure quoted in the README; the full harness is
scripts/bench.sh (issue 4).
"""

import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x" * 64}},
    }
).encode()
HDRS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def start_ringmux(binary, base, workers):
    p = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--base-dir", base, "--demo", "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        line = p.stdout.readline()
        m = re.search(r"listening on http://([\d.]+):(\d+)", line)
        if m:
            return p, int(m.group(2))
    p.kill()
    sys.exit("ringmux did not start")


def start_direct(binary, cwd):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    port = s.getsockname()[1]
    fd = s.fileno()

    def pre():
        os.dup2(fd, 3)

    env = dict(os.environ, LISTEN_FDS="1")
    p = subprocess.Popen([binary, "demo-child"], pass_fds=(fd, 3), preexec_fn=pre, cwd=cwd, env=env)
    s.close()
    return p, port


def one(conn, path):
    t0 = time.perf_counter_ns()
    conn.request("POST", path, body=BODY, headers=HDRS)
    r = conn.getresponse()
    r.read()
    t1 = time.perf_counter_ns()
    if r.status != 200:
        sys.exit(f"unexpected status {r.status} for {path}")
    return (t1 - t0) / 1000.0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/ringmux")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--new-keys", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    base = tempfile.mkdtemp(prefix="ringmux-bench-")
    rm, rport = start_ringmux(a.bin, base, a.workers)
    direct, dport = start_direct(a.bin, base)
    try:
        time.sleep(0.3)
        cd = http.client.HTTPConnection("127.0.0.1", dport, timeout=10)
        cr = http.client.HTTPConnection("127.0.0.1", rport, timeout=10)
        key = uuid.uuid4().hex
        for _ in range(200):  # warm-up (spawns the key's child)
            one(cd, "/mcp")
            one(cr, f"/mcp?vf_state_secret={key}")
        d, r = [], []
        rounds = 20
        per = max(1, a.n // rounds)
        for _ in range(rounds):
            d += [one(cd, "/mcp") for _ in range(per)]
            r += [one(cr, f"/mcp?vf_state_secret={key}") for _ in range(per)]
        first = []
        for _ in range(a.new_keys):
            c = http.client.HTTPConnection("127.0.0.1", rport, timeout=30)
            first.append(one(c, f"/mcp?vf_state_secret={uuid.uuid4().hex}"))
            c.close()
        res = {
            "direct_p50_us": statistics.median(d),
            "direct_p99_us": pct(d, 0.99),
            "ringmux_p50_us": statistics.median(r),
            "ringmux_p99_us": pct(r, 0.99),
            "added_p50_us": statistics.median(r) - statistics.median(d),
            "first_request_p50_ms": statistics.median(first) / 1000.0,
            "first_request_max_ms": max(first) / 1000.0,
            "requests_each": len(d),
        }
        print(json.dumps(res, indent=2))
    finally:
        rm.send_signal(signal.SIGTERM)
        direct.kill()
        rm.wait(timeout=30)
        direct.wait(timeout=10)


if __name__ == "__main__":
    main()
