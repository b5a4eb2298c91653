"""What a cgroup per rollout costs on the exec path (issue #10).

ringmux with the built-in demo child (`serve --demo`: exec'd per key, starts in
about a millisecond, so the cgroup's own work is not hidden behind a slow
child) is started three times per round, in random order:

  cgroup   --cgroup required  (mkdir, join in pre_exec, cgroup.kill, wait for
                                populated 0, rmdir)
  off      --cgroup off       (process-group kill only)
  off-2    --cgroup off again (the A/A control: the same setting measured twice)

Each start times N sequential rollouts: the first request of a new key (an MCP
`initialize`, send to full answer) and its close (`POST /vf/close`, send to
`200`). Per round it takes the medians; it reports the median over rounds of
cgroup/off and off-2/off, with a bootstrap 95 % interval, and the absolute
difference in milliseconds. Loopback only, bounded: rounds × 3 × N rollouts.

  python3 benches/cgroup_cost.py [--rounds 9] [--n 40]

Needs a usable cgroup v2 hierarchy (it exits with a message where
`--cgroup required` will not start) and target/release/ringmux.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from warm import RINGMUX, close_key, initialize  # noqa: E402

MODES = {"cgroup": ("--cgroup", "required"), "off": ("--cgroup", "off"), "off-2": ("--cgroup", "off")}


def run_once(mode: str, n: int, work: str) -> dict:
    base = tempfile.mkdtemp(prefix=f"cg-{mode}-", dir=work)
    p = subprocess.Popen([RINGMUX, "serve", "--demo", "--listen", "127.0.0.1:0", "--base-dir", base,
                          *MODES[mode]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        port = None
        while port is None:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"ringmux {mode} did not start: {p.stderr.read()[-2000:]}")
            m = re.search(r"listening on http://[\d.]+:(\d+)", line)
            if m:
                port = int(m.group(1))
            if time.monotonic() > deadline:
                raise RuntimeError("no listening line within 20 s")
        initialize(port, "warm-up")  # the default path's first connection is not what is measured
        close_key(port, "warm-up")
        opens, closes = [], []
        for _ in range(n):
            key = f"cg-{uuid.uuid4().hex}"
            t0 = time.perf_counter()
            initialize(port, key, timeout=20)
            t1 = time.perf_counter()
            if close_key(port, key, timeout=20) != 200:
                raise RuntimeError("close did not answer 200")
            t2 = time.perf_counter()
            opens.append((t1 - t0) * 1e3)
            closes.append((t2 - t1) * 1e3)
        return {"open_ms": statistics.median(opens), "close_ms": statistics.median(closes)}
    finally:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        shutil.rmtree(base, ignore_errors=True)


def boot(xs: list[float], reps: int = 4000, seed: int = 1) -> tuple[float, float]:
    rnd = random.Random(seed)
    meds = sorted(statistics.median(rnd.choices(xs, k=len(xs))) for _ in range(reps))
    return meds[int(0.025 * reps)], meds[int(0.975 * reps) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--n", type=int, default=40, help="rollouts per start")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ringmux-cgcost-")
    rounds = []
    try:
        for r in range(a.rounds):
            order = list(MODES)
            random.shuffle(order)
            res = {m: run_once(m, a.n, work) for m in order}
            rounds.append(res)
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(
                f"{m} open {res[m]['open_ms']:.2f} close {res[m]['close_ms']:.2f} ms" for m in MODES),
                file=sys.stderr, flush=True)
    except RuntimeError as e:
        sys.exit(f"cgroup_cost: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{a.rounds} rounds × {a.n} rollouts per setting, demo child (exec path); "
          "median over rounds, bootstrap 95 % interval")
    print("| step | cgroup (ms) | off (ms) | cgroup − off (ms) | cgroup / off | A/A off-2 / off |")
    print("|---|---|---|---|---|---|")
    for step in ("open_ms", "close_ms"):
        cg = [x["cgroup"][step] for x in rounds]
        off = [x["off"][step] for x in rounds]
        ratio = [x["cgroup"][step] / x["off"][step] for x in rounds]
        diff = [x["cgroup"][step] - x["off"][step] for x in rounds]
        aa = [x["off-2"][step] / x["off"][step] for x in rounds]
        lo, hi = boot(ratio)
        dlo, dhi = boot(diff)
        alo, ahi = boot(aa)
        print(f"| {step[:-3]} | {statistics.median(cg):.2f} | {statistics.median(off):.2f} | "
              f"{statistics.median(diff):+.2f} [{dlo:+.2f}, {dhi:+.2f}] | "
              f"{statistics.median(ratio):.2f} [{lo:.2f}, {hi:.2f}] | "
              f"{statistics.median(aa):.2f} [{alo:.2f}, {ahi:.2f}] |")


if __name__ == "__main__":
    main()
