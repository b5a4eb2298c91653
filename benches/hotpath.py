#!/usr/bin/env python3
"""The hot path against nginx and HAProxy: CPU per request first.

One standalone demo child (`ringmux demo-child`) serves a TCP and a Unix
socket from one process; in front of it run nginx and HAProxy (Debian
packages, 2 workers / 2 threads, upstream keep-alive), each once with a TCP
and once with a Unix-socket upstream. ringmux (`serve --demo`, 2 workers)
runs its own demo child per key, the same program, with `--child-socket
unix` (the default; twice: `ringmux-unix` and `ringmux-unix-b`, the A/A
control) and `--child-socket tcp`. `direct` is the standalone child without
a proxy.

Every repetition measures every target, in a new random order, with three
windows of the same small `tools/call` (benches/loadgen.rs):

* `c1`: closed loop, one keep-alive connection (the next request leaves when
  the previous answer is in): p50 latency; *added p50* is the target's p50
  minus `direct`'s in the same repetition;
* `c32`: closed loop, 32 connections: throughput at saturation;
* `o8k`: open loop, 8,000 req/s over 32 connections: the same work for
  everyone, so CPU per request compares like with like.

In each window it takes the proxy's CPU time (user + system of its own
processes: nginx's master and workers, HAProxy's one process, ringmux without
its children) and the child's, per request. The ratios against "the better of
nginx and HAProxy" are taken per repetition (the lower CPU, the lower added
p50, the higher throughput of the two in that repetition), then reported as a
median with a bootstrap 95 % interval; `ringmux-unix-b / ringmux-unix` is the
noise floor.

With `--bytes N` every window asks for an N-byte body instead
(`GET /blob?bytes=N`, the large-response row of part 2) and the open-loop
window runs at `--rate` (default 8,000 req/s; 2,000 suits 64 KiB bodies).

Usage: benches/hotpath.py [--reps 5] [--secs 3] [--bytes N] [--rate R] [--json FILE]
(scripts/bench.sh --parts 2 runs it as part 2a; standalone it needs
`cargo build --release --bin ringmux --examples` and nginx and haproxy on
PATH or in /usr/sbin). Loopback only; every loop is bounded in count and time.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from child_socket import Tree  # noqa: E402

PROXIES = ("ringmux-unix", "ringmux-unix-b", "ringmux-tcp", "nginx-tcp", "nginx-unix", "haproxy-tcp", "haproxy-unix")
TARGETS = ("direct",) + PROXIES
WINDOWS = ("c1", "c32", "o8k")
FIXED_RATE = 8000
CONNS = 32

HAPROXY_CONF = """
global
    nbthread {threads}
    maxconn 4096
    log stderr format raw local0 err
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    # Keep upstream connections and hand them to any client (nginx's
    # keepalive pool does the same).
    http-reuse always
frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    server s1 {upstream} maxconn 1000
"""


def haproxy_bin():
    for p in ("haproxy", "/usr/sbin/haproxy"):
        if shutil.which(p):
            return shutil.which(p)
    return None


def start_haproxy(upstream, workdir, threads=2):
    """HAProxy in front of `upstream` (`127.0.0.1:PORT` or an absolute Unix
    socket path), in the foreground (`-db`), one process."""
    os.makedirs(workdir, exist_ok=True)
    port = h.free_port()
    conf = os.path.join(workdir, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(HAPROXY_CONF.format(threads=threads, port=port, upstream=upstream))
    log = open(os.path.join(workdir, "haproxy.log"), "w")
    p = subprocess.Popen([haproxy_bin(), "-db", "-f", conf], stdout=log, stderr=log, text=True)
    log.close()
    try:
        h.wait_port(port)
    except RuntimeError:
        p.kill()
        p.wait(timeout=10)
        with open(os.path.join(workdir, "haproxy.log")) as f:
            raise RuntimeError(f"haproxy did not start on 127.0.0.1:{port}: {f.read()[-2000:]}")
    return h.Proc(p, port, name="haproxy")


def start_child(sock_path):
    """The standalone demo child, serving TCP (a free port) and `sock_path`."""
    p = subprocess.Popen(
        [h.RINGMUX, "demo-child", "--listen", "127.0.0.1:0", "--listen-unix", sock_path],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    f = h.read_lines_until(p, {"port": r"listening on http://[\d.]+:(\d+)", "unix": r"listening on unix:(\S+)"}, 20)
    return h.Proc(p, int(f["port"]), name="direct")


def child_pids(name, proc, child):
    """The child processes that answer `name`'s requests."""
    if name.startswith("ringmux"):
        return [p for p in Tree(proc).cpu_pids() if p != proc.pid]
    return [child.pid]


