"""The benchmark tools themselves: benches/loadgen.rs, benches/probe.rs and
benches/pyorig/proxy.py (what scripts/bench.sh -> benches/harness.py relies on).

Real binaries and real sockets. No timing thresholds (the tests run on noisy
shared VMs): they check counts, the documented output fields, and that the
tools' numbers agree with each other and with what the server actually sent.

loadgen and probe are cargo examples: `cargo build --release --examples`
(they are looked up next to RINGMUX_BIN, in its `examples/` directory).
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import (
    HTTP_TIMEOUT,
    KEY_PARAM,
    PY,
    REPO,
    RINGMUX_BIN,
    children_of,
    count_files,
    key_hash_dir,
    kill_with_children,
    pid_alive,
    proc_stat,
    procs_with_cwd_under,
    wait_until,
)

EXAMPLES = RINGMUX_BIN.parent / "examples"
LOADGEN = EXAMPLES / "loadgen"
PROBE = EXAMPLES / "probe"
PYORIG = REPO / "benches" / "pyorig" / "proxy.py"

# Bound on every tool run (the runs themselves last ~1-2 s).
TOOL_TIMEOUT = 40.0

ECHO_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x" * 96}},
    }
)

# Every field loadgen's `//!` doc promises in its JSON object.
LOADGEN_FIELDS = {
    "sent", "completed", "errors", "timeouts", "non_2xx", "reconnects", "duration_s",
    "achieved_rps", "target_rps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
    "mean_us", "events", "bytes", "scheduled", "unsent", "warmup_sent", "warmup_skipped",
    "send_lag_p50_us", "send_lag_p99_us", "conns", "threads", "mode",
}
LATENCY_FIELDS = ("p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us")
PROBE_FIELDS = {"count", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "side_ms"}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def need(binary: Path):
    assert binary.exists(), (
        f"{binary} not found: build the bench tools with "
        f"`cargo build --release --bin ringmux --examples`"
    )


def run_tool(argv, timeout=TOOL_TIMEOUT) -> subprocess.CompletedProcess:
    """Runs a tool to completion (bounded); a hang is a test failure."""
    try:
        return subprocess.run(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:  # subprocess.run kills it
        raise AssertionError(f"{argv[0]} did not finish within {timeout} s: {e}") from None


def run_json(argv, timeout=TOOL_TIMEOUT) -> dict:
    p = run_tool(argv, timeout)
    assert p.returncode == 0, f"{argv[0]} exited {p.returncode}\nstdout={p.stdout!r}\nstderr={p.stderr!r}"
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected exactly one JSON line on stdout, got {p.stdout!r}"
    out = json.loads(lines[0])
    assert isinstance(out, dict), out
    return out


def loadgen(port, path, rate, secs, conns, *, body=None, mode=None, warmup=None, extra=()):
    need(LOADGEN)
    # rate=None: closed loop.
    argv = [LOADGEN, "--addr", f"127.0.0.1:{port}", "--path", path,
            *(["--closed"] if rate is None else ["--rate", rate]),
            "--secs", secs, "--conns", conns]
    if body is not None:
        argv += ["--body", body]
    if mode is not None:
        argv += ["--mode", mode]
    if warmup is not None:
        argv += ["--warmup", warmup]
    argv += list(extra)
    return run_json(argv)


def hdr_le(a: float, b: float) -> bool:
    """a <= b, allowing the 3-significant-digit HdrHistogram bucket width
    (loadgen's percentiles are bucket values, max_us / mean_us are exact)."""
    return a <= b * 1.001 + 0.1


def check_loadgen_report(r: dict, *, rate, secs, conns, mode):
    """What must hold for any loadgen report, whatever the server did."""
    assert set(r) == LOADGEN_FIELDS, (
        f"missing {sorted(LOADGEN_FIELDS - set(r))}, unexpected {sorted(set(r) - LOADGEN_FIELDS)}"
    )
    for k in LOADGEN_FIELDS - {"mode", *LATENCY_FIELDS, "send_lag_p50_us", "send_lag_p99_us",
                              "duration_s", "achieved_rps", "target_rps"}:
        assert isinstance(r[k], int) and r[k] >= 0, f"{k} = {r[k]!r}"
    assert r["mode"] == mode
    assert r["conns"] == conns and r["threads"] == 1
    assert r["target_rps"] == rate  # None in the closed loop
    # Every dispatched request of the window ends exactly once.
    assert r["sent"] == r["completed"] + r["errors"] + r["timeouts"], r
    assert r["non_2xx"] <= r["completed"], r
    assert r["sent"] + r["unsent"] == r["scheduled"], r
    if rate is None:
        # Closed loop: no schedule, so nothing is ever left unsent.
        assert r["unsent"] == 0 and r["warmup_skipped"] == 0, r
    else:
        # Due times are i/rate: exactly rate*secs requests fall in the window.
        assert r["scheduled"] == round(rate * secs), r
    assert r["duration_s"] >= secs, r
    assert math.isclose(r["achieved_rps"], r["completed"] / r["duration_s"], abs_tol=0.051), r
    if r["completed"]:
        lat = [r[k] for k in ("p50_us", "p90_us", "p99_us", "p999_us")]
        assert all(isinstance(v, (int, float)) and v > 0 for v in lat), r
        assert lat == sorted(lat), f"percentiles not ordered: {lat}"
        assert hdr_le(r["p999_us"], r["max_us"]), r
        assert 0 < r["mean_us"] <= r["max_us"], r
    else:
        assert all(r[k] is None for k in LATENCY_FIELDS), r
    if r["sent"]:
        assert r["send_lag_p50_us"] is not None and hdr_le(r["send_lag_p50_us"], r["send_lag_p99_us"]), r


def mcp_call(url: str, name: str, args: dict, timeout=HTTP_TIMEOUT) -> dict:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": args}}
    r = httpx.post(url, json=body, headers={"accept": "application/json, text/event-stream"},
                   timeout=timeout)
    assert r.status_code == 200, f"{name}: {r.status_code} {r.text[:300]}"
    res = r.json()["result"]
    assert res["isError"] is False, res
    return res


def whoami(url: str) -> dict:
    res = mcp_call(url, "whoami", {})
    return json.loads(res["content"][0]["text"])


class BadServer:
    """A TCP server that misbehaves: `close` reads a request and closes the
    connection without answering, `hold` accepts and never answers."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True, name=f"bad-{behaviour}")
        self.th.start()

    def _run(self):
        while not self.stop_ev.is_set():
            r, _, _ = select.select([self.sock], [], [], 0.05)
            if not r:
                continue
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            if self.behaviour == "close":
                c.settimeout(2.0)
                try:
                    c.recv(65536)
                except OSError:
                    pass
                c.close()
            else:
                self.held.append(c)

    def stop(self):
        self.stop_ev.set()
        self.th.join(5)
        for c in self.held:
            c.close()
        self.sock.close()


# --------------------------------------------------------------------------
# pyorig
# --------------------------------------------------------------------------
class Pyorig:
    """benches/pyorig/proxy.py as a subprocess; kill() is the finalizer."""

    def __init__(self, base: Path, mode="offloop", child="exec", nodelay=True, app=None):
        argv = [PY, str(PYORIG), "--listen", "127.0.0.1:0", "--base-dir", str(base), "--mode", mode]
        if nodelay:
            argv.append("--nodelay")
        argv += ["--child", child]
        if child == "app":
            argv += ["--app", app, "--app-dir", str(REPO / "tests" / "py" / "children")]
        if child == "exec":
            argv += ["--child-cmd", str(RINGMUX_BIN), "demo-child"]  # must come last
        self.argv = argv
        self.base = Path(base)
        self.stderr_path = self.base.parent / f"{self.base.name}.pyorig.stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr, cwd=str(REPO))
        self.pid = self.proc.pid
        self.seen: dict[int, int] = {}  # child pid -> starttime
        self.lines: list[str] = []
        self.port = None
        ready = threading.Event()

        def reader():
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.lines.append(line)
                if self.port is None and line.startswith("pyorig: listening on http://127.0.0.1:"):
                    self.port = int(line.rsplit(":", 1)[1])
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=reader, daemon=True, name="pyorig-stdout")
        self._reader.start()

    def wait_ready(self, within=20.0):
        wait_until(lambda: self.port is not None or self.proc.poll() is not None, within,
                   what="pyorig's listening line")
        assert self.port is not None, (
            f"pyorig printed no listening line (exit={self.proc.poll()}); "
            f"stdout={self.lines!r}\nstderr:\n{self.stderr_text()}"
        )
        assert self.lines[0] == f"pyorig: listening on http://127.0.0.1:{self.port}", self.lines
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_bytes()[-8000:].decode(errors="replace")
        except OSError:
            return ""

    def key_url(self, path: str, key: str, extra: str = "") -> str:
        return f"{self.url}{path}?{KEY_PARAM}={key}" + (f"&{extra}" if extra else "")

    def children(self) -> list[int]:
        pids = children_of(self.pid)
        for p in pids:
            st = proc_stat(p)
            if st:
                self.seen.setdefault(p, st[2])
        return pids

    def metrics(self) -> dict:
        r = httpx.get(f"{self.url}/_pyorig/metrics", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, (r.status_code, r.text[:200])
        return r.json()

    def close_key(self, key: str) -> httpx.Response:
        return httpx.post(self.key_url("/vf/close", key), timeout=HTTP_TIMEOUT)

    def terminate(self, within=20.0) -> int:
        self.children()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pyorig did not exit within {within} s of SIGTERM") from None

    def kill(self):
        kill_with_children(self.proc, self.children, self.seen)
        if self._stderr:
            self._stderr.close()
            self._stderr = None


@pytest.fixture
def pyorig_factory():
    started: list[Pyorig] = []

    def make(base, **kw) -> Pyorig:
        p = Pyorig(base, **kw)
        started.append(p)
        return p.wait_ready()

    yield make
    for p in started:
        p.kill()


# --------------------------------------------------------------------------
# loadgen
# --------------------------------------------------------------------------
def test_loadgen_full_mode_counts_against_demo(ringmux_factory):
    """Small MCP echo calls at 400/s over 4 connections: the report has every
    documented field, the counters add up, nothing failed, the open-loop
    schedule was (nearly) kept, and `bytes` is exactly the bodies received."""
    rm = ringmux_factory(demo=True)
    key = f"lg-{uuid.uuid4().hex[:8]}"
    url = rm.path_url("/mcp", key)
    # Start the key's child outside the measurement; learn the exact response size.
    direct = httpx.post(url, content=ECHO_BODY, headers={"content-type": "application/json"},
                        timeout=HTTP_TIMEOUT)
    assert direct.status_code == 200 and "x" * 96 in direct.text, direct.text[:200]
    body_len = len(direct.content)

    rate, secs, conns, warmup = 400, 1, 4, 0.2
    r = loadgen(rm.port, f"/mcp?{KEY_PARAM}={key}", rate, secs, conns, body=ECHO_BODY, warmup=warmup)
    check_loadgen_report(r, rate=rate, secs=secs, conns=conns, mode="full")
    assert r["errors"] == 0 and r["timeouts"] == 0 and r["non_2xx"] == 0, r
    assert r["completed"] >= 0.8 * rate * secs, r
    assert r["bytes"] == body_len * r["completed"], (body_len, r)
    assert r["events"] == 0, r
    # The warm-up (due in the first 0.2 s: 80 requests) is sent or skipped, never both.
    assert r["warmup_sent"] + r["warmup_skipped"] == round(rate * warmup), r
    assert rm.child_pids(), "the demo child should still be running"


def test_loadgen_sse_counts_events_and_dechunked_bytes(ringmux_factory):
    """--mode sse on the demo's chunked /sse stream: every completed request
    carried all 200 events, and `bytes` is the de-chunked body size."""
    rm = ringmux_factory(demo=True)
    path = f"/sse?n=200&interval_ms=0&{KEY_PARAM}=k"
    direct = httpx.get(f"{rm.url}{path}", timeout=HTTP_TIMEOUT)
    assert direct.status_code == 200
    assert direct.headers.get("transfer-encoding", "").lower() == "chunked", direct.headers
    per_stream = len(direct.content)  # httpx de-chunks
    assert direct.text.count("data: ") == 200

    r = loadgen(rm.port, path, 20, 1, 2, mode="sse")
    check_loadgen_report(r, rate=20, secs=1, conns=2, mode="sse")
    assert r["errors"] == 0 and r["timeouts"] == 0 and r["non_2xx"] == 0, r
    assert r["completed"] >= 16, r
    assert r["events"] == 200 * r["completed"], r
    assert r["bytes"] == per_stream * r["completed"], (per_stream, r)

    # The same stream in full mode: bytes are counted, events are not.
    r = loadgen(rm.port, path, 10, 1, 1, mode="full", warmup=0)
    check_loadgen_report(r, rate=10, secs=1, conns=1, mode="full")
    assert r["errors"] == 0 and r["completed"] >= 8, r
    assert r["events"] == 0 and r["bytes"] == per_stream * r["completed"], r


def test_loadgen_blob_bytes_and_series(ringmux_factory, tmp_path):
    """GET /blob?bytes=65536 (Content-Length framed): bytes == 65536 per
    completed request; --series gets one `offset latency status` line per
    recorded request, sorted by schedule."""
    rm = ringmux_factory(demo=True)
    path = f"/blob?bytes=65536&{KEY_PARAM}=b"
    assert len(httpx.get(f"{rm.url}{path}", timeout=HTTP_TIMEOUT).content) == 65536
    series = tmp_path / "series.txt"
    r = loadgen(rm.port, path, 50, 1, 2, extra=["--series", series])
    check_loadgen_report(r, rate=50, secs=1, conns=2, mode="full")
    assert r["errors"] == 0 and r["non_2xx"] == 0 and r["completed"] >= 40, r
    assert r["bytes"] == 65536 * r["completed"], r

    rows = [ln.split() for ln in series.read_text().splitlines()]
    assert len(rows) == r["sent"], (len(rows), r)
    offsets = [int(c[0]) for c in rows]
    assert offsets == sorted(offsets)
    assert all(o < 1_000_000 for o in offsets), offsets[-3:]
    lats = [float(c[1]) for c in rows]
    assert all(v > 0 for v in lats)
    assert [int(c[2]) for c in rows].count(200) == r["completed"]
    assert math.isclose(max(lats), r["max_us"], abs_tol=0.11), (max(lats), r["max_us"])


def test_loadgen_counts_non_2xx(ringmux_factory):
    """A 404 is a completed request that counts in non_2xx, not an error."""
    rm = ringmux_factory(demo=True)
    r = loadgen(rm.port, f"/no-such-route?{KEY_PARAM}=n", 20, 1, 1, warmup=0.3)
    check_loadgen_report(r, rate=20, secs=1, conns=1, mode="full")
    assert r["errors"] == 0 and r["completed"] >= 16, r
    assert r["non_2xx"] == r["completed"], r


def test_loadgen_nothing_listening_fails_fast():
    """No server: exit 1 with a message naming the address, no JSON, no hang."""
    need(LOADGEN)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connect is refused
        port = s.getsockname()[1]
        p = run_tool([LOADGEN, "--addr", f"127.0.0.1:{port}", "--rate", 100, "--secs", 1], timeout=20)
    finally:
        s.close()
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == "", p.stdout
    assert p.stderr.startswith("loadgen: connect 127.0.0.1:"), p.stderr
    assert str(port) in p.stderr and "refused" in p.stderr.lower(), p.stderr


def test_loadgen_bad_flags_rejected():
    need(LOADGEN)
    for argv, msg in [
        ([], "--addr is required"),
        (["--addr", "127.0.0.1:1"], "--rate (or --closed) is required"),
        (["--addr", "127.0.0.1:1", "--rate", "10", "--closed"], "--rate and --closed exclude each other"),
        (["--addr", "127.0.0.1:1", "--rate", "10", "--mode", "bogus"], "--mode must be full or sse"),
        (["--addr", "127.0.0.1:1", "--rate", "10", "--path", "no-slash"], "--path must start with /"),
    ]:
        p = run_tool([LOADGEN, *argv], timeout=10)
        assert p.returncode == 1 and msg in p.stderr and p.stdout == "", (argv, p.returncode, p.stderr)


def test_loadgen_closed_loop_sends_when_idle(ringmux_factory, tmp_path):
    """--closed on one connection: every request leaves after the previous
    answer was in (each series row starts no earlier than the previous one
    ended), nothing is unsent, and bytes match the bodies; on four
    connections the counts add up the same way."""
    rm = ringmux_factory(demo=True)
    key = f"lgc-{uuid.uuid4().hex[:8]}"
    url = rm.path_url("/mcp", key)
    direct = httpx.post(url, content=ECHO_BODY, headers={"content-type": "application/json"},
                        timeout=HTTP_TIMEOUT)
    assert direct.status_code == 200, direct.text[:200]
    body_len = len(direct.content)
    path = f"/mcp?{KEY_PARAM}={key}"

    series = tmp_path / "closed.txt"
    r = loadgen(rm.port, path, None, 1, 1, body=ECHO_BODY, warmup=0.2, extra=["--series", series])
    check_loadgen_report(r, rate=None, secs=1, conns=1, mode="full")
    assert r["errors"] == 0 and r["timeouts"] == 0 and r["non_2xx"] == 0, r
    assert r["scheduled"] == r["sent"] == r["completed"] > 0, r
    assert r["warmup_sent"] > 0, r
    assert r["bytes"] == body_len * r["completed"], (body_len, r)
    rows = [(int(c[0]), float(c[1]), int(c[2])) for c in (ln.split() for ln in series.read_text().splitlines())]
    assert len(rows) == r["sent"] and all(s == 200 for _, _, s in rows), rows[:3]
    # Offsets are whole µs (truncated), latencies 0.1 µs: allow 2 µs of rounding.
    overlaps = [(a, b) for a, b in zip(rows, rows[1:]) if b[0] + 2 < a[0] + a[1]]
    assert not overlaps, f"a request left before the previous answer: {overlaps[:3]}"

    r = loadgen(rm.port, path, None, 1, 4, body=ECHO_BODY, warmup=0.2)
    check_loadgen_report(r, rate=None, secs=1, conns=4, mode="full")
    assert r["errors"] == 0 and r["completed"] == r["sent"] > 0, r
    assert r["bytes"] == body_len * r["completed"], (body_len, r)


def test_loadgen_close_opens_a_connection_per_request(ringmux_factory):
    """--close: every request says `Connection: close`, ringmux closes after
    the answer, and loadgen opens a new connection for the next one: about
    as many reconnects as requests, none failed."""
    rm = ringmux_factory(demo=True)
    path = f"/mcp?{KEY_PARAM}=churn"
    r = loadgen(rm.port, path, None, 1, 2, body=ECHO_BODY, warmup=0.2, extra=["--close"])
    check_loadgen_report(r, rate=None, secs=1, conns=2, mode="full")
    assert r["errors"] == 0 and r["timeouts"] == 0 and r["non_2xx"] == 0 and r["completed"] > 10, r
    # The first request of each connection in the window may ride a
    # connection opened during the warm-up; every other one needs its own.
    assert r["completed"] - 2 <= r["reconnects"] <= r["completed"] + 2, r


def test_loadgen_closed_loop_paces_failures():
    """--closed against a server that closes every connection unanswered:
    the failures are errors, and retries are paced (10 ms per connection)
    instead of spinning: far fewer than a tight loop would make."""
    bad = BadServer("close")
    try:
        r = loadgen(bad.port, "/", None, 1, 2, warmup=0)
    finally:
        bad.stop()
    check_loadgen_report(r, rate=None, secs=1, conns=2, mode="full")
    assert r["completed"] == 0 and r["errors"] == r["sent"] > 0, r
    # Paced: at most one attempt per connection per 10 ms (plus the first).
    assert r["errors"] <= 2 * (100 + 5), r


def series_statuses(path: Path) -> list[int]:
    rows = [ln.split() for ln in path.read_text().splitlines()]
    assert all(len(c) == 3 for c in rows), rows[:3]
    return [int(c[2]) for c in rows]


def test_loadgen_peer_closing_counts_errors(tmp_path):
    """A server that closes every connection without answering: every sent
    request is an error (series status 0), connections are re-opened, and
    there are no latencies."""
    bad = BadServer("close")
    series = tmp_path / "s.txt"
    try:
        r = loadgen(bad.port, "/", 20, 1, 2, warmup=0, extra=["--series", series])
    finally:
        bad.stop()
    check_loadgen_report(r, rate=20, secs=1, conns=2, mode="full")
    assert r["completed"] == 0 and r["timeouts"] == 0, r
    assert r["errors"] == r["sent"] > 0, r
    assert r["reconnects"] >= 1 and bad.accepted >= 2, (r, bad.accepted)
    assert series_statuses(series) == [0] * r["errors"]


def test_loadgen_silent_server_counts_timeouts(tmp_path):
    """A server that never answers: requests end as timeouts (not errors;
    series status -1), the rest of the schedule is reported unsent, and
    loadgen still exits."""
    bad = BadServer("hold")
    series = tmp_path / "s.txt"
    try:
        r = loadgen(bad.port, "/", 20, 0.5, 1, warmup=0,
                    extra=["--timeout-ms", 300, "--series", series])
    finally:
        bad.stop()
    check_loadgen_report(r, rate=20, secs=0.5, conns=1, mode="full")
    assert r["completed"] == 0 and r["errors"] == 0, r
    assert r["timeouts"] == r["sent"] >= 1, r
    assert r["unsent"] >= 1, r
    assert series_statuses(series) == [-1] * r["timeouts"]


# --------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------
def test_probe_series_matches_report(ringmux_factory, tmp_path):
    """probe --series: one `offset latency` line per request (count from its
    JSON), two integer columns, offsets from 0 on the 1/rate grid; the JSON
    percentiles are the series' own order statistics."""
    need(PROBE)
    rm = ringmux_factory(demo=True)
    series = tmp_path / "probe.txt"
    rate, secs = 200, 0.5
    r = run_json([PROBE, "--addr", f"127.0.0.1:{rm.port}", "--path", f"/mcp?{KEY_PARAM}=p",
                  "--body", ECHO_BODY, "--rate", rate, "--secs", secs, "--series", series])
    assert set(r) == PROBE_FIELDS, r
    assert r["count"] == int(rate * secs) and r["side_ms"] is None, r
    lines = series.read_text().splitlines()
    assert len(lines) == r["count"]
    rows = []
    for ln in lines:
        cols = ln.split()
        assert len(cols) == 2 and all(c.isdigit() for c in cols), ln
        rows.append((int(cols[0]), int(cols[1])))
    offsets = [o for o, _ in rows]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert offsets == [i * 1_000_000 // rate for i in range(len(rows))], offsets[:5]
    lat = sorted(v for _, v in rows)
    assert r["max_us"] == lat[-1]
    for q, k in ((0.5, "p50_us"), (0.9, "p90_us"), (0.99, "p99_us"), (0.999, "p999_us")):
        assert r[k] == lat[min(int(q * len(lat)), len(lat) - 1)], (k, r)
    assert r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"], r


def test_probe_side_request_closes_a_key(ringmux_factory):
    """--side-url fires its request during the run: it reports side_ms and the
    side key's child really was closed."""
    need(PROBE)
    rm = ringmux_factory(demo=True)
    victim = f"victim-{uuid.uuid4().hex[:8]}"
    who = whoami(rm.path_url("/mcp", victim))
    vdir = rm.child_dir(victim)
    assert who["cwd"] == vdir and os.path.isdir(vdir)
    r = run_json([PROBE, "--addr", f"127.0.0.1:{rm.port}", "--path", f"/mcp?{KEY_PARAM}=p",
                  "--body", ECHO_BODY, "--rate", 100, "--secs", 0.5,
                  "--side-url", f"/vf/close?{KEY_PARAM}={victim}", "--side-at-ms", 100])
    assert r["count"] == 50, r
    assert isinstance(r["side_ms"], (int, float)) and r["side_ms"] > 0, r
    assert not os.path.exists(vdir)
    wait_until(lambda: not pid_alive(who["pid"]), 5.0, what="the closed key's child to exit")


def test_probe_failures_exit_nonzero(ringmux_factory):
    """A non-200 answer or no server: exit 1 with a message, no JSON."""
    need(PROBE)
    rm = ringmux_factory(demo=True)
    p = run_tool([PROBE, "--addr", f"127.0.0.1:{rm.port}", "--path", f"/nope?{KEY_PARAM}=p",
                  "--rate", 100, "--secs", 0.2], timeout=20)
    assert p.returncode == 1 and p.stdout == "", (p.returncode, p.stdout)
    assert "probe request got 404" in p.stderr, p.stderr
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        p = run_tool([PROBE, "--addr", f"127.0.0.1:{port}", "--rate", 100, "--secs", 0.2], timeout=20)
    finally:
        s.close()
    assert p.returncode == 1 and p.stdout == "", (p.returncode, p.stdout)
    assert p.stderr.startswith(f"probe: connect 127.0.0.1:{port}"), p.stderr


# --------------------------------------------------------------------------
# pyorig
# --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sync", "offloop"])
@pytest.mark.timeout(90)
def test_pyorig_exec_child_lifecycle(pyorig_factory, tmp_path, mode):
    """pyorig --child exec (ringmux demo-child): one child per key in
    <base>/<sha256(key)[:16]>; close kills, reaps and deletes; the metrics
    endpoint reports; SIGTERM leaves no process and an empty base dir."""
    base = tmp_path / "base"
    base.mkdir()
    po = pyorig_factory(base, mode=mode, child="exec", nodelay=True)
    ka, kb = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"

    wa = whoami(po.key_url("/mcp", ka))
    wb = whoami(po.key_url("/mcp", kb))
    assert wa["pid"] != wb["pid"], (wa, wb)
    assert wa["cwd"] == str(base / key_hash_dir(ka)), wa
    assert wb["cwd"] == str(base / key_hash_dir(kb)), wb
    assert sorted(po.children()) == sorted([wa["pid"], wb["pid"]])
    for w in (wa, wb):
        assert os.readlink(f"/proc/{w['pid']}/cwd") == w["cwd"]
        assert Path(f"/proc/{w['pid']}/exe").resolve() == RINGMUX_BIN.resolve()
    # Same key, same child.
    assert whoami(po.key_url("/mcp", ka))["pid"] == wa["pid"]
    st_a, st_b = proc_stat(wa["pid"])[2], proc_stat(wb["pid"])[2]

    res = mcp_call(po.key_url("/mcp", ka), "write_files", {"count": 2000, "dirs": 5})
    assert res["content"][0]["text"] == "2000"
    assert count_files(wa["cwd"]) == 2000

    r = po.close_key(ka)
    assert r.status_code == 200 and r.json() == {"closed": True}, r.text
    # The cleanup ran before the answer: directory deleted, child reaped.
    assert not os.path.exists(wa["cwd"])
    assert not pid_alive(wa["pid"], st_a) and proc_stat(wa["pid"]) is None
    assert po.children() == [wb["pid"]]
    assert os.listdir(base) == [key_hash_dir(kb)]
    # Closing again / an unknown key: 200 {"closed": false}.
    r = po.close_key(ka)
    assert r.status_code == 200 and r.json() == {"closed": False}, r.text
    # The other key is untouched; the closed key gets a fresh child on demand.
    assert whoami(po.key_url("/mcp", kb))["pid"] == wb["pid"]
    wa2 = whoami(po.key_url("/mcp", ka))
    assert wa2["pid"] not in (wa["pid"], wb["pid"]) and wa2["cwd"] == wa["cwd"]

    m = po.metrics()
    assert isinstance(m["loop_gap_max_s"], float) and m["loop_gap_max_s"] >= 0, m
    assert m["mode"] == mode and m["pid"] == po.pid, m
    assert m["cleanups"] == 1 and m["children"] == 2, m
    assert isinstance(m["cleanup_last_s"], float) and m["cleanup_last_s"] >= 0, m

    kids = {p: proc_stat(p)[2] for p in po.children()}
    assert sorted(kids) == sorted([wa2["pid"], wb["pid"]])
    rc = po.terminate()
    assert rc == 0, f"pyorig exited {rc} on SIGTERM\n{po.stderr_text()}"
    left = [p for p, st in kids.items() if pid_alive(p, st)]
    assert left == [], f"children left after SIGTERM: {left}"
    assert children_of(po.pid) == [] and children_of(po.pid, zombies=True) == []
    assert base.is_dir() and os.listdir(base) == [], os.listdir(base)
    assert procs_with_cwd_under(str(base)) == []


@pytest.mark.timeout(90)
def test_pyorig_python_child(pyorig_factory, tmp_path):
    """The faithful --child python (forked uvicorn app, no --nodelay): MCP
    initialize / echo / whoami / write_files work per key; a base dir it
    created itself is removed on SIGTERM."""
    base = tmp_path / "pybase"  # does not exist: pyorig creates (and later removes) it
    po = pyorig_factory(base, mode="offloop", child="python", nodelay=False)
    key = f"py-{uuid.uuid4().hex[:8]}"
    url = po.key_url("/mcp", key)

    init = httpx.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                 "params": {"protocolVersion": "2025-06-18"}}, timeout=HTTP_TIMEOUT)
    assert init.status_code == 200, init.text
    assert init.json()["result"]["serverInfo"]["name"] == "pyorig-child", init.text
    res = mcp_call(url, "echo", {"text": "hello-pyorig"})
    assert res["content"][0]["text"] == "hello-pyorig"
    w = whoami(url)
    assert w["cwd"] == str(base / key_hash_dir(key)), w
    assert po.children() == [w["pid"]]
    w2 = whoami(po.key_url("/mcp", key + "-other"))
    assert w2["pid"] != w["pid"] and sorted(po.children()) == sorted([w["pid"], w2["pid"]])
    res = mcp_call(url, "write_files", {"count": 30, "dirs": 2})
    assert res["content"][0]["text"] == "30" and count_files(w["cwd"]) == 30
    r = po.close_key(key)
    assert r.status_code == 200 and r.json() == {"closed": True}
    assert not os.path.exists(w["cwd"]) and proc_stat(w["pid"]) is None

    kids = {p: proc_stat(p)[2] for p in po.children()}
    assert list(kids) == [w2["pid"]]
    assert po.terminate() == 0, po.stderr_text()
    assert [p for p, st in kids.items() if pid_alive(p, st)] == []
    assert not base.exists(), "pyorig should remove the base dir it created"


