"""Shared fixtures for the ringmux integration tests.

- Ringmux: starts the real binary, parses its two stdout lines, inspects its
  children through /proc, stops it and checks that nothing was left behind.
- spawn_on_fd3(): runs a test child standalone, with an already listening
  socket as fd 3 (the same contract ringmux gives its children), so the
  children themselves can be checked without ringmux.
- A per-test timeout (SIGALRM based; default 60 s, `@pytest.mark.timeout(N)`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
CHILDREN = Path(__file__).resolve().parent / "children"
RAW_CHILD = CHILDREN / "raw_child.py"
RINGMUX_BIN = Path(os.environ.get("RINGMUX_BIN", REPO / "target" / "release" / "ringmux"))
PY = sys.executable
KEY_PARAM = "vf_state_secret"

RAW_CMD = [PY, str(RAW_CHILD)]


def uvicorn_fd3_cmd(app: str) -> list[str]:
    """A ringmux child command: uvicorn serving `app` (from tests/py/children)
    on the listening socket it inherits as fd 3."""
    return [
        PY, "-m", "uvicorn", "--fd", "3", "--app-dir", str(CHILDREN),
        "--log-level", "warning", "--no-access-log", app,
    ]


MCP_CMD = uvicorn_fd3_cmd("mcp_child:app")

# What ringmux logs at start under RINGMUX_EXIT_WAIT=poll (child exits seen as
# on a kernel before 6.7: POLL_ADD on the pidfd instead of IORING_OP_WAITID).
EXIT_WAIT_POLLED = "child exits are polled on their pidfds"

DEFAULT_TEST_TIMEOUT = float(os.environ.get("RINGMUX_TEST_TIMEOUT", "60"))
HTTP_TIMEOUT = httpx.Timeout(15.0, connect=5.0)

INSTANCE_RE = re.compile(r"^ringmux: instance dir (/.*)$")
LISTEN_RE = re.compile(r"^ringmux: listening on http://127\.0\.0\.1:(\d+)$")
METRICS_RE = re.compile(r"^ringmux: metrics on (http://\S+/metrics)$")


# --------------------------------------------------------------------------
# per-test timeout
# --------------------------------------------------------------------------
class RunTimeout(Exception):
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): per-test timeout (SIGALRM)")


def _timeout_for(item) -> float:
    m = item.get_closest_marker("timeout")
    if m and m.args:
        return float(m.args[0])
    return DEFAULT_TEST_TIMEOUT


def _with_alarm(item, phase):
    seconds = _timeout_for(item)

    def on_alarm(signum, frame):
        raise RunTimeout(f"{item.nodeid}: {phase} exceeded {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return old


def _clear_alarm(old):
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    old = _with_alarm(item, "setup")
    try:
        return (yield)
    finally:
        _clear_alarm(old)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    old = _with_alarm(item, "call")
    try:
        return (yield)
    finally:
        _clear_alarm(old)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    old = _with_alarm(item, "teardown")
    try:
        return (yield)
    finally:
        _clear_alarm(old)


# --------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------
def proc_stat(pid: int):
    """(state, ppid, starttime) of pid, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0] = state, rest[1] = ppid, rest[19] = starttime
    return rest[0], int(rest[1]), int(rest[19])


def all_procs():
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None:
                yield int(name), st


def children_of(ppid: int, zombies: bool = False) -> list[int]:
    out = []
    for pid, (state, pp, _) in all_procs():
        if pp == ppid and ((state == "Z") == zombies):
            out.append(pid)
    return sorted(out)


def pid_alive(pid: int, starttime: int | None = None) -> bool:
    """True if pid exists and is not a zombie (and matches starttime if given)."""
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return starttime is None or st[2] == starttime


def procs_with_cwd_under(path: str) -> list[int]:
    out = []
    prefix = path.rstrip("/") + "/"
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        cwd = cwd.removesuffix(" (deleted)")
        if cwd == path or cwd.startswith(prefix):
            st = proc_stat(int(name))
            if st and st[0] != "Z":
                out.append(int(name))
    return out


