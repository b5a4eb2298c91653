"""Part 3b of the benchmark harness: a Python tool server with a large warm
state (the official SDK's MCPServer, `tests/py/children/fork_child.py`, with
FORK_CHILD_WARM_MIB MiB of rows built at import), started three ways:

  exec     ringmux execs `uvicorn --fd 3` per key (every rollout imports it)
  fork     ringmux --fork with `python -m ringmux_fork` (one import, a fork per key)
  original the Python original (benches/pyorig) in its app mode: the proxy
           imports the app once and os.fork()s a child per key, 50 ms polling

For each: the first request of a new key (an MCP `initialize`, timed from
send to the full answer) over N keys, sequentially, each closed afterwards;
the memory of L live children (USS = private pages from smaps_rollup, PSS);
and open+close churn. For fork mode, ringmux's log splits the first request:
ringmux's ask → the fork server's answer (incl. the fork itself), and the
forked child's start → its first answer (uvicorn start, first page faults).

Run by benches/harness.py (part 3) or alone:
  .venv-bench/bin/python benches/warm.py [--quick]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RINGMUX = os.path.join(ROOT, "target/release/ringmux")
PYORIG = os.path.join(ROOT, "benches/pyorig/proxy.py")
CHILDREN = os.path.join(ROOT, "tests/py/children")
KEY = "vf_state_secret"
INIT = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "bench", "version": "1"}},
})
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def initialize(port, key, timeout=120.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", f"/mcp?{KEY}={key}&vf_state_url=http%3A%2F%2Ftask%2F{key}", body=INIT, headers=HEADERS)
        r = c.getresponse()
        data = r.read()
    finally:
        c.close()
    if r.status != 200 or b'"result"' not in data:
        raise RuntimeError(f"initialize for a new key: HTTP {r.status}: {data[:200]!r}")


def close_key(port, key, timeout=120.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", f"/vf/close?{KEY}={key}", body=b"")
        r = c.getresponse()
        r.read()
    finally:
        c.close()
    return r.status


def children_of(pid):
    kids = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def smaps(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return out


def uss_kib(pid):
    s = smaps(pid)
    return s.get("Private_Clean", 0) + s.get("Private_Dirty", 0)


def cwd(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def wait_line(p, pattern, timeout):
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited {p.returncode} before printing {pattern!r}")
            continue
        m = rx.search(line)
        if m:
            return m
    raise RuntimeError(f"no {pattern!r} within {timeout} s")


class Target:
    def __init__(self, name, python, base, warm_mib, helper_args=(), ringmux_args=()):
        self.name = name
        self.base = base
        env = dict(os.environ, FORK_CHILD_WARM_MIB=str(warm_mib))
        self.log = os.path.join(base, "stderr.log")
        err = open(self.log, "w")
        if name == "original":
            argv = [python, PYORIG, "--nodelay", "--listen", "127.0.0.1:0", "--base-dir", os.path.join(base, "d"),
                    "--child", "app", "--app", "fork_child:app", "--app-dir", CHILDREN]
            pattern = r"listening on http://[\d.]+:(\d+)"
        else:
            env["RINGMUX_LOG"] = "info,ringmux::control=debug,ringmux::dataplane=debug"
            argv = [RINGMUX, "serve", "--listen", "127.0.0.1:0", "--base-dir", os.path.join(base, "d"),
                    "--ready-timeout", "120s", "--max-children", "4096", *ringmux_args]
            if name == "fork":
                argv += ["--fork", "--", python, "-m", "ringmux_fork", "fork_child:app", "--app-dir", CHILDREN,
                         *helper_args]
            else:
                argv += ["--", python, "-m", "uvicorn", "--fd", "3", "--app-dir", CHILDREN,
                         "--log-level", "warning", "--no-access-log", "fork_child:app"]
            pattern = r"listening on http://[\d.]+:(\d+)"
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self.port = int(wait_line(self.p, pattern, 120).group(1))
        self.pid = self.p.pid
        if name == "fork":
            # the fork server must be warm before the first key is timed
            deadline = time.monotonic() + 180
            while "fork server ready" not in open(self.log).read():
                if time.monotonic() > deadline or self.p.poll() is not None:
                    raise RuntimeError("fork server not ready: " + open(self.log).read()[-2000:])
                time.sleep(0.1)

    def rollout_children(self):
        """The per-rollout children (not the fork server)."""
        return [k for k in children_of(self.pid) if not cwd(k).endswith("/_forkserver")]

    def parent_like(self):
        """The process holding the warm state the children were forked from."""
        if self.name == "fork":
            for k in children_of(self.pid):
                if cwd(k).endswith("/_forkserver"):
                    return k
        if self.name == "original":
            return self.pid
        return None

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def pctl(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def first_requests(t, n):
    lats = []
    for _ in range(n):
        key = f"first-{uuid.uuid4().hex}"
        t0 = time.perf_counter()
        initialize(t.port, key)
        lats.append((time.perf_counter() - t0) * 1e3)
        close_key(t.port, key)
    return {"n": n, "p50_ms": statistics.median(lats), "p90_ms": pctl(lats, 0.9), "max_ms": max(lats),
            "all_ms": [round(x, 2) for x in lats]}


def live_memory(t, n, conc=8):
    keys = [f"live-{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]
    with cf.ThreadPoolExecutor(conc) as ex:
        list(ex.map(lambda k: initialize(t.port, k), keys))
    time.sleep(0.5)
    kids = t.rollout_children()
    uss = [uss_kib(k) for k in kids]
    pss = [smaps(k).get("Pss", 0) for k in kids]
    rss = [smaps(k).get("Rss", 0) for k in kids]
    parent = t.parent_like()
    parent_rss = smaps(parent).get("Rss", 0) if parent else None
    parent_pss = smaps(parent).get("Pss", 0) if parent else 0
    with cf.ThreadPoolExecutor(conc) as ex:
        list(ex.map(lambda k: close_key(t.port, k), keys))
    return {
        "live": len(kids),
        "uss_median_kib": statistics.median(uss) if uss else None,
        "pss_median_kib": statistics.median(pss) if pss else None,
        "rss_median_kib": statistics.median(rss) if rss else None,
        "pss_total_kib": sum(pss) + parent_pss,
        "warm_parent_rss_kib": parent_rss,
    }


def churn(t, n, conc=8):
    def one(_):
        key = f"churn-{uuid.uuid4().hex}"
        initialize(t.port, key)
        if close_key(t.port, key) != 200:
            raise RuntimeError("close failed")

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(conc) as ex:
        list(ex.map(one, range(n)))
    el = time.perf_counter() - t0
    return {"rollouts": n, "concurrency": conc, "seconds": round(el, 2), "rollouts_per_s": n / el}


def breakdown(log_path, first_n):
    """From ringmux's log (fork mode), for the first `first_n` children (the
    sequential first-request phase): ms from ringmux's ask to the fork
    server's answer, the fork itself, and child start → first answer."""
    forked, answered = {}, {}
    with open(log_path) as f:
        for line in f:
            if "child forked" in line:
                m = re.search(r"child=(\d+).*asked_ms=([\d.]+)(?:.*fork_ms=([\d.]+))?", line)
                if m:
                    forked[m.group(1)] = (float(m.group(2)), float(m.group(3) or "nan"))
            elif "answered its first request" in line:
                m = re.search(r"child=(\d+) ms=([\d.]+)", line)
                if m:
                    answered[m.group(1)] = float(m.group(2))
    both = [(forked[c][0], forked[c][1], answered[c]) for c in forked
            if c in answered and int(c) <= first_n]
    if not both:
        return None
    return {
        "n": len(both),
        "ask_to_forked_ms": statistics.median(b[0] for b in both),
        "fork_ms": statistics.median(b[1] for b in both),
        "child_start_to_first_answer_ms": statistics.median(b[2] for b in both),
    }