@pytest.mark.timeout(90)
def test_loadgen_through_pyorig(pyorig_factory, tmp_path):
    """The harness drives pyorig with loadgen: keep-alive MCP calls and a
    streamed (chunked) SSE response both come through whole."""
    base = tmp_path / "base"
    base.mkdir()
    po = pyorig_factory(base, mode="offloop", child="exec", nodelay=True)
    key = f"lgp-{uuid.uuid4().hex[:8]}"
    direct = httpx.post(po.key_url("/mcp", key), content=ECHO_BODY,
                        headers={"content-type": "application/json"}, timeout=HTTP_TIMEOUT)
    assert direct.status_code == 200
    body_len = len(direct.content)
    r = loadgen(po.port, f"/mcp?{KEY_PARAM}={key}", 50, 1, 2, body=ECHO_BODY)
    check_loadgen_report(r, rate=50, secs=1, conns=2, mode="full")
    assert r["errors"] == 0 and r["timeouts"] == 0 and r["non_2xx"] == 0, r
    assert r["completed"] >= 40 and r["bytes"] == body_len * r["completed"], r

    sse = f"/sse?n=200&interval_ms=0&{KEY_PARAM}={key}"
    per_stream = len(httpx.get(f"{po.url}{sse}", timeout=HTTP_TIMEOUT).content)
    r = loadgen(po.port, sse, 10, 1, 1, mode="sse")
    check_loadgen_report(r, rate=10, secs=1, conns=1, mode="sse")
    assert r["errors"] == 0 and r["timeouts"] == 0 and r["non_2xx"] == 0, r
    assert r["completed"] >= 8, r
    assert r["events"] == 200 * r["completed"] and r["bytes"] == per_stream * r["completed"], r
    assert po.children() == [whoami(po.key_url("/mcp", key))["pid"]]