def window(name, proc, child, path, rate, conns, secs, body=h.SMALL_BODY):
    """One loadgen window (rate None: closed loop) with the proxy's and the
    child's CPU per request (`body` None: a GET)."""
    own = [] if name == "direct" else proc.cpu_pids()
    kids = child_pids(name, proc, child)
    p0, k0 = h.cpu_seconds(own), h.cpu_seconds(kids)
    r = h.loadgen(proc.port, path, rate, secs, conns, body=body)
    p1, k1 = h.cpu_seconds(own), h.cpu_seconds(kids)
    n = r["completed"] + r.get("warmup_sent", 0)
    bad = r["errors"] + r["timeouts"] + r["non_2xx"]
    if bad or not n:
        raise RuntimeError(f"{name}: {bad} failed requests of {n} ({r})")
    return {
        "p50_us": r["p50_us"], "p99_us": r["p99_us"], "rps": r["achieved_rps"],
        "proxy_cpu_us": None if name == "direct" else (p1 - p0) * 1e6 / n,
        "child_cpu_us": (k1 - k0) * 1e6 / n,
        "body_bytes": r["bytes"] / r["completed"] if r["completed"] else None,
    }


def start_all(work, procs):
    """Starts every target into `procs` (name -> Proc, filled as they start,
    so a failure part-way leaves the caller what to stop); the standalone
    child is `direct`."""
    sock = os.path.join(work, "child.sock")
    procs["direct"] = start_child(sock)
    # nginx's workers run as `nobody` when started as root: let them reach
    # the socket (the directory stays unlistable).
    os.chmod(work, 0o711)
    os.chmod(sock, 0o666)
    child = procs["direct"]
    for name, flags in (("ringmux-unix", ("--child-socket", "unix")), ("ringmux-unix-b", ("--child-socket", "unix")),
                        ("ringmux-tcp", ("--child-socket", "tcp"))):
        base = os.path.join(work, name)
        os.mkdir(base)
        procs[name] = h.start_ringmux(base, extra=flags)
    procs["nginx-tcp"] = h.start_nginx(child.port, os.path.join(work, "nginx-tcp"))
    procs["nginx-unix"] = h.start_nginx(None, os.path.join(work, "nginx-unix"), upstream=f"unix:{sock}")
    procs["haproxy-tcp"] = start_haproxy(f"127.0.0.1:{child.port}", os.path.join(work, "haproxy-tcp"))
    procs["haproxy-unix"] = start_haproxy(sock, os.path.join(work, "haproxy-unix"))


def measure(reps, secs, prog=None, seed=5, nbytes=None, rate=FIXED_RATE):
    """Runs the repetitions; returns {"raw": {target: [rep: {window: row}]}}."""
    if not haproxy_bin() or not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        raise RuntimeError("hotpath: nginx and haproxy are needed (scripts/bench.sh installs both)")
    work = tempfile.mkdtemp(prefix="ringmux-hotpath-")
    procs = {}
    try:
        start_all(work, procs)
        child = procs["direct"]
        key = "hotpath-bench"
        path = f"/mcp?{h.KEY}={key}" if nbytes is None else f"/blob?bytes={nbytes}&{h.KEY}={key}"
        body = h.SMALL_BODY if nbytes is None else None
        for p in procs.values():
            for _ in range(3):
                h.call(p.port, key, "echo", {"text": "warm"})
        raw = {n: [] for n in TARGETS}
        rnd = random.Random(seed)
        for rep in range(reps):
            order = list(TARGETS)
            rnd.shuffle(order)
            for n in order:
                if prog:
                    prog.step(f"part 2a: {n} (repetition {rep + 1}/{reps})")
                p = procs[n]
                raw[n].append({
                    "c1": window(n, p, child, path, None, 1, secs, body),
                    "c32": window(n, p, child, path, None, CONNS, secs, body),
                    "o8k": window(n, p, child, path, rate, CONNS, secs, body),
                })
            if not prog:
                print(f"repetition {rep + 1}/{reps}: " + ", ".join(
                    f"{n} {raw[n][-1]['c1']['p50_us']:.0f} µs / {raw[n][-1]['c32']['rps']:.0f}/s / "
                    f"{raw[n][-1]['o8k']['proxy_cpu_us'] or 0:.1f} µs CPU" for n in TARGETS), flush=True)
    finally:
        for p in procs.values():
            p.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"reps": reps, "secs": secs, "conns": CONNS, "fixed_rate": rate, "bytes": nbytes, "raw": raw}


def spread(xs):
    xs = [x for x in xs if x is not None]
    return {"median": h.med(xs), "min": min(xs), "max": max(xs)} if xs else None