def read_spawn_log(path) -> list[int]:
    """The pids raw_child.py's `--spawn-log PATH` recorded, one per start."""
    try:
        with open(path) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def kill_with_children(proc, refresh_children, seen: dict) -> None:
    """SIGKILL `proc` (after one last look at its children through
    `refresh_children()`) and every child in `seen` (pid -> starttime) that is
    still the same process."""
    if proc is not None and proc.poll() is None:
        try:
            refresh_children()
        except Exception:
            pass
        proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    for pid, st in list(seen.items()):
        if pid_alive(pid, st):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_until(pred, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll pred() until true; bounded in time and in count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def key_hash_dir(key: str | None) -> str:
    if key is None:
        return "_default"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------
# Ringmux
# --------------------------------------------------------------------------
class Ringmux:
    def __init__(self, base_dir: Path, cmd=None, demo=False, args=(), env=None, name="ringmux"):
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.cmd = list(cmd) if cmd else None
        self.demo = demo
        self.args = list(args)
        self.env = env
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.stdout_lines: list[str] = []
        self.stderr_path = self.base_dir.parent / f"{self.base_dir.name}.stderr.log"
        self.instance_dir: str | None = None
        self.port: int | None = None
        self.url: str | None = None
        self.pid: int | None = None
        self._seen_children: dict[int, int] = {}  # pid -> starttime
        self._stopped = False
        self.metrics_url: str | None = None  # set when started with --admin
        # A launcher that execs argv (e.g. to start ringmux in a given cgroup).
        self.wrap: list[str] | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self, ready_within: float = 20.0) -> "Ringmux":
        if not RINGMUX_BIN.exists():
            raise AssertionError(
                f"ringmux binary not found at {RINGMUX_BIN} (build it: cargo build --release)"
            )
        argv = [str(RINGMUX_BIN), "serve", "--listen", "127.0.0.1:0", "--base-dir", str(self.base_dir)]
        argv += self.args
        # RINGMUX_TEST_ARGS="--flag value ...": added to every instance unless
        # the test sets that flag itself (scripts/test.sh runs the suite again
        # with --cgroup off: the fallback must pass it too).
        extra = shlex.split(os.environ.get("RINGMUX_TEST_ARGS", ""))
        for flag, value in zip(extra[::2], extra[1::2]):
            if flag not in self.args:
                argv += [flag, value]
        if self.demo:
            argv.append("--demo")
        if self.cmd:
            argv += ["--", *self.cmd]
        self.argv = argv
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        if self.env:
            env.update(self.env)
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            (self.wrap or []) + argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=str(REPO),
        )
        self.pid = self.proc.pid
        ready = threading.Event()

        def reader():
            assert self.proc and self.proc.stdout
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.stdout_lines.append(line)
                m = INSTANCE_RE.match(line)
                if m and self.instance_dir is None:
                    self.instance_dir = m.group(1)
                m = METRICS_RE.match(line)
                if m and self.metrics_url is None:
                    self.metrics_url = m.group(1)
                m = LISTEN_RE.match(line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()  # EOF: wake the waiter

        self._reader = threading.Thread(target=reader, daemon=True, name=f"{self.name}-stdout")
        self._reader.start()
        ready.wait(ready_within)
        if self.port is None:
            rc = self.proc.poll()
            self.kill()
            raise AssertionError(
                f"ringmux did not print its listening line within {ready_within} s "
                f"(exit={rc}); stdout={self.stdout_lines!r}\nstderr:\n{self.stderr_text()}"
            )
        assert self.instance_dir is not None, (
            f"no 'ringmux: instance dir' line before the listening line: {self.stdout_lines!r}"
        )
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stderr_text(self, limit: int = 8000) -> str:
        try:
            data = self.stderr_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode(errors="replace")

    def stop(self, within: float = 15.0) -> int:
        """SIGTERM, wait, and assert a clean exit with nothing left behind."""
        assert self.proc is not None
        self.child_pids()  # refresh what we know about children
        known = dict(self._seen_children)
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"ringmux did not exit within {within} s of SIGTERM")
        self._stopped = True
        assert rc == 0, f"ringmux exited {rc} after SIGTERM; stderr:\n{self.stderr_text()}"
        # Children may need a moment to be collected by init after reparenting
        # (if ringmux failed to reap them): give them 2 s, then insist.
        def none_left():
            return not [p for p, st in known.items() if pid_alive(p, st)]

        try:
            wait_until(none_left, 2.0, what="children to go away")
        except AssertionError:
            left = [p for p, st in known.items() if pid_alive(p, st)]
            raise AssertionError(f"children still alive after ringmux exited: {left}")
        assert children_of(self.pid) == [], "processes still parented to the exited ringmux"
        assert self.instance_dir and not os.path.exists(self.instance_dir), (
            f"instance dir {self.instance_dir} still exists after shutdown"
        )
        left = procs_with_cwd_under(self.instance_dir)
        assert left == [], f"processes still running inside the instance dir: {left}"
        return rc

    def kill(self):
        """Finalizer: make sure ringmux and every child we saw are gone."""
        kill_with_children(self.proc, self.child_pids, self._seen_children)
        if getattr(self, "_stderr", None):
            self._stderr.close()
            self._stderr = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- introspection -----------------------------------------------------
    def child_pids(self) -> list[int]:
        pids = children_of(self.pid)
        for p in pids:
            st = proc_stat(p)
            if st:
                self._seen_children[p] = st[2]
        return pids

    def zombies(self) -> list[int]:
        return children_of(self.pid, zombies=True)

    def child_dir(self, key: str | None) -> str:
        assert self.instance_dir
        return os.path.join(self.instance_dir, key_hash_dir(key))

    # -- HTTP --------------------------------------------------------------
    def path_url(self, path: str, key: str | None = None, extra: str = "") -> str:
        q = []
        if key is not None:
            q.append(f"{KEY_PARAM}={quote(key, safe='')}")
        if extra:
            q.append(extra)
        return f"{self.url}{path}" + ("?" + "&".join(q) if q else "")

    def client(self, **kw) -> httpx.Client:
        kw.setdefault("timeout", HTTP_TIMEOUT)
        return httpx.Client(**kw)

    def request(self, method: str, path: str, key: str | None = None, extra: str = "", **kw):
        with self.client() as c:
            return c.request(method, self.path_url(path, key, extra), **kw)

    def get(self, path, key=None, extra="", **kw):
        return self.request("GET", path, key, extra, **kw)

    def put(self, path, key=None, extra="", **kw):
        return self.request("PUT", path, key, extra, **kw)

    def post(self, path, key=None, extra="", **kw):
        return self.request("POST", path, key, extra, **kw)

    def close_key(self, key: str | None, method: str = "POST", path: str = "/vf/close"):
        with self.client() as c:
            return c.request(method, self.path_url(path, key))

    def child_socket(self) -> str:
        """The --child-socket this instance runs with (its own flag, else
        RINGMUX_TEST_ARGS's, else ringmux's default, tcp)."""
        for args in (list(self.args), shlex.split(os.environ.get("RINGMUX_TEST_ARGS", ""))):
            if "--child-socket" in args:
                return args[args.index("--child-socket") + 1]
        return "tcp"

    def expected_child_host(self, child_addr: str) -> str:
        """The Host ringmux forwards to a child at `child_addr`
        (RINGMUX_CHILD_ADDR): the address itself for TCP, a fixed
        `localhost:0` for an abstract Unix socket (README, child contract)."""
        return "localhost:0" if child_addr.startswith("@") else child_addr

    def info(self, key: str | None) -> dict:
        r = self.get("/info", key)
        assert r.status_code == 200, f"/info for key {key!r}: {r.status_code} {r.text[:200]}"
        return r.json()