def run(python, workdir, quick=False, warm_mib=200, prog=None):
    cfg = {
        "warm_mib": warm_mib,
        "first": {"exec": 3 if quick else 10, "fork": 10 if quick else 50, "original": 10 if quick else 50},
        "live": {"exec": 3 if quick else 8, "fork": 20 if quick else 100, "original": 20 if quick else 100},
        "churn": {"exec": 3 if quick else 10, "fork": 50 if quick else 200, "original": 50 if quick else 200},
    }
    res = {"config": cfg}
    for name in ("fork", "original", "exec"):
        base = tempfile.mkdtemp(prefix=f"warm-{name}-", dir=workdir)
        say = (prog.step if prog else (lambda s: print(s, file=sys.stderr, flush=True)))
        say(f"part 3b: {name}: starting the {warm_mib} MiB tool server")
        t = Target(name, python, base, warm_mib)
        r = {}
        try:
            say(f"part 3b: {name}: first request for {cfg['first'][name]} new keys")
            r["first_request"] = first_requests(t, cfg["first"][name])
            say(f"part 3b: {name}: {cfg['live'][name]} live children")
            r["memory"] = live_memory(t, cfg["live"][name])
            say(f"part 3b: {name}: churn of {cfg['churn'][name]} rollouts")
            r["churn"] = churn(t, cfg["churn"][name])
            if name == "fork":
                r["breakdown"] = breakdown(t.log, cfg["first"][name])
        finally:
            t.stop()
            shutil.rmtree(base, ignore_errors=True)
        res[name] = r
        print(f"  {name}: {json.dumps({k: v for k, v in r.items() if k != 'first_request'})} "
              f"first p50 {r['first_request']['p50_ms']:.1f} ms", file=sys.stderr, flush=True)
    return res