def test_pyorig_app_child_imports_once_and_forks_per_key(pyorig_factory, tmp_path):
    """--child app (part 3b's baseline): the proxy imports the tool server once;
    every key's forked child serves it (official SDK client), with its own
    copy of module globals."""
    import anyio

    from mcp_helpers import mcp_session, tool_json

    p = pyorig_factory(tmp_path / "app", child="app", app="fork_child:app")

    async def who(key):
        async with mcp_session(p.key_url("/mcp", key)) as s:
            w = tool_json(await s.call_tool("whoami", {}))
            g = tool_json(await s.call_tool("global_and_file", {"value": key, "sleep_ms": 1}))
            return w, g

    (wa, ga), (wb, gb) = anyio.run(who, "a1"), anyio.run(who, "b2")
    assert wa["imported_by"] == wb["imported_by"] == p.pid, "imported once, by the proxy"
    assert wa["pid"] != wb["pid"] and wa["ppid"] == wb["ppid"] == p.pid
    assert (ga["global"], gb["global"]) == ("a1", "b2")
    assert p.close_key("a1").status_code == 200
    assert p.terminate() == 0


def test_warm_breakdown_reads_ringmux_log_lines(tmp_path):
    """benches/warm.py's reading of ringmux's log, on lines in the format the
    daemon writes (only the first-request phase's children count)."""
    import sys as _sys

    _sys.path.insert(0, str(REPO / "benches"))
    import warm

    log = tmp_path / "l"
    log.write_text(
        "INFO child forked key=ab pid=7 child=1 addr=127.0.0.1:5 asked_ms=2.5 fork_ms=1.5\n"
        "DEBUG child answered its first request worker=0 child=1 ms=10.0\n"
        "INFO child forked key=cd pid=8 child=2 addr=127.0.0.1:6 asked_ms=3.5 fork_ms=0.5\n"
        "DEBUG child answered its first request worker=1 child=2 ms=12.0\n"
        "INFO child forked key=ef pid=9 child=3 addr=127.0.0.1:7 asked_ms=99 fork_ms=99\n"
        "DEBUG child answered its first request worker=1 child=3 ms=99\n"
    )
    b = warm.breakdown(str(log), 2)
    assert b == {"n": 2, "ask_to_forked_ms": 3.0, "fork_ms": 1.0, "child_start_to_first_answer_ms": 11.0}