@pytest.fixture
def ringmux_factory(tmp_path):
    """Start ringmux instances; every one is killed at teardown no matter what."""
    started: list[Ringmux] = []
    counter = [0]

    def make(cmd=None, demo=False, args=(), env=None, start=True) -> Ringmux:
        counter[0] += 1
        rm = Ringmux(tmp_path / f"base{counter[0]}", cmd=cmd, demo=demo, args=args, env=env)
        started.append(rm)
        return rm.start() if start else rm

    yield make
    for rm in started:
        rm.kill()


def module_ringmux(tmp_path_factory, request, **kw) -> Ringmux:
    """Helper for module-scoped fixtures: start one ringmux and register its finalizer."""
    base = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    rm = Ringmux(base / "base", **kw)
    request.addfinalizer(rm.kill)
    return rm.start()


@pytest.fixture(scope="module")
def raw_ringmux(tmp_path_factory, request) -> Ringmux:
    """One ringmux running raw_child.py (2 workers), shared by a test module."""
    return module_ringmux(tmp_path_factory, request, cmd=RAW_CMD, args=["--workers", "2"])


# --------------------------------------------------------------------------
# Standalone children (no ringmux): fd 3 = a listening socket
# --------------------------------------------------------------------------
FD3_LAUNCHER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ['LISTEN_FDS'] = '1'\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


class Standalone:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def spawn_on_fd3(cmd, cwd, env=None) -> Standalone:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    e = dict(os.environ)
    e["RINGMUX_CHILD_ADDR"] = f"127.0.0.1:{port}"
    if env:
        e.update(env)
    try:
        proc = subprocess.Popen(
            [PY, "-c", FD3_LAUNCHER, str(sock.fileno()), *cmd],
            pass_fds=(sock.fileno(),),
            stdin=subprocess.DEVNULL,
            cwd=str(cwd),
            env=e,
        )
    finally:
        sock.close()
    return Standalone(proc, port)


