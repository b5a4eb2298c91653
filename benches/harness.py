#!/usr/bin/env python3
"""The benchmark harness: ringmux against its peers, every figure a comparison
measured in the same run. Run it through `scripts/bench.sh` (which builds the
binaries, installs nginx and the Python peers, then calls this file).

Parts (see benches/RESULTS.md for a reading of the numbers):

1. The seed's experiment: a child whose directory holds 20,000 one-byte files in
   21 directories is closed while another rollout's child is driven at a steady
   rate (open loop, Rust probe). Columns: the Python original (synchronous and
   off-loop cleanup, benches/pyorig/proxy.py) and ringmux. Reports the maximum
   stall and p99 against a quiet window of the same run, the proxy's event-loop
   gap, cleanup wall time (and `rm -rf` of an identical tree), RSS delta and
   threads during cleanup, plus every request's latency against time (plot).
2. The request path: small MCP `tools/call` requests at fixed arrival rates
   (open loop, Rust generator benches/loadgen.rs) straight to a fast native
   child, through ringmux, through nginx and through the Python original; one
   connection for added latency, 32 connections rising to saturation; 64 KiB
   responses; an SSE stream of 1,000 events (time to the last event).
   2a (benches/hotpath.py): the hot path against nginx and HAProxy, each with
   a TCP and a Unix-socket upstream to one child, and ringmux with
   `--child-socket unix` and `tcp`: CPU per request first, closed loops on
   1 and 32 connections, paired ratios with bootstrap intervals.
3. Scale: first-request latency for a new key, open+close churn, and ringmux's
   RSS and fd count with many live children. 3b (benches/warm.py): a Python
   tool server with 200 MiB of warm state, exec per key vs `--fork` vs the
   original's own fork: first request, private memory per child, churn.

Writes benches/results/results.json (raw), summary.md (tables) and SVG plots,
and prints the tables. Everything talks to 127.0.0.1 only; every loop is
bounded in count and time.
"""

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benches"))
import warm  # noqa: E402  (part 3b)
RINGMUX = os.path.join(ROOT, "target/release/ringmux")
PROBE = os.path.join(ROOT, "target/release/examples/probe")
LOADGEN = os.path.join(ROOT, "target/release/examples/loadgen")
PYORIG = os.path.join(ROOT, "benches/pyorig/proxy.py")
KEY = "vf_state_secret"
SMALL_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x" * 96}},
    }
)

# ---------------------------------------------------------------------------
# progress display
# ---------------------------------------------------------------------------


class Progress:
    """One line per step on stderr: `[ step/total  elapsed] what`."""

    def __init__(self, total):
        self.total = total
        self.done = 0
        self.t0 = time.monotonic()

    def step(self, what):
        self.done += 1
        el = time.monotonic() - self.t0
        self.total = max(self.total, self.done)
        print(
            f"[{self.done:3d}/{self.total:<3d} {int(el) // 60:2d}:{int(el) % 60:02d}] {what}",
            file=sys.stderr,
            flush=True,
        )

    def note(self, what):
        print(f"              {what}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# processes under test
# ---------------------------------------------------------------------------


class Proc:
    """A started server: its process, its port, and how to stop it."""

    def __init__(self, popen, port, admin=None, name=""):
        self.p = popen
        self.port = port
        self.admin = admin
        self.name = name

    @property
    def pid(self):
        return self.p.pid

    def cpu_pids(self):
        """The processes whose CPU time is this server's own: nginx's master
        and workers; for the others the process itself (a proxy's children are
        separate processes and not counted)."""
        if self.name != "nginx":
            return [self.pid]
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        return [self.pid] + [int(x) for x in out.split()]

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)
        if self.name == "nginx":
            try:
                os.killpg(self.pid, signal.SIGKILL)  # workers left behind, if any
            except (ProcessLookupError, PermissionError):
                pass