def table(res):
    out = [f"### Part 3b — a Python tool server with {res['config']['warm_mib']} MiB of warm state\n",
           "| | first request, new key: p50 / p90 / max (ms) | keys | USS per child (MiB) | PSS per child (MiB) | live | warm parent RSS (MiB) | churn (rollouts/s) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in ("exec", "fork", "original"):
        r = res.get(name)
        if not r:
            continue
        f, m, c = r["first_request"], r["memory"], r["churn"]
        parent = f"{m['warm_parent_rss_kib'] / 1024:.0f}" if m.get("warm_parent_rss_kib") else "—"
        label = {"exec": "ringmux, exec per key", "fork": "ringmux --fork", "original": "Python original (os.fork)"}[name]
        out.append(
            f"| {label} | {f['p50_ms']:.1f} / {f['p90_ms']:.1f} / {f['max_ms']:.1f} | {f['n']} | "
            f"{m['uss_median_kib'] / 1024:.1f} | {m['pss_median_kib'] / 1024:.1f} | {m['live']} | {parent} | "
            f"{c['rollouts_per_s']:.1f} |")
    fk, ex, og = res.get("fork"), res.get("exec"), res.get("original")
    if fk and ex and og:
        fp = fk["first_request"]["p50_ms"]
        out.append("")
        out.append(
            f"Fork mode's first request: {ex['first_request']['p50_ms'] / fp:.0f}× faster than exec, "
            f"{og['first_request']['p50_ms'] / fp:.1f}× faster than the original's fork (p50). "
            f"USS per child / fork server RSS = {fk['memory']['uss_median_kib'] / fk['memory']['warm_parent_rss_kib']:.1%}.")
    b = fk and fk.get("breakdown")
    if b:
        out.append(
            f"Where fork mode's first request goes (medians of {b['n']} children, ringmux's log): ringmux's ask → "
            f"the fork server's answer {b['ask_to_forked_ms']:.1f} ms (of which the fork itself {b['fork_ms']:.1f} ms), "
            f"the child's start → its first answer {b['child_start_to_first_answer_ms']:.1f} ms (uvicorn start, "
            f"lifespan, first page faults); the rest is the client and the proxy.")
    return "\n".join(out) + "\n"


AB = {  # label: (helper args, ringmux args)
    "hugepages": (("with", ((), ())), ("without", (("--no-hugepages",), ()))),
    "pool": (("pool 2", (("--pool", "2"), ())), ("pool 0", (("--pool", "0"), ()))),
    "cgroup": (("cgroup per child", ((), ("--cgroup", "required"))),
               ("no cgroups", ((), ("--cgroup", "off")))),
}


def ab(python, workdir, what, reps, n, warm_mib):
    """Fork mode with two helper settings (AB[what]), alternating: first
    request p50 and the fork's (or hand-over's) duration per repetition."""
    (la, xa), (lb, xb) = AB[what]
    out = {la: [], lb: []}
    for rep in range(reps):
        order = [(la, xa), (lb, xb)]
        if rep % 2:
            order.reverse()
        for label, extra in order:
            base = tempfile.mkdtemp(prefix=f"ab-{label}-", dir=workdir)
            t = Target("fork", python, base, warm_mib, *extra)
            try:
                f = first_requests(t, n)
                b = breakdown(t.log, n)
            finally:
                t.stop()
                shutil.rmtree(base, ignore_errors=True)
            out[label].append({"p50_ms": f["p50_ms"], "fork_ms": b["fork_ms"] if b else None})
            print(f"  {label}: p50 {f['p50_ms']:.1f} ms, fork {b['fork_ms'] if b else float('nan'):.2f} ms",
                  file=sys.stderr, flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ab", choices=sorted(AB), help="instead: fork mode with two helper settings "
                    "(hugepages: with/without; pool: --pool 2 / 0; cgroup: ringmux --cgroup required / off), "
                    "--reps alternating pairs of 30 keys")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warm-mib", type=int, default=200)
    ap.add_argument("--python", default=sys.executable, help="Python with mcp, uvicorn and ringmux_fork")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ringmux-warm-")
    if a.ab:
        try:
            res = ab(a.python, work, a.ab, a.reps, 30, a.warm_mib)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for label in res:
            p50 = [r["p50_ms"] for r in res[label]]
            fk = [r["fork_ms"] for r in res[label]]
            print(f"{label}: first-request p50 median {statistics.median(p50):.1f} ms "
                  f"(range {min(p50):.1f}–{max(p50):.1f}), fork median {statistics.median(fk):.2f} ms "
                  f"(range {min(fk):.2f}–{max(fk):.2f})")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
        return
    try:
        res = run(a.python, work, a.quick, a.warm_mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print(table(res))


if __name__ == "__main__":
    main()