@pytest.mark.timeout(240)
def test_cleanup_stall_bench_runs_end_to_end(tmp_path):
    """benches/cleanup_stall.py, tiny: one round per mode; every window
    measured, the tree seen gone, the close-teardown metric read, and the
    idle comparison with rm -rf made."""
    out = tmp_path / "stall.json"
    p = subprocess.run(
        [str(PY), str(REPO / "benches" / "cleanup_stall.py"), "--rounds", "1", "--files", "600",
         "--dirs", "3", "--window", "1.5", "--idle-reps", "1", "--base-dir", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=220, cwd=str(REPO),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    d = json.loads(out.read_text())
    assert set(d["modes"]) == {"full", "paced"}
    for mode, res in d["modes"].items():
        (r,) = res["rounds"]
        assert sorted(r["order"]) == ["clean", "quiet-a", "quiet-b"], r
        assert r["gone_s"] is not None and r["gone_s"] > 0, (mode, r)
        assert r["teardown_ms"] is not None and r["teardown_ms"] > 0, (mode, r)
        assert r["requests_in_span"] > 0
        assert len(res["idle"]["ringmux_s"]) == 1 and len(res["idle"]["rm_rf_s"]) == 1
    assert "| paced |" in p.stdout and "| full |" in p.stdout


def test_hotpath_bench_runs_end_to_end(tmp_path):
    """benches/hotpath.py, tiny (one repetition, 0.5 s windows): every target
    (the child, ringmux unix/unix/tcp, nginx and HAProxy each with a TCP and a
    Unix upstream) answered every window without an error, each proxy's own
    CPU was measured, the tables and paired ratios are printed, and no
    server it started is left running."""
    out = tmp_path / "hot.json"
    p = subprocess.run(
        [str(PY), str(REPO / "benches" / "hotpath.py"), "--reps", "1", "--secs", "0.5", "--json", str(out)],
        capture_output=True, text=True, timeout=200, cwd=str(REPO),
        env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    d = json.loads(out.read_text())
    targets = ["direct", "ringmux-unix", "ringmux-unix-b", "ringmux-tcp",
               "nginx-tcp", "nginx-unix", "haproxy-tcp", "haproxy-unix"]
    assert sorted(d["raw"]) == sorted(targets)
    for name in targets:
        (rep,) = d["raw"][name]
        assert sorted(rep) == ["c1", "c32", "o8k"], rep
        for w, row in rep.items():
            assert row["rps"] > 0 and row["p50_us"] > 0, (name, w, row)
            assert row["child_cpu_us"] > 0, (name, w, row)
            if name == "direct":
                assert row["proxy_cpu_us"] is None
            else:
                assert row["proxy_cpu_us"] > 0, (name, w, row)
    ratios = d["summary"]["ratios"]
    assert set(ratios) == {"c1_cpu", "c32_cpu", "o8k_cpu", "added_p50", "c32_rps"}
    assert all(isinstance(ratios[m]["ringmux-unix vs best unix"]["median"], float) for m in ("o8k_cpu", "c32_rps"))
    for name in targets:
        assert f"| {name} |" in p.stdout, name
    assert "| ringmux-unix vs best unix |" in p.stdout and "| A/A ringmux-unix-b vs ringmux-unix |" in p.stdout
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and "ringmux-hotpath-" in _cmdline(pid)]
    assert not left, f"servers left running: {[_cmdline(x) for x in left]}"


def test_hotpath_bench_asks_for_large_bodies_with_bytes(tmp_path):
    """`hotpath.py --bytes N --rate R`: every target's every window got
    N-byte bodies, the open-loop window ran at R, and a bad value is refused
    before anything starts."""
    out = tmp_path / "hot64k.json"
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"}
    p = subprocess.run(
        [str(PY), str(REPO / "benches" / "hotpath.py"), "--reps", "1", "--secs", "0.5",
         "--bytes", "65536", "--rate", "500", "--json", str(out)],
        capture_output=True, text=True, timeout=200, cwd=str(REPO), env=env,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["bytes"] == 65536 and d["fixed_rate"] == 500, (d["bytes"], d["fixed_rate"])
    for name, (rep,) in d["raw"].items():
        for w, row in rep.items():
            assert row["body_bytes"] == 65536, (name, w, row)
    assert "65536-byte responses" in p.stdout and "(500/s)" in p.stdout
    for bad in (["--bytes", "-1"], ["--rate", "0"]):
        q = subprocess.run([str(PY), str(REPO / "benches" / "hotpath.py"), *bad],
                           capture_output=True, text=True, timeout=30, cwd=str(REPO), env=env)
        assert q.returncode != 0 and "must be" in q.stderr, (bad, q.stderr)


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_bench_sh_help_prints_usage_without_building(tmp_path):
    """`scripts/bench.sh --help` prints its usage and exits 0 at once: no
    build, no install (a `cargo` that fails on the PATH proves it)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("cargo", "apt-get"):
        (fake / tool).write_text("#!/bin/sh\necho called >&2\nexit 99\n")
        (fake / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ.get('PATH', '')}"}
    for flag in ("--help", "-h"):
        p = subprocess.run(["bash", str(REPO / "scripts" / "bench.sh"), flag], capture_output=True, text=True,
                           timeout=30, env=env)
        assert p.returncode == 0 and "called" not in p.stderr, (p.returncode, p.stderr)
        assert "scripts/bench.sh --quick" in p.stdout and "--parts" in p.stdout, p.stdout
        assert not p.stdout.lstrip().startswith("#"), "the comment markers are stripped"