def read_lines_until(p, patterns, timeout):
    """Reads p's stdout until every regex in `patterns` matched; returns the
    first group of each."""
    found = {}
    deadline = time.time() + timeout
    box = {}

    def reader():
        for line in p.stdout:
            for name, pat in patterns.items():
                m = re.search(pat, line)
                if m and name not in found:
                    found[name] = m.group(1)
            if len(found) == len(patterns):
                box["ok"] = True
                return

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    th.join(timeout=max(0.0, deadline - time.time()))
    if len(found) != len(patterns):
        p.kill()
        p.wait(timeout=10)
        raise RuntimeError(f"server did not print {sorted(set(patterns) - set(found))}")
    # Keep draining stdout so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return found


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ringmux(base, extra=()):
    p = subprocess.Popen(
        [RINGMUX, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--base-dir", base, "--demo", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    f = read_lines_until(
        p, {"admin": r"metrics on http://([\d.:]+)/metrics", "port": r"listening on http://[\d.]+:(\d+)"}, 20
    )
    return Proc(p, int(f["port"]), admin=f["admin"], name="ringmux")


def start_demo_child():
    p = subprocess.Popen(
        [RINGMUX, "demo-child", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    f = read_lines_until(p, {"port": r"listening on http://[\d.]+:(\d+)"}, 20)
    return Proc(p, int(f["port"]), name="direct")


NGINX_CONF = """
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream child {{
        server {upstream};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://child;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            # With buffering off nginx relays a body through this one buffer;
            # the default (one page) would cost 16 read/write pairs per 64 KiB.
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 128k;
        }}
    }}
}}
"""


def start_nginx(upstream_port, workdir, workers=2, upstream=None):
    """nginx in front of 127.0.0.1:`upstream_port`, or of `upstream` as
    nginx spells it (`unix:/path` for a Unix socket)."""
    os.makedirs(workdir, exist_ok=True)
    port = free_port()
    conf = os.path.join(workdir, "nginx.conf")
    upstream = upstream or f"127.0.0.1:{upstream_port}"
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(workers=workers, dir=workdir, upstream=upstream, port=port))
    p = subprocess.Popen(
        ["nginx", "-c", conf, "-p", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: stop() can take the workers too
    )
    try:
        wait_port(port)
    except RuntimeError:
        p.kill()
        p.wait(timeout=10)
        try:
            with open(os.path.join(workdir, "error.log")) as f:
                log = f.read()[-2000:]
        except OSError:
            log = ""
        raise RuntimeError(f"nginx did not start on 127.0.0.1:{port}: {log}")
    return Proc(p, port, name="nginx")


def start_pyorig(python, base, mode="offloop", nodelay=True, child="exec"):
    """The Python original. child="exec": the forked child execs the same
    native demo child ringmux runs (fd 3); child="python": the faithful fork
    that serves a Python app with uvicorn (first requests pay its 50 ms
    connect polling)."""
    args = [python, PYORIG, "--listen", "127.0.0.1:0", "--base-dir", base, "--mode", mode, "--child", child]
    if child == "exec":
        args += ["--child-cmd", RINGMUX, "demo-child"]
    if nodelay:
        args.insert(2, "--nodelay")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    f = read_lines_until(p, {"port": r"listening on http://[\d.]+:(\d+)"}, 60)
    return Proc(p, int(f["port"]), name=f"pyorig-{mode}{'' if nodelay else '-as-written'}")


# ---------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------


def call(port, key, name, args, timeout=180):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": args}})
    c.request("POST", f"/mcp?{KEY}={key}", body=body, headers={"content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"{name}: HTTP {r.status}: {data[:200]!r}")
    return data


def close_key(port, key, timeout=180):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", f"/vf/close?{KEY}={key}", body=b"")
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def ringmux_metrics(admin):
    out = {}
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
    return out


def worker_lag(m):
    """The largest data-plane event-loop gap since the previous scrape, from
    parsed ringmux metrics."""
    return max(v for k, v in m.items() if k.startswith("ringmux_worker_loop_lag_recent_max_seconds"))


def loop_gap_s(proc):
    """The proxy's largest event-loop gap since the last call (resets it)."""
    if proc.admin:
        return worker_lag(ringmux_metrics(proc.admin))
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/_pyorig/metrics", timeout=30) as r:
        return json.loads(r.read())["loop_gap_max_s"]


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "Threads"):
                    out[k] = int(v.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def cpu_seconds(pids):
    """User + system CPU time of `pids` (process-wide: /proc/PID/stat counts
    threads that already exited too, such as the demo child's per-connection
    threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                data = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        rest = data[data.rindex(")") + 2 :].split()
        total += int(rest[11]) + int(rest[12])
    return total / tick


def pss_kib(pid):
    """Proportional set size (shared pages split among their users)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def children_of(pid):
    try:
        out = subprocess.run(["ps", "-o", "pid=,stat=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [line.split() for line in out.splitlines() if line.strip()]


class Sampler:
    """Samples a process's RSS and thread count every 5 ms while running."""

    def __init__(self, pid):
        self.pid = pid
        self.max_rss = 0
        self.max_threads = 0
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_ev.is_set():
            s = proc_status(self.pid)
            self.max_rss = max(self.max_rss, s.get("VmRSS", 0))
            self.max_threads = max(self.max_threads, s.get("Threads", 0))
            self.stop_ev.wait(0.005)

    def __enter__(self):
        self.th.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.th.join(timeout=5)


def probe(port, key, rate, secs, side_path=None, side_at_ms=0, series=None):
    cmd = [
        PROBE, "--addr", f"127.0.0.1:{port}", "--path", f"/mcp?{KEY}={key}",
        "--body", SMALL_BODY, "--rate", str(rate), "--secs", str(secs),
    ]
    if side_path:
        cmd += ["--side-url", side_path, "--side-at-ms", str(side_at_ms)]
    if series:
        cmd += ["--series", series]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=secs + 240)
    return json.loads(out.stdout)


def loadgen(port, path, rate, secs, conns, body=None, mode="full", warmup=0.5, cpu_of=None, extra=()):
    """Runs benches/loadgen.rs (`rate=None`: closed loop, `--closed`); with
    `cpu_of` (a Proc), also reports that server's CPU time per completed
    request (`cpu_us_per_req`, warm-up included in both counts)."""
    pids = cpu_of.cpu_pids() if cpu_of else []
    c0 = cpu_seconds(pids)
    cmd = [
        LOADGEN, "--addr", f"127.0.0.1:{port}", "--path", path,
        *(["--closed"] if rate is None else ["--rate", str(rate)]),
        "--secs", str(secs), "--conns", str(conns), "--mode", mode, "--warmup", str(warmup),
    ]
    if body is not None:
        cmd += ["--body", body]
    cmd += list(extra)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=secs + warmup + 120)
    r = json.loads(out.stdout)
    if cpu_of:
        n = r["completed"] + r.get("warmup_sent", 0)
        r["cpu_us_per_req"] = (cpu_seconds(pids) - c0) * 1e6 / n if n else None
    return r


class TrashWatch:
    """Polls ringmux's metrics every 20 ms from `armed_after` s on; stop()
    returns when (ms from start) its trash was first seen empty with nothing
    being deleted, or None."""

    def __init__(self, admin, armed_after):
        self.admin = admin
        self.t0 = time.perf_counter()
        self.armed_after = armed_after
        self.gone = None
        self.ev = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        while not self.ev.wait(0.02):
            now = time.perf_counter() - self.t0
            if now < self.armed_after + 0.01 or self.gone is not None:
                continue
            try:
                m = ringmux_metrics(self.admin)
            except OSError:
                continue
            if m.get("ringmux_trash_trees", 0) == 0 and m.get("ringmux_cleanups_in_flight", 0) == 0:
                self.gone = (time.perf_counter() - self.t0) * 1000

    def stop(self):
        self.ev.set()
        self.th.join(timeout=5)
        return self.gone


def make_tree(root, files, dirs):
    """Same layout as the demo's write_files: nested d0/d1/.../d{dirs-1}."""
    paths = [root]
    p = root
    for i in range(dirs):
        p = os.path.join(p, f"d{i}")
        paths.append(p)
    for q in paths:
        os.makedirs(q, exist_ok=True)
    for j in range(files):
        with open(os.path.join(paths[j % len(paths)], f"f{j}"), "wb") as f:
            f.write(b"x")


def window_latencies(series_path, span_us):
    """Latencies (µs) of the probe requests scheduled inside [start, end) µs."""
    out = []
    with open(series_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and span_us[0] <= int(parts[0]) < span_us[1]:
                out.append(int(parts[1]))
    if not out:
        raise RuntimeError(f"no probe request scheduled in {span_us} µs")
    return out


def pct_of(values, q):
    """The probe's percentile rule: the value at index q·n of the sorted list."""
    v = sorted(values)
    return v[min(int(q * len(v)), len(v) - 1)]


def boot(xs, reps=4000, seed=1):
    """Bootstrap 95 % interval of the median of `xs` (resampling rounds)."""
    import random

    rnd = random.Random(seed)
    m = sorted(statistics.median(rnd.choices(xs, k=len(xs))) for _ in range(reps))
    return m[int(0.025 * reps)], m[int(0.975 * reps) - 1]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------
# part 1: the seed's experiment
# ---------------------------------------------------------------------------


def part1(cfg, prog, outdir, workdir):
    columns = [("python-sync", "sync"), ("python-offloop", "offloop"), ("ringmux", None)]
    res = {"columns": {}, "rate_per_s": cfg.p1_rate, "window_s": cfg.p1_window, "files": cfg.files, "dirs": cfg.dirs + 1}
    for col, mode in columns:
        base = tempfile.mkdtemp(prefix=f"p1-{col}-", dir=workdir)
        proc = start_ringmux(base) if mode is None else start_pyorig(cfg.python, base, mode=mode, nodelay=True)
        runs = []
        try:
            pkey = f"probe-{uuid.uuid4().hex}"
            call(proc.port, pkey, "echo", {"text": "warm"})
            for run in range(cfg.p1_runs):
                prog.step(f"part 1: {col} run {run + 1}/{cfg.p1_runs}")
                victim = f"victim-{uuid.uuid4().hex}"
                call(proc.port, victim, "write_files", {"count": cfg.files, "dirs": cfg.dirs})
                loop_gap_s(proc)  # reset
                quiet_series = os.path.join(workdir, f"{col}-{run}-quiet.txt")
                quiet = probe(proc.port, pkey, cfg.p1_rate, cfg.p1_window, series=quiet_series)
                quiet_gap = loop_gap_s(proc)
                rss0 = proc_status(proc.pid).get("VmRSS", 0)
                thr0 = proc_status(proc.pid).get("Threads", 0)
                side_at = 500
                series = os.path.join(workdir, f"{col}-{run}-cleanup.txt")
                watch = TrashWatch(proc.admin, side_at / 1000) if proc.admin else None
                with Sampler(proc.pid) as smp:
                    clean = probe(
                        proc.port, pkey, cfg.p1_rate, cfg.p1_window,
                        side_path=f"/vf/close?{KEY}={victim}", side_at_ms=side_at, series=series,
                    )
                # ringmux answers the close once the tree is in its trash and
                # deletes it afterwards: its cleanup lasts until the trash is
                # empty (polled); the Python original's until its answer.
                gone_ms = (watch.stop() or cfg.p1_window * 1000) if watch else None
                if gone_ms is not None:
                    clean["side_ms"] = max(clean["side_ms"], gone_ms - side_at)
                rss1 = proc_status(proc.pid).get("VmRSS", 0)
                clean_gap = loop_gap_s(proc)
                tree = os.path.join(base, f"rmrf-{run}")
                make_tree(tree, cfg.files, cfg.dirs)
                t = time.perf_counter()
                subprocess.run(["rm", "-rf", tree], check=True)
                rmrf = time.perf_counter() - t
                # Like for like: the requests scheduled between the close
                # and its answer, against the requests scheduled in the same
                # span of the quiet window.
                span = (side_at * 1000, side_at * 1000 + clean["side_ms"] * 1000)
                during = window_latencies(series, span)
                quiet_same = window_latencies(quiet_series, span)
                r = {
                    "quiet_p50_ms": pct_of(quiet_same, 0.5) / 1e3,
                    "quiet_p99_ms": pct_of(quiet_same, 0.99) / 1e3,
                    "quiet_max_ms": max(quiet_same) / 1e3,
                    "cleanup_p50_ms": pct_of(during, 0.5) / 1e3,
                    "cleanup_p99_ms": pct_of(during, 0.99) / 1e3,
                    "cleanup_max_ms": max(during) / 1e3,
                    "requests_during_cleanup": len(during),
                    "whole_window_quiet_max_ms": quiet["max_us"] / 1e3,
                    "whole_window_cleanup_max_ms": clean["max_us"] / 1e3,
                    "quiet_loop_gap_ms": quiet_gap * 1e3,
                    "cleanup_loop_gap_ms": clean_gap * 1e3,
                    "close_latency_s": clean["side_ms"] / 1e3,
                    "rm_rf_s": rmrf,
                    "rss_delta_kib": rss1 - rss0,
                    "rss_peak_delta_kib": max(smp.max_rss, rss1) - rss0,
                    "threads_before": thr0,
                    "threads_during_cleanup_max": smp.max_threads,
                    "side_at_ms": side_at,
                }
                r["p99_ratio"] = r["cleanup_p99_ms"] / r["quiet_p99_ms"]
                r["max_added_ms"] = r["cleanup_max_ms"] - r["quiet_max_ms"]
                with open(series) as f:
                    r["series"] = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
                runs.append(r)
                prog.note(
                    f"max stall {r['cleanup_max_ms']:.2f} ms (quiet {r['quiet_max_ms']:.2f}), "
                    f"p99 x{r['p99_ratio']:.2f}, close {r['close_latency_s']:.2f} s, rm -rf {rmrf:.2f} s"
                )
        finally:
            proc.stop()
            shutil.rmtree(base, ignore_errors=True)
        keys = [k for k in runs[0] if k != "series"]
        summary = {k: med(r[k] for r in runs) for k in keys}
        # The run whose max stall is the median one is the one plotted.
        order = sorted(range(len(runs)), key=lambda i: runs[i]["cleanup_max_ms"])
        plotted = runs[order[len(order) // 2]]
        res["columns"][col] = {"summary": summary, "runs": [{k: v for k, v in r.items() if k != "series"} for r in runs],
                               "plotted_series": plotted["series"], "plotted_side_at_ms": plotted["side_at_ms"],
                               "plotted_close_s": plotted["close_latency_s"]}
    return res


# ---------------------------------------------------------------------------
# part 2: the request path
# ---------------------------------------------------------------------------


def part2(cfg, prog, workdir):
    res = {"targets": {}, "sweep_conns": cfg.conns}
    child = start_demo_child()
    procs = {"direct": child}
    base_r = tempfile.mkdtemp(prefix="p2-ringmux-", dir=workdir)
    base_p = tempfile.mkdtemp(prefix="p2-pyorig-", dir=workdir)
    base_w = tempfile.mkdtemp(prefix="p2-pyorig-aw-", dir=workdir)
    try:
        procs["ringmux"] = start_ringmux(base_r)
        procs["nginx"] = start_nginx(child.port, os.path.join(workdir, "nginx"))
        procs["python-original"] = start_pyorig(cfg.python, base_p, mode="offloop", nodelay=True)
        # As written, the original serves its Python app with uvicorn on a
        # socket without TCP_NODELAY (the native demo child would set it on
        # its own accepted sockets and hide the delayed-ACK penalty).
        procs["python-original-as-written"] = start_pyorig(
            cfg.python, base_w, mode="offloop", nodelay=False, child="python"
        )
        key = f"bench-{uuid.uuid4().hex[:8]}"
        mcp_path = f"/mcp?{KEY}={key}"
        for name, p in procs.items():
            # Start the key's child (proxies) and warm the path.
            for _ in range(3):
                call(p.port, key, "echo", {"text": "warm"})
        # (a) one keep-alive connection, fixed low rate: added latency.
        # Repeated with the targets interleaved (the machine drifts); the
        # medians of the repetitions are reported.
        one = {name: [] for name in procs}
        names = list(procs)
        for rep in range(cfg.reps):
            # Rotate the order each repetition so no target always runs first.
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                p = procs[name]
                rate1 = 10 if name.endswith("as-written") else cfg.rate1
                prog.step(f"part 2: {name}: 1 connection @ {rate1}/s (repetition {rep + 1}/{cfg.reps})")
                r = loadgen(p.port, mcp_path, rate1, cfg.p2_secs, 1, body=SMALL_BODY, cpu_of=p)
                r["rate"] = rate1
                one[name].append(r)
        for name, p in procs.items():
            t = {}
            as_written = name.endswith("as-written")
            reps = one[name]
            t["one_conn_reps"] = reps
            t["one_conn"] = {k: med(r[k] for r in reps) for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")}
            t["one_conn"]["rate"] = reps[0]["rate"]
            # Added latency, paired: this target's p50 minus the direct
            # child's p50 of the same repetition.
            added = [r["p50_us"] - d["p50_us"] for r, d in zip(reps, one["direct"])]
            t["one_conn"]["added_p50_us"] = med(added)
            t["one_conn"]["added_p50_us_range"] = [min(added), max(added)]
            # (b) many connections, rising rate until saturation.
            sweep = []
            for rate in cfg.py_rates if name.startswith("python") else cfg.rates:
                prog.step(f"part 2: {name}: {cfg.conns} connections @ {rate}/s")
                r = loadgen(p.port, mcp_path, rate, cfg.p2_secs, cfg.conns, body=SMALL_BODY, cpu_of=p)
                r["rate"] = rate
                # Kept up: (almost) every scheduled request was sent and none
                # timed out. Otherwise the requests never sent are missing from
                # the percentiles, which are then only lower bounds.
                r["kept_up"] = r["unsent"] <= 0.001 * r["scheduled"] and r["timeouts"] == 0 and r["errors"] == 0
                sweep.append(r)
                prog.note(
                    f"achieved {r['achieved_rps']:.0f}/s, p50 {ms(r['p50_us'])} ms, p99 {ms(r['p99_us'])} ms, "
                    f"errors {r['errors']}, unsent {r['unsent']}, {fmt(r['cpu_us_per_req'], 1)} µs CPU/request"
                )
                if r["achieved_rps"] < 0.85 * rate or not r["p99_us"] or r["p99_us"] > 1e6:
                    break
            t["sweep"] = sweep
            t["saturation_rps"] = max(r["achieved_rps"] for r in sweep)
            # The highest offered rate served completely with p99 ≤ 10 ms.
            good = [r["rate"] for r in sweep if r["kept_up"] and r["p99_us"] and r["p99_us"] <= 10_000]
            t["sustained_rps_p99_10ms"] = max(good) if good else None
            if not as_written:
                # (c) 64 KiB responses.
                blob = f"/blob?bytes=65536&{KEY}={key}"
                prog.step(f"part 2: {name}: 64 KiB responses")
                t["blob_one_conn"] = loadgen(p.port, blob, cfg.blob_rate, cfg.p2_secs, 1)
                t["blob_sat"] = loadgen(p.port, blob, 200000, cfg.p2_secs, cfg.conns)
                # (d) SSE: 1,000 small events, time to the last one.
                prog.step(f"part 2: {name}: SSE stream of 1,000 events")
                t["sse"] = loadgen(p.port, f"/sse?n=1000&interval_ms=0&{KEY}={key}", cfg.sse_rate, cfg.p2_secs, 1, mode="sse")
            res["targets"][name] = t
    finally:
        for p in procs.values():
            p.stop()
        for b in (base_r, base_p, base_w):
            shutil.rmtree(b, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------
# part 3: scale
# ---------------------------------------------------------------------------


def first_request_ms(port, n, prog, name):
    lats = []
    for i in range(n):
        key = f"first-{uuid.uuid4().hex}"
        t = time.perf_counter()
        call(port, key, "echo", {"text": "hi"})
        lats.append((time.perf_counter() - t) * 1e3)
        close_key(port, key)
    lats.sort()
    return {"n": n, "p50_ms": med(lats), "p90_ms": lats[int(0.9 * (n - 1))], "max_ms": lats[-1]}


def churn(port, n, conc):
    def one(_):
        key = f"churn-{uuid.uuid4().hex}"
        call(port, key, "echo", {"text": "hi"})
        if close_key(port, key) != 200:
            raise RuntimeError("close failed")

    t = time.perf_counter()
    with cf.ThreadPoolExecutor(conc) as ex:
        list(ex.map(one, range(n)))
    el = time.perf_counter() - t
    return {"rollouts": n, "concurrency": conc, "seconds": el, "rollouts_per_s": n / el}


def part3(cfg, prog, workdir):
    res = {}
    for name in ("ringmux", "python-original", "python-original-native-child"):
        base = tempfile.mkdtemp(prefix=f"p3-{name}-", dir=workdir)
        if name == "ringmux":
            proc = start_ringmux(base, ["--max-children", str(cfg.live + 100)])
        else:
            # Its own forked uvicorn child (the seed), and the native child ringmux
            # runs (its exec mode listens before the fork, so no polling wait).
            child = "python" if name == "python-original" else "exec"
            proc = start_pyorig(cfg.python, base, mode="offloop", nodelay=True, child=child)
        r = {}
        try:
            prog.step(f"part 3: {name}: first request for {cfg.first_n} new keys")
            r["first_request"] = first_request_ms(proc.port, cfg.first_n, prog, name)
            prog.note(f"p50 {r['first_request']['p50_ms']:.1f} ms")
            prog.step(f"part 3: {name}: churn of {cfg.churn_n} rollouts, 20 at a time")
            r["churn"] = churn(proc.port, cfg.churn_n, 20)
            prog.note(f"{r['churn']['rollouts_per_s']:.0f} rollouts/s")
            if name == "ringmux":
                prog.step(f"part 3: ringmux: {cfg.live} live children")
                idle = proc_status(proc.pid)
                keys = [f"live-{i}-{uuid.uuid4().hex[:8]}" for i in range(cfg.live)]
                with cf.ThreadPoolExecutor(20) as ex:
                    list(ex.map(lambda k: call(proc.port, k, "echo", {"text": "hi"}), keys))
                live = proc_status(proc.pid)
                kids = children_of(proc.pid)
                child_pss = sum(pss_kib(pid) for pid, _stat in kids)
                with cf.ThreadPoolExecutor(20) as ex:
                    list(ex.map(lambda k: close_key(proc.port, k), keys))
                time.sleep(0.5)
                after = proc_status(proc.pid)
                left_kids = [k for k in children_of(proc.pid)]
                left_dirs = sum(len(os.listdir(os.path.join(base, d))) for d in os.listdir(base)
                                if os.path.isdir(os.path.join(base, d)) and d.startswith("ringmux-"))
                r["live"] = {
                    "children": len(kids),
                    "rss_idle_kib": idle.get("VmRSS"),
                    "rss_live_kib": live.get("VmRSS"),
                    "fds_idle": idle.get("fds"),
                    "fds_live": live.get("fds"),
                    "threads_live": live.get("Threads"),
                    "children_pss_total_kib": child_pss,
                    "rss_after_close_kib": after.get("VmRSS"),
                    "fds_after_close": after.get("fds"),
                    "children_left": len(left_kids),
                    "child_dirs_left": left_dirs,
                }
                prog.note(
                    f"{len(kids)} children: RSS {idle.get('VmRSS')} -> {live.get('VmRSS')} KiB, "
                    f"fds {idle.get('fds')} -> {live.get('fds')}; after close: {len(left_kids)} children, {left_dirs} dirs"
                )
        finally:
            proc.stop()
            shutil.rmtree(base, ignore_errors=True)
        res[name] = r
    # 3b: a Python tool server with a large warm state: exec vs --fork vs the original's fork.
    res["warm"] = warm.run(cfg.python, workdir, quick=cfg.quick, prog=prog)
    return res


# ---------------------------------------------------------------------------
# tables and plots
# ---------------------------------------------------------------------------


def ms(us_value):
    return "–" if us_value is None else f"{us_value / 1e3:.2f}"


def fmt(v, nd=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def cpu_reference(sweep, rate=8000):
    """The sweep step whose CPU per request is quoted: the one at `rate`, or
    else the fastest step that still kept up with its offered rate."""
    for st in sweep:
        if st["rate"] == rate and st["achieved_rps"] >= 0.95 * rate:
            return st
    kept = [st for st in sweep if st["achieved_rps"] >= 0.95 * st["rate"]]
    return kept[-1] if kept else None


def tables(results):
    out = []
    p1 = results.get("part1")
    if p1:
        out.append(f"### Part 1 — cleanup of {p1['files']:,} files in {p1['dirs']} directories while another rollout is driven at {p1['rate_per_s']:.0f} req/s\n")
        out.append(
            "Medians over paired runs of per-run figures (so a ratio is the median of the runs' ratios). *During "
            "cleanup*: the probe requests scheduled between the close request and its answer; *quiet*: the requests "
            "scheduled in the same span of a window of the same run without cleanup.\n"
        )
        cols = list(p1["columns"])
        out.append("| metric | " + " | ".join(cols) + " |")
        out.append("| --- |" + " --- |" * len(cols))
        rows = [
            ("max stall during cleanup (ms)", "cleanup_max_ms", 2),
            ("max, quiet (ms)", "quiet_max_ms", 2),
            ("max added (ms, median of per-run differences)", "max_added_ms", 2),
            ("p99 during cleanup (ms)", "cleanup_p99_ms", 2),
            ("p99, quiet (ms)", "quiet_p99_ms", 2),
            ("p99 ratio", "p99_ratio", 2),
            ("proxy event-loop gap in the cleanup window (ms; ringmux: data-plane workers)", "cleanup_loop_gap_ms", 2),
            ("event-loop gap, quiet window (ms)", "quiet_loop_gap_ms", 2),
            ("requests during cleanup", "requests_during_cleanup", 0),
            ("close → cleaned (s)", "close_latency_s", 3),
            ("`rm -rf` of the same tree (s)", "rm_rf_s", 3),
            ("RSS delta of the proxy (KiB)", "rss_delta_kib", 0),
            ("threads before → max during cleanup", None, 0),
        ]
        for label, k, nd in rows:
            cells = []
            for c in cols:
                s = p1["columns"][c]["summary"]
                if k is None:
                    cells.append(f"{fmt(s['threads_before'], 0)} → {fmt(s['threads_during_cleanup_max'], 0)}")
                else:
                    v = s[k]
                    cells.append(fmt(round(v) if nd == 0 and v is not None else v, nd))
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append(f"\nRuns per column: {len(p1['columns'][cols[0]]['runs'])}.\n")
    p2 = results.get("part2")
    if p2:
        t = p2["targets"]
        out.append("### Part 2 — the request path (small `tools/call`, keep-alive, open loop)\n")
        out.append(
            "One connection: medians of the repetitions, targets interleaved. Saturation: the highest throughput "
            "reached in the rising-rate sweep. Server CPU: user + system time of the server's own processes per "
            "request (the child's not included, except for *direct*, which is the child).\n"
        )
        d = t.get("direct", {}).get("one_conn", {}).get("p50_us")
        out.append("| target | 1 conn: rate | p50 (µs) | added p50 vs direct (µs): median (range) of paired repetitions | p99 (µs) | max (µs) | "
                   f"{p2['sweep_conns']} conns: peak throughput (req/s) | highest rate served with p99 ≤ 10 ms | server CPU per request (µs) at |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, r in t.items():
            o = r["one_conn"]
            added = o.get("added_p50_us")
            lo, hi = o.get("added_p50_us_range", [None, None])
            if name == "direct" or lo is None:
                added_cell = fmt(added, 0)
            elif name.endswith("as-written"):
                added_cell = "– (other rate and child)"
            else:
                added_cell = f"{added:.0f} ({lo:.0f} … {hi:.0f})"
            cpu = cpu_reference(r["sweep"])
            cpu_cell = f"{cpu['cpu_us_per_req']:.1f} @ {cpu['rate']}/s" if cpu and cpu.get("cpu_us_per_req") else "–"
            out.append(
                f"| {name} | {o['rate']}/s | {o['p50_us']:.0f} | {added_cell} | {o['p99_us']:.0f} | {o['max_us']:.0f} | "
                f"{r['saturation_rps']:.0f} | {fmt(r.get('sustained_rps_p99_10ms'), 0)} | {cpu_cell} |"
            )
        out.append("")
        out.append("| target | 64 KiB: p50 / p99 (µs), 1 conn | 64 KiB: req/s, saturated | SSE 1,000 events: time to last event p50 / max (ms), n |")
        out.append("| --- | --- | --- | --- |")
        for name, r in t.items():
            if "blob_one_conn" not in r:
                continue
            b, s, e = r["blob_one_conn"], r["blob_sat"], r["sse"]
            out.append(
                f"| {name} | {b['p50_us']:.0f} / {b['p99_us']:.0f} | {s['achieved_rps']:.0f} | {ms(e['p50_us'])} / {ms(e['max_us'])}, {e['completed']} |"
            )
        out.append("")
        ng, rm = t.get("nginx"), t.get("ringmux")
        if ng and rm and d is not None:
            out.append(
                f"Headline: ringmux adds {rm['one_conn']['added_p50_us']:.0f} µs at p50 over the child, nginx "
                f"{ng['one_conn']['added_p50_us']:.0f} µs (medians of {len(rm['one_conn_reps'])} paired repetitions); "
                f"saturation ringmux / nginx = {rm['saturation_rps'] / ng['saturation_rps']:.2f}×.\n"
            )
    if results.get("part2a"):
        import hotpath  # see main()

        out.append(hotpath.table(results["part2a"]))
    p3 = results.get("part3")
    if p3:
        out.append("### Part 3 — scale\n")
        out.append("| | first request, new key: p50 / p90 / max (ms) | open+close churn (rollouts/s, 20 at a time) |")
        out.append("| --- | --- | --- |")
        for name, r in p3.items():
            if name == "warm":
                continue
            f, c = r["first_request"], r["churn"]
            out.append(f"| {name} | {f['p50_ms']:.2f} / {f['p90_ms']:.2f} / {f['max_ms']:.2f} | {c['rollouts_per_s']:.0f} |")
        lv = p3.get("ringmux", {}).get("live")
        if lv:
            out.append("")
            out.append(
                f"ringmux with {lv['children']} live children: RSS {lv['rss_idle_kib']} → {lv['rss_live_kib']} KiB, "
                f"fds {lv['fds_idle']} → {lv['fds_live']}, {lv['threads_live']} threads; the children together "
                f"{lv['children_pss_total_kib'] // 1024} MiB (PSS). After closing all: {lv['children_left']} children, "
                f"{lv['child_dirs_left']} child directories left, fds {lv['fds_after_close']}.\n"
            )
        if p3.get("warm"):
            out.append(warm.table(p3["warm"]))
    return "\n".join(out)


def save_figure(plt, fig, outdir, name):
    """Writes `name`.svg and a PNG beside it; returns the SVG's path."""
    fig.tight_layout()
    path = os.path.join(outdir, f"{name}.svg")
    fig.savefig(path)
    fig.savefig(os.path.join(outdir, f"{name}.png"), dpi=90)
    plt.close(fig)
    return path


def plots(results, outdir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("harness: matplotlib missing, no plots", file=sys.stderr)
        return []
    made = []
    p1 = results.get("part1")
    if p1:
        cols = list(p1["columns"])
        fig, axes = plt.subplots(len(cols), 1, figsize=(9, 2.6 * len(cols)), sharex=True, sharey=True)
        for ax, c in zip(axes, cols):
            col = p1["columns"][c]
            xs = [o / 1e6 for o, _ in col["plotted_series"]]
            ys = [max(l / 1e3, 0.01) for _, l in col["plotted_series"]]
            ax.plot(xs, ys, ".", ms=2)
            t0 = col["plotted_side_at_ms"] / 1e3
            ax.axvspan(t0, t0 + col["plotted_close_s"], color="tab:red", alpha=0.15, label="close → cleaned")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_ylabel("latency (ms)")
            ax.set_title(f"{c}: max {max(ys):.2f} ms", fontsize=9)
            ax.legend(loc="upper right", fontsize=8)
        axes[-1].set_xlabel("time since the window started (s)")
        fig.suptitle(f"Other rollout's request latency while a {p1['files']:,}-file child is closed", fontsize=10)
        made.append(save_figure(plt, fig, outdir, "part1_latency_over_time"))
    p2 = results.get("part2")
    if p2:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for name, r in p2["targets"].items():
            ok = [s for s in r["sweep"] if s.get("kept_up") and s["p50_us"]]
            over = [s for s in r["sweep"] if not s.get("kept_up") and s["p50_us"]]
            for a, k in ((ax[0], "p50_us"), (ax[1], "p99_us")):
                line = a.plot([s["achieved_rps"] for s in ok], [s[k] / 1e3 for s in ok], "o-", label=name, ms=3)
                a.plot([s["achieved_rps"] for s in over], [s[k] / 1e3 for s in over], "o", mfc="none",
                       color=line[0].get_color(), ms=5)
        for a, what in zip(ax, ("p50", "p99")):
            a.set_xscale("log")
            a.set_yscale("log")
            a.set_xlabel("achieved throughput (req/s)")
            a.set_ylabel(f"{what} latency (ms, from scheduled start)")
            a.grid(True, which="both", alpha=0.3)
        ax[0].legend(fontsize=8)
        fig.suptitle(
            f"Small tools/call, {p2['sweep_conns']} keep-alive connections, open loop "
            "(hollow: overloaded, requests left unsent: latency is a lower bound)",
            fontsize=10,
        )
        made.append(save_figure(plt, fig, outdir, "part2_latency_vs_throughput"))
    return made


def machine():
    info = {"kernel": platform.release(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
        info["nginx"] = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        info["fs_of_workdir"] = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
    except (OSError, IndexError):
        pass
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs, shorter windows: under 3 minutes")
    ap.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 2 or 1,3")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches/results"), help="directory for JSON, tables, plots")
    ap.add_argument("--python", default=sys.executable, help="Python that runs the Python original (needs uvicorn, httpx)")
    a = ap.parse_args()

    def on_term(signum, frame):
        raise KeyboardInterrupt  # unwinds through the finally blocks that stop every server

    signal.signal(signal.SIGTERM, on_term)
    parts = {int(x) for x in a.parts.split(",") if x.strip()}
    q = a.quick
    cfg = argparse.Namespace(
        python=a.python,
        files=20000,
        dirs=20,
        p1_runs=1 if q else 3,
        p1_rate=200,
        p1_window=3.0,
        p2_secs=1.5 if q else 3.0,
        rate1=200,
        conns=32,
        rates=[2000, 8000, 32000, 100000] if q else [1000, 2000, 4000, 8000, 16000, 20000, 24000, 28000, 32000, 40000, 48000, 64000],
        py_rates=[100, 400, 1600] if q else [100, 200, 400, 800, 1600, 3200],
        blob_rate=200,
        reps=1 if q else 5,
        hot_reps=1 if q else 5,
        sse_rate=10,
        first_n=10 if q else 50,
        churn_n=100 if q else 500,
        live=200 if q else 1000,
        quick=q,
    )
    for binary in (RINGMUX, PROBE, LOADGEN):
        if not os.path.exists(binary):
            sys.exit(f"harness: {binary} missing (run scripts/bench.sh, which builds it)")
    os.makedirs(a.out, exist_ok=True)
    total = (
        (3 * cfg.p1_runs if 1 in parts else 0)
        + (5 * cfg.reps + 3 * (2 + len(cfg.rates)) + 2 * len(cfg.py_rates) + 8 * cfg.hot_reps if 2 in parts else 0)
        + (7 + 12 if 3 in parts else 0)
    )
    prog = Progress(total)
    workdir = tempfile.mkdtemp(prefix="ringmux-bench-")
    results = {"machine": machine(), "quick": q, "command": " ".join(["scripts/bench.sh"] + (["--quick"] if q else [])),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t0 = time.monotonic()
    try:
        if 1 in parts:
            results["part1"] = part1(cfg, prog, a.out, workdir)
        if 2 in parts:
            import hotpath  # part 2a; imported here because it imports this module

            results["part2a"] = hotpath.part(cfg, prog)
            results["part2"] = part2(cfg, prog, workdir)
        if 3 in parts:
            results["part3"] = part3(cfg, prog, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - t0, 1)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    md = tables(results)
    made = plots(results, a.out)
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(f"# Benchmark results ({'quick' if q else 'full'} run, {results['started']}, {results['seconds']} s)\n\n")
        f.write(f"Machine: {json.dumps(results['machine'])}\n\n")
        f.write(md + "\n")
        for p in made:
            f.write(f"\n![{os.path.basename(p)}]({os.path.basename(p)})\n")
    print(md)
    print(f"\nharness: wrote {a.out}/results.json, summary.md and {len(made)} plot(s) in {results['seconds']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