@pytest.fixture
def standalone(tmp_path):
    started: list[Standalone] = []

    def make(cmd, cwd=None, env=None) -> Standalone:
        d = Path(cwd) if cwd else tmp_path / f"child{len(started)}"
        d.mkdir(parents=True, exist_ok=True)
        s = spawn_on_fd3(cmd, d, env)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def wait_http_ok(url: str, timeout: float = 15.0):
    def ok():
        try:
            return httpx.get(url, timeout=1.0).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(ok, timeout, interval=0.05, what=f"{url} to answer")


def blob_bytes(size: int) -> bytes:
    """Same deterministic bytes as raw_child.py's GET /blob."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def raw_http(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read until the peer closes or the
    first complete response head + Content-Length body has arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(data)
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m and len(body) >= int(m.group(1)):
                    break
        return buf


def status_of(raw: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    assert m, f"not an HTTP response: {raw[:200]!r}"
    return int(m.group(1))


# --------------------------------------------------------------------------
# Metrics (--admin), /proc thread and fd helpers (lifecycle / churn tests)
# --------------------------------------------------------------------------
_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)$")


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (labels exactly as rendered)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        assert m, f"unparsable metrics line: {line!r}"
        v = m.group(2)
        out[m.group(1)] = float("inf") if v == "+Inf" else float(v)
    return out


def _ringmux_metrics_text(self, timeout: float = 5.0) -> str:
    assert self.metrics_url, (
        f"ringmux was not started with --admin (or printed no metrics line): {self.stdout_lines!r}"
    )
    r = httpx.get(self.metrics_url, timeout=timeout)
    assert r.status_code == 200, f"GET {self.metrics_url}: {r.status_code} {r.text[:200]}"
    return r.text


def _ringmux_metrics(self, timeout: float = 5.0) -> dict[str, float]:
    return parse_prometheus(self.metrics_text(timeout))


def _ringmux_metric(self, name: str, **labels) -> float:
    """One sample; labels as keyword arguments (rendered in the given order)."""
    key = name
    if labels:
        key += "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    m = self.metrics()
    assert key in m, f"metric {key} missing; have: {sorted(m)[:60]}"
    return m[key]


def _ringmux_wait_metric(self, name: str, pred, timeout: float = 5.0, **labels) -> float:
    """Poll one sample until pred(value) holds (bounded); returns the value."""
    last = [None]

    def ok():
        last[0] = self.metric(name, **labels)
        return pred(last[0])

    try:
        wait_until(ok, timeout, interval=0.02, what=f"metric {name}{labels}")
    except AssertionError:
        raise AssertionError(f"metric {name}{labels}: last value {last[0]} never satisfied the condition")
    return last[0]


def _ringmux_fd_count(self) -> int:
    return len(os.listdir(f"/proc/{self.pid}/fd"))


def _ringmux_threads(self) -> dict[int, str]:
    return proc_threads(self.pid)


Ringmux.metrics_text = _ringmux_metrics_text
Ringmux.metrics = _ringmux_metrics
Ringmux.metric = _ringmux_metric
Ringmux.wait_metric = _ringmux_wait_metric
Ringmux.fd_count = _ringmux_fd_count
Ringmux.threads = _ringmux_threads


def proc_threads(pid: int) -> dict[int, str]:
    """{tid: comm} of every thread of pid (threads that vanish meanwhile are skipped)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                out[int(t)] = f.read().rstrip("\n")
        except OSError:
            continue
    return out


def thread_nice(pid: int, tid: int) -> int | None:
    """Nice value of a thread (field 19 of its stat, parsed after the last ')')."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field 19 (nice) is rest[16]
    return int(rest[16])


def count_files(path) -> int:
    n = 0
    for _, _, files in os.walk(path):
        n += len(files)
    return n


def mkfiles(rm, key, n, dirs):
    """Has the raw child of `key` write `n` files in `dirs` nested directories."""
    with rm.client(timeout=httpx.Timeout(60.0, connect=5.0)) as c:
        r = c.post(rm.path_url("/mkfiles", key, f"n={n}&dirs={dirs}"))
    assert r.status_code == 200 and r.json()["made"] == n, (r.status_code, r.text[:200])


def dir_entries(path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


# Where closed rollouts' directories wait for their (paced) deletion.
TRASH = ".trash"


def child_dirs(inst) -> list[str]:
    """The entries of an instance directory but its trash."""
    return [n for n in dir_entries(inst) if n != TRASH]


def wait_trash_empty(inst, timeout=30.0):
    """Waits (bounded) until the instance's trash holds nothing."""
    path = os.path.join(inst, TRASH)
    wait_until(lambda: dir_entries(path) == [], timeout, what=f"trash {path} to be empty (holds {dir_entries(path)[:5]})")
