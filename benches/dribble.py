"""Do slow clients delay the others? (issue #11)

ringmux with the built-in demo child; an ordinary client (benches/loadgen,
open-loop, 8 connections, a small MCP `tools/call` on one key) at --rate
req/s, in windows of --secs seconds. Each round has three windows in random
order:

  quiet    nothing else
  quiet-2  nothing else again (the A/A control)
  dribble  --conns connections that each hold an unfinished request head and
           send one more byte every 100 ms (a slowloris), started before
           the window; --head-timeout is raised above the window, so they
           stay for all of it
  elsewhere the same dribbling, to a listener that is not ringmux (a socket
           nobody accepts from: the kernel holds the bytes): what the
           dribbling client itself costs this 2-core machine, so that
           dribble − elsewhere is ringmux's share

Reports, over --rounds rounds, the medians of dribble/quiet, elsewhere/quiet
and quiet-2/quiet for p50 and p99, with bootstrap 95 % intervals. Loopback
only, bounded.

  python3 benches/dribble.py [--rounds 10] [--conns 1000] [--rate 2000] [--secs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGMUX = os.path.join(ROOT, "target/release/ringmux")
LOADGEN = os.path.join(ROOT, "target/release/examples/loadgen")
MODES = ["quiet", "quiet-2", "dribble", "elsewhere"]
CALL = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"text": "hi"}}})


def boot(xs, reps=4000, seed=1):
    rnd = random.Random(seed)
    m = sorted(statistics.median(rnd.choices(xs, k=len(xs))) for _ in range(reps))
    return m[int(0.025 * reps)], m[int(0.975 * reps) - 1]


class Dribblers:
    def __init__(self, port: int, n: int):
        self.socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /mcp?vf_state_secret=slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            self.socks.append(s)
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            for s in self.socks:
                try:
                    s.send(b"a")
                except OSError:
                    pass
            self.stop.wait(0.1)

    def close(self):
        self.stop.set()
        self.t.join(5)
        for s in self.socks:
            s.close()


def window(port: int, rate: int, secs: float) -> dict:
    r = subprocess.run([LOADGEN, "--addr", f"127.0.0.1:{port}", "--rate", str(rate), "--secs", str(secs),
                        "--conns", "8", "--warmup", "0.5", "--method", "POST", "--body", CALL,
                        "--path", "/mcp?vf_state_secret=busy"],
                       capture_output=True, text=True, timeout=secs + 60)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-500:])
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--secs", type=float, default=5)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.conns * 2 + 256)), hard))
    base = tempfile.mkdtemp(prefix="ringmux-dribble-")
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(a.conns + 64)
    held: list[socket.socket] = []

    def accept_and_hold():  # accepted (so the queue never fills) but never read
        while True:
            try:
                held.append(sink.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_and_hold, daemon=True).start()
    p = subprocess.Popen([RINGMUX, "serve", "--demo", "--listen", "127.0.0.1:0", "--base-dir", base,
                          "--head-timeout", f"{int(a.secs * 4 + 30)}s"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = None
        while port is None:
            m = re.search(r"listening on http://[\d.]+:(\d+)", p.stdout.readline())
            port = int(m.group(1)) if m else None
        window(port, a.rate, 1)  # the child exists and is warm
        rounds = []
        for r in range(a.rounds):
            res = {}
            for mode in random.sample(MODES, len(MODES)):
                d = None
                if mode == "dribble":
                    d = Dribblers(port, a.conns)
                elif mode == "elsewhere":
                    d = Dribblers(sink.getsockname()[1], a.conns)
                try:
                    time.sleep(0.5)
                    res[mode] = window(port, a.rate, a.secs)
                finally:
                    if d:
                        d.close()
                    while held:
                        held.pop().close()
                time.sleep(0.5)
            rounds.append(res)
            print(f"round {r + 1}: " + ", ".join(f"{m} p50 {res[m]['p50_us']} p99 {res[m]['p99_us']} µs"
                                                  for m in MODES),
                  file=sys.stderr, flush=True)
    finally:
        p.terminate()
        p.wait(30)
    print(f"{a.rounds} rounds, {a.rate} req/s, {a.secs:.0f} s windows, {a.conns} dribbling connections; "
          "median over rounds [bootstrap 95 %]")
    print("| | quiet (µs) | dribblers on ringmux (µs) | dribble / quiet | dribblers elsewhere / quiet | A/A quiet-2 / quiet |")
    print("|---|---|---|---|---|---|")

    def ratio(mode, q):
        xs = [x[mode][q] / x["quiet"][q] for x in rounds]
        lo, hi = boot(xs)
        return f"{statistics.median(xs):.2f} [{lo:.2f}, {hi:.2f}]"

    for q in ("p50_us", "p99_us"):
        quiet = statistics.median(x["quiet"][q] for x in rounds)
        dr = statistics.median(x["dribble"][q] for x in rounds)
        print(f"| {q[:-3]} | {quiet:.0f} | {dr:.0f} | {ratio('dribble', q)} | {ratio('elsewhere', q)} | "
              f"{ratio('quiet-2', q)} |")
    errs = sum(x["dribble"]["errors"] + x["dribble"]["timeouts"] + x["dribble"]["non_2xx"] for x in rounds)
    print(f"errors, timeouts or non-2xx answers of the ordinary client while dribbled: {errs}")


if __name__ == "__main__":
    main()