def summarize(res):
    """Per-target medians and spreads, and the paired ratios."""
    raw = res["raw"]
    reps = len(raw["direct"])
    per = {}
    for n in TARGETS:
        rows = raw[n]
        added = [r["c1"]["p50_us"] - d["c1"]["p50_us"] for r, d in zip(rows, raw["direct"])]
        per[n] = {
            "c1_p50_us": spread([r["c1"]["p50_us"] for r in rows]),
            "c1_added_p50_us": spread(added) if n != "direct" else None,
            "c32_rps": spread([r["c32"]["rps"] for r in rows]),
            "c32_p50_us": spread([r["c32"]["p50_us"] for r in rows]),
            **{f"{w}_proxy_cpu_us": spread([r[w]["proxy_cpu_us"] for r in rows]) for w in WINDOWS},
            **{f"{w}_child_cpu_us": spread([r[w]["child_cpu_us"] for r in rows]) for w in WINDOWS},
        }

    def val(n, i, metric):
        r = raw[n][i]
        if metric == "added_p50":
            return r["c1"]["p50_us"] - raw["direct"][i]["c1"]["p50_us"]
        if metric == "c32_rps":
            return r["c32"]["rps"]
        return r[metric[:-len("_cpu")]]["proxy_cpu_us"]

    higher_better = {"c32_rps"}
    ratios = {}
    for metric in ("c1_cpu", "c32_cpu", "o8k_cpu", "added_p50", "c32_rps"):
        pick = max if metric in higher_better else min
        out = {}
        for test, peers in (
            ("ringmux-unix vs best unix", ("ringmux-unix", ("nginx-unix", "haproxy-unix"))),
            ("ringmux-unix vs best tcp", ("ringmux-unix", ("nginx-tcp", "haproxy-tcp"))),
            ("ringmux-tcp vs best tcp", ("ringmux-tcp", ("nginx-tcp", "haproxy-tcp"))),
            ("A/A ringmux-unix-b vs ringmux-unix", ("ringmux-unix-b", ("ringmux-unix",))),
        ):
            t, ps = peers
            xs = []
            for i in range(reps):
                b = pick(val(p, i, metric) for p in ps)
                # An added p50 at or below zero cannot be a denominator.
                if b is not None and b > 0:
                    xs.append(val(t, i, metric) / b)
            lo, hi = h.boot(xs) if xs else (None, None)
            out[test] = {"median": h.med(xs) if xs else None, "ci95": [lo, hi], "n": len(xs)}
        ratios[metric] = out
    return {"targets": per, "ratios": ratios}


def table(res):
    """Markdown for RESULTS.md / summary.md."""
    s = res.get("summary") or summarize(res)
    t, rt = s["targets"], s["ratios"]

    def cell(sp, nd=1):
        if not sp:
            return "–"
        return f"{sp['median']:.{nd}f} ({sp['min']:.{nd}f}–{sp['max']:.{nd}f})"

    out = [
        f"### Part 2a — the hot path against nginx and HAProxy ({res['reps']} repetitions, {res['secs']:g} s windows"
        + (f", {res['bytes']}-byte responses" if res.get("bytes") is not None else "") + ")\n",
        "Median (min–max) over repetitions, targets in a new random order each time. CPU: the proxy's own "
        "processes per request; the child's in the last columns. c1 / c32: closed loop on 1 / 32 connections; "
        f"o8k: open loop at {res['fixed_rate']} req/s over {res['conns']} connections.\n",
        f"| target | **CPU µs/req, o8k** ({res['fixed_rate']}/s) | CPU c32 | CPU c1 | c1 p50 (µs) | c1 added p50 (µs) | c32 req/s | child CPU o8k | child CPU c1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in TARGETS:
        r = t[n]
        out.append(
            f"| {n} | {cell(r['o8k_proxy_cpu_us'])} | {cell(r['c32_proxy_cpu_us'])} | {cell(r['c1_proxy_cpu_us'])} | "
            f"{cell(r['c1_p50_us'], 0)} | {cell(r['c1_added_p50_us'], 0)} | {cell(r['c32_rps'], 0)} | "
            f"{cell(r['o8k_child_cpu_us'])} | {cell(r['c1_child_cpu_us'])} |"
        )
    out += ["", "Paired ratios (median of per-repetition ratios, bootstrap 95 % interval; \"best\" is the better of "
            "nginx and HAProxy in that repetition):\n",
            "| ratio | CPU o8k | CPU c32 | CPU c1 | added p50, c1 | c32 req/s |", "| --- | --- | --- | --- | --- | --- |"]
    for test in rt["o8k_cpu"]:
        cells = []
        for m in ("o8k_cpu", "c32_cpu", "c1_cpu", "added_p50", "c32_rps"):
            x = rt[m][test]
            cells.append("–" if x["median"] is None else f"{x['median']:.2f} [{x['ci95'][0]:.2f}, {x['ci95'][1]:.2f}]")
        out.append(f"| {test} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def part(cfg, prog):
    """Part 2a of the harness."""
    res = measure(cfg.hot_reps, cfg.p2_secs, prog)
    res["summary"] = summarize(res)
    return res


def on_term(signum, frame):
    raise KeyboardInterrupt  # unwinds through the finally that stops every server


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--bytes", type=int, help="ask for an N-byte body (GET /blob) instead of a tools/call")
    ap.add_argument("--rate", type=int, default=FIXED_RATE, help="the open-loop window's req/s")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not (1 <= a.reps <= 50 and 0.5 <= a.secs <= 60):
        sys.exit("--reps must be 1..50 and --secs 0.5..60")
    if a.bytes is not None and not 0 <= a.bytes <= 16 << 20:
        sys.exit("--bytes must be 0..16 MiB")
    if not 1 <= a.rate <= 100_000:
        sys.exit("--rate must be 1..100000")
    signal.signal(signal.SIGTERM, on_term)
    res = measure(a.reps, a.secs, nbytes=a.bytes, rate=a.rate)
    res["summary"] = summarize(res)
    print()
    print(table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
