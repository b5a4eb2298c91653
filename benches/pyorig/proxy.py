#!/usr/bin/env python3
"""pyorig: the seed's Python "fork-per-rollout multiplexer", rebuilt as a benchmark baseline.

What it is
    A uvicorn ASGI reverse proxy with one streaming ``httpx.AsyncClient``. Every
    rollout key (query parameter ``vf_state_secret``; requests without it share a
    default child) gets its own child process: on the first request for a key the
    proxy binds a socket to 127.0.0.1:0, creates ``<base>/<sha256(key)[:16]>``
    (``_default`` for no key), forks, and the child chdirs there and serves on the
    inherited socket; the parent polls ``connect`` every 50 ms until the child
    accepts. ``POST /vf/close?vf_state_secret=KEY`` kills the child (SIGKILL), reaps
    it (``waitpid``) and deletes its directory (``shutil.rmtree``), then answers
    ``200 {"closed": true}`` (``{"closed": false}`` for an unknown key).

Why it exists
    ringmux (the Rust io_uring proxy in this repository) is the production form of
    the design described in /work/shared/seed/reap-off-loop.txt. This module is
    that Python design as the seed pull request describes it, including the
    weaknesses the benchmarks measure: 50 ms connect polling for readiness, the
    cleanup run synchronously on the event loop (``--mode sync``, before the PR) or
    in a one-worker ThreadPoolExecutor under the fork ``asyncio.Lock`` and awaited
    through ``asyncio.shield`` (``--mode offloop``, the PR), so that one fork lock
    serializes every spawn with every cleanup. It speaks ringmux's external API
    (key parameter, close path, streamed responses), so the same load tools drive
    both. It is not meant for production use.

    As written, uvicorn adopts the child's inherited socket with
    ``socket.fromfd(fd, AF_UNIX, ...)``, so asyncio never sets TCP_NODELAY on the
    child's accepted sockets and keep-alive requests wait for a delayed ACK (about
    40 ms on Linux). ``--nodelay`` sets TCP_NODELAY on the listening socket before
    the fork (accepted sockets inherit it) to measure the design without that.

Child kinds
    --child python (default, faithful): the forked child serves a small ASGI MCP
        app (POST /mcp: initialize, tools/list, tools/call for echo, write_files,
        whoami; GET /healthz) with uvicorn on the inherited socket (``fd=3``).
    --child app --app MODULE:ATTR [--app-dir DIR]: the seed's real use. The proxy
        process imports the tool server's ASGI app ONCE at start (its module-level
        state is the warm state), and every forked child serves that app with
        uvicorn (lifespan on) on the inherited socket; readiness is again found by
        50 ms connect polling.
    --child exec --child-cmd CMD...: the forked child chdirs, dup2s the (already
        listening) socket to fd 3, sets LISTEN_FDS=1 and execs CMD, e.g.
        ``target/release/ringmux demo-child``, so every proxy under test can sit in
        front of the same native child.

Extra endpoint (not forwarded)
    GET /_pyorig/metrics -> {"loop_gap_max_s", "children", "pid", "threads", ...};
    loop_gap_max_s is the largest lateness of a 10 ms heartbeat task since the last
    read (reset on read): the seed's "maximum proxy-loop gap".

Usage
    python3 -m venv /tmp/pyorig-venv
    /tmp/pyorig-venv/bin/pip install -r benches/pyorig/requirements.txt
    /tmp/pyorig-venv/bin/python benches/pyorig/proxy.py --listen 127.0.0.1:0 \\
        [--base-dir DIR] [--mode sync|offloop (default offloop)] [--nodelay] \\
        [--child python | --child exec --child-cmd target/release/ringmux demo-child]
    It prints "pyorig: listening on http://127.0.0.1:PORT" once bound. SIGTERM or
    SIGINT kills and reaps every child and removes their directories.
"""

import argparse
import asyncio
import concurrent.futures
import ctypes
import gc
import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import traceback
from urllib.parse import parse_qsl

import httpx
import uvicorn

# --child app: the tool server's ASGI app, imported once by the proxy process.
WARM_APP = None

KEY_PARAM = "vf_state_secret"
CLOSE_PATH = "/vf/close"
METRICS_PATH = "/_pyorig/metrics"
READY_POLL_S = 0.050  # the seed's connect polling interval
READY_TIMEOUT_S = 10.0
HEARTBEAT_S = 0.010
CHILD_FD = 3
BACKLOG = 1024

HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"trailers",
    b"transfer-encoding",
    b"upgrade",
}


def strip_hop_by_hop(headers):
    """Headers minus hop-by-hop ones (fixed list, proxy-*, and those named in Connection)."""
    named = set()
    for k, v in headers:
        if k.lower() == b"connection":
            named.update(t.strip().lower() for t in v.split(b",") if t.strip())
    out = []
    for k, v in headers:
        lk = k.lower()
        if lk in HOP_BY_HOP or lk in named or lk.startswith(b"proxy-"):
            continue
        out.append((k, v))
    return out


def key_of(query_string):
    """First value of the key parameter (percent-decoded), or None if absent."""
    if not query_string:
        return None
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == KEY_PARAM:
            return value
    return None


def dir_name(key):
    if key is None:
        return "_default"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


async def send_simple(send, status, body, content_type=b"text/plain; charset=utf-8"):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def read_body(receive):
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ConnectionResetError("client went away")
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(chunks)


# --------------------------------------------------------------------------
# The child's app (--child python): a minimal MCP server, JSON responses only.
# --------------------------------------------------------------------------

PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
TOOLS = [
    {
        "name": "echo",
        "description": "Return the given text unchanged.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
    {
        "name": "write_files",
        "description": "Create `count` one-byte files spread round-robin over the working directory and "
        "`dirs` nested subdirectories d0/d1/...; returns the number created.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "count": {"type": "integer", "minimum": 0, "maximum": 100000},
                "dirs": {"type": "integer", "minimum": 0, "maximum": 256, "default": 0},
            },
            "required": ["count"],
        },
    },
    {
        "name": "whoami",
        "description": "Return this server process's pid and working directory as JSON.",
        "inputSchema": {"type": "object", "properties": {}},
    },
]


def write_files(count, dirs):
    """File j goes to level j % (dirs+1): level 0 is the cwd, level i is d0/.../d{i-1}."""
    levels = ["."]
    path = "."
    for i in range(dirs):
        path = os.path.join(path, f"d{i}")
        levels.append(path)
    if dirs:
        os.makedirs(levels[-1], exist_ok=True)
    n = len(levels)
    for j in range(count):
        with open(os.path.join(levels[j % n], f"f{j}"), "wb") as f:
            f.write(b"x")
    return count


def int_arg(args, name, default, lo, hi):
    v = args.get(name, default)
    if v is None or isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"`{name}` must be an integer in [{lo}, {hi}]")
    return v


def call_tool(params):
    if not isinstance(params, dict) or not isinstance(params.get("name"), str):
        return None, (-32602, "tools/call needs a string `name`")
    args = params.get("arguments") or {}
    if not isinstance(args, dict):
        return None, (-32602, "`arguments` must be an object")
    name = params["name"]
    try:
        if name == "echo":
            text = args.get("text")
            if not isinstance(text, str):
                raise ValueError("`text` must be a string")
        elif name == "write_files":
            text = str(write_files(int_arg(args, "count", None, 0, 100000), int_arg(args, "dirs", 0, 0, 256)))
        elif name == "whoami":
            text = json.dumps({"pid": os.getpid(), "cwd": os.getcwd()})
        else:
            return None, (-32602, f"unknown tool: {name}")
    except (ValueError, OSError) as e:
        return {"content": [{"type": "text", "text": str(e)}], "isError": True}, None
    return {"content": [{"type": "text", "text": text}], "isError": False}, None


def handle_rpc(msg):
    """One JSON-RPC message -> (response dict or None for a notification)."""
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or not isinstance(msg.get("method"), str):
        return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "invalid request"}}
    if "id" not in msg:
        return None  # notification
    method, params = msg["method"], msg.get("params")
    result, error = None, None
    if method == "initialize":
        requested = (params or {}).get("protocolVersion") if isinstance(params, dict) else None
        result = {
            "protocolVersion": requested if requested in PROTOCOL_VERSIONS else "2025-06-18",
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "pyorig-child", "version": "0.1"},
        }
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        result, error = call_tool(params)
    else:
        error = (-32601, f"method not found: {method}")
    if error is not None:
        return {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": error[0], "message": error[1]}}
    return {"jsonrpc": "2.0", "id": msg["id"], "result": result}


async def child_app(scope, receive, send):
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if path == "/healthz" and method == "GET":
        return await send_simple(send, 200, b"ok")
    if path != "/mcp":
        return await send_simple(send, 404, b"not found")
    if method == "DELETE":
        return await send_simple(send, 200, b"")
    if method != "POST":
        return await send_simple(send, 405, b"method not allowed")
    try:
        msg = json.loads(await read_body(receive))
    except ValueError:
        body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
        return await send_simple(send, 400, body.encode(), b"application/json")
    reply = handle_rpc(msg)
    if reply is None:
        return await send_simple(send, 202, b"")
    await send_simple(send, 200, json.dumps(reply).encode(), b"application/json")


# --------------------------------------------------------------------------
# The multiplexer (parent).
# --------------------------------------------------------------------------


class ChildNotReady(Exception):
    pass


class ChildClosed(Exception):
    pass


class Child:
    def __init__(self, key, path, loop):
        self.key = key
        self.path = path
        self.pid = None
        self.port = None
        self.closed = False
        self.forked = loop.create_future()  # set once the fork happened (or will not)
        self.ready = loop.create_future()  # None when ready, or an exception
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # mark retrieved
        self.cleaned = loop.create_future()  # set when reaped and deleted


def set_pdeathsig():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Mux:
    def __init__(self, args, base):
        self.args = args
        self.base = base
        self.loop = asyncio.get_running_loop()
        self.children = {}  # key -> Child (spawning or ready)
        self.retiring = {}  # key -> Child being cleaned up
        self.unreaped = {}  # pid -> path, every forked child not yet reaped
        self.fork_lock = asyncio.Lock()
        self.executors = set()
        self.tasks = set()
        self.gap_max = 0.0
        self.cleanup_last_s = None
        self.cleanups = 0
        self.parent_pid = os.getpid()
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=5.0, read=None, write=None, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=30.0),
            trust_env=False,
            follow_redirects=False,
        )
        self.heartbeat_task = self.loop.create_task(self.heartbeat())

    # ---- metrics ----

    async def heartbeat(self):
        loop = self.loop
        while True:
            t = loop.time()
            await asyncio.sleep(HEARTBEAT_S)
            late = loop.time() - t - HEARTBEAT_S
            if late > self.gap_max:
                self.gap_max = late

    def metrics(self):
        gap, self.gap_max = self.gap_max, 0.0
        return {
            "loop_gap_max_s": gap,
            "children": len(self.children),
            "pid": os.getpid(),
            "threads": threading.active_count(),
            "mode": self.args.mode,
            "cleanups": self.cleanups,
            "cleanup_last_s": self.cleanup_last_s,
        }

    # ---- spawning ----

    async def get_child(self, key):
        c = self.children.get(key)
        if c is not None and c.ready.done() and c.ready.exception() is None:
            return c  # lock-free fast path
        if c is None:
            c = Child(key, os.path.join(self.base, dir_name(key)), self.loop)
            self.children[key] = c
            t = self.loop.create_task(self.spawn(c))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)
        await asyncio.shield(c.ready)
        return c

    async def spawn(self, c):
        try:
            async with self.fork_lock:
                if c.closed:
                    raise ChildClosed("closed before it started")
                try:
                    self.fork_child(c)
                finally:
                    if not c.forked.done():
                        c.forked.set_result(None)
            # Readiness: poll connect every 50 ms (the seed's way).
            deadline = self.loop.time() + READY_TIMEOUT_S
            while True:
                if c.closed:
                    raise ChildClosed("closed while starting")
                if await self.try_connect(c.port):
                    break
                if self.loop.time() >= deadline:
                    raise ChildNotReady("child not ready in %.0f s" % READY_TIMEOUT_S)
                await asyncio.sleep(READY_POLL_S)
            if c.closed:
                raise ChildClosed("closed while starting")
            c.ready.set_result(None)
        except Exception as e:
            if not c.closed:
                # Never became ready (or fork failed): reap it; waiters get the error after.
                try:
                    await self.retire(c)
                except Exception:
                    traceback.print_exc()
            if not c.ready.done():
                c.ready.set_exception(e)

    async def try_connect(self, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            await self.loop.sock_connect(s, ("127.0.0.1", port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def fork_child(self, c):
        """Runs under the fork lock, with no await: bind, mkdir, fork."""
        args = self.args
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if args.nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(("127.0.0.1", 0))
            if args.child == "exec":
                sock.listen(BACKLOG)  # native children expect a listening socket
            c.port = sock.getsockname()[1]
            os.makedirs(c.path, mode=0o700, exist_ok=True)
            try:
                pid = os.fork()
            except OSError:
                shutil.rmtree(c.path, ignore_errors=True)
                raise
            if pid == 0:
                self.child_main(sock, c.path)  # never returns
            c.pid = pid
            self.unreaped[pid] = c.path
        finally:
            sock.close()

    def child_main(self, sock, path):
        code = 1
        try:
            set_pdeathsig()
            if os.getppid() != self.parent_pid:
                os._exit(1)
            gc.freeze()  # never collect (and so never close) objects inherited from the parent
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            os.chdir(path)
            if sock.fileno() != CHILD_FD:
                os.dup2(sock.fileno(), CHILD_FD)
            os.set_inheritable(CHILD_FD, True)
            if self.args.child == "exec":
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores it; exec would keep that
                env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
                os.execvpe(self.args.child_cmd[0], self.args.child_cmd, env)  # other fds are CLOEXEC
            # Python child: drop the parent's sockets (clients, upstreams, listener,
            # epoll) so they close when the parent closes them, then run a fresh
            # loop with uvicorn on fd 3, the way `uvicorn --fd 3` adopts it.
            os.closerange(CHILD_FD + 1, 1 << 20)
            asyncio.events._set_running_loop(None)
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            app = WARM_APP if self.args.child == "app" else child_app
            config = uvicorn.Config(
                app,
                fd=CHILD_FD,
                lifespan="auto" if self.args.child == "app" else "off",
                http="h11",
                loop="asyncio",
                log_level="warning",
                access_log=False,
                timeout_keep_alive=60,
            )
            loop.run_until_complete(uvicorn.Server(config).serve())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    # ---- cleanup ----

    def reap_blocking(self, pid, path):
        """waitpid + rmtree, in this order (on the loop in sync mode, in the worker off-loop)."""
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        self.unreaped.pop(pid, None)
        shutil.rmtree(path, ignore_errors=True)

    async def retire(self, c):
        """Remove c from the map, SIGKILL it, reap it, delete its directory."""
        c.closed = True
        if self.children.get(c.key) is c:
            del self.children[c.key]
        self.retiring[c.key] = c
        try:
            await asyncio.shield(c.forked)
            t0 = time.perf_counter()
            if c.pid is not None:
                try:
                    os.kill(c.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if self.args.mode == "sync":
                    self.reap_blocking(c.pid, c.path)  # blocks the loop: the seed before the PR
                else:
                    await self.reap_offloop(c.pid, c.path)
            self.cleanup_last_s = time.perf_counter() - t0
            self.cleanups += 1
        finally:
            if self.retiring.get(c.key) is c:
                del self.retiring[c.key]
            if not c.cleaned.done():
                c.cleaned.set_result(None)

    async def reap_offloop(self, pid, path):
        # The PR: under the fork lock, one short-lived worker, joined before the lock
        # is released; shielded so a cancelled close still finishes the cleanup.
        async with self.fork_lock:
            ex = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyorig-reap")
            self.executors.add(ex)
            try:
                fut = self.loop.run_in_executor(ex, self.reap_blocking, pid, path)
                try:
                    await asyncio.shield(fut)
                except asyncio.CancelledError:
                    await fut
                    raise
            finally:
                ex.shutdown(wait=True)
                self.executors.discard(ex)

    async def close(self, key):
        c = self.children.get(key)
        if c is not None:
            await self.retire(c)
            return True
        c = self.retiring.get(key)
        if c is not None:  # a concurrent close: answer after the first one's cleanup
            await asyncio.shield(c.cleaned)
            return True
        return False

    def shutdown(self):
        """Kill, reap and delete every child (synchronously; the loop is stopping)."""
        for ex in list(self.executors):
            ex.shutdown(wait=True)
        for pid, path in list(self.unreaped.items()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid, path in list(self.unreaped.items()):
            self.reap_blocking(pid, path)
        for c in list(self.children.values()) + list(self.retiring.values()):
            shutil.rmtree(c.path, ignore_errors=True)
        self.children.clear()

    # ---- forwarding ----

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        key = key_of(scope.get("query_string", b""))
        if path == METRICS_PATH:
            return await send_simple(send, 200, json.dumps(self.metrics()).encode(), b"application/json")
        if path == CLOSE_PATH:
            closed = await self.close(key)
            return await send_simple(send, 200, json.dumps({"closed": closed}).encode(), b"application/json")
        try:
            child = await self.get_child(key)
        except ChildNotReady as e:
            return await send_simple(send, 504, f"child not ready: {e}\n".encode())
        except Exception as e:
            return await send_simple(send, 502, f"child unavailable: {type(e).__name__}\n".encode())
        try:
            body = await read_body(receive)
        except ConnectionResetError:
            return
        headers = [
            (k, v) for k, v in strip_hop_by_hop(scope["headers"]) if k.lower() not in (b"host", b"content-length")
        ]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            raw_path += b"?" + scope["query_string"]
        url = httpx.URL(scheme="http", host="127.0.0.1", port=child.port, raw_path=raw_path)
        req = self.client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            resp = await self.client.send(req, stream=True)
        except (httpx.HTTPError, OSError) as e:
            return await send_simple(send, 502, f"upstream error: {type(e).__name__}\n".encode())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status_code,
                    "headers": strip_hop_by_hop(resp.headers.raw),
                }
            )
            if "content-length" in resp.headers:
                await self.pump(resp, send)
            else:
                # Unbounded (SSE, chunked): stop reading upstream when the client goes away.
                pump = self.loop.create_task(self.pump(resp, send))
                gone = self.loop.create_task(wait_disconnect(receive))
                try:
                    await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    gone.cancel()
                    if not pump.done():
                        pump.cancel()
                    try:
                        await pump
                    except asyncio.CancelledError:
                        me = asyncio.current_task()
                        if getattr(me, "cancelling", lambda: 0)():
                            raise
        except (httpx.HTTPError, OSError):
            return  # response started: uvicorn closes the connection (incomplete response)
        finally:
            await resp.aclose()

    async def pump(self, resp, send):
        async for chunk in resp.aiter_raw():
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def wait_disconnect(receive):
    while True:
        if (await receive())["type"] == "http.disconnect":
            return


def parse_listen(s):
    host, sep, port = s.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise argparse.ArgumentTypeError("bad port") from None


async def amain(args, sock, base):
    mux = Mux(args, base)
    config = uvicorn.Config(
        mux,
        lifespan="off",
        http="h11",
        loop="asyncio",
        log_level="warning",
        access_log=False,
        server_header=False,  # the child's Server/Date headers pass through
        date_header=False,
        timeout_keep_alive=60,
        timeout_graceful_shutdown=3,
        backlog=BACKLOG,
    )
    server = uvicorn.Server(config)

    def on_signal(signum, frame):
        server.should_exit = True

    # uvicorn captures SIGINT/SIGTERM while serving and re-raises them afterwards
    # into these handlers, so the cleanup below always runs.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        await server.serve(sockets=[sock])
    finally:
        mux.heartbeat_task.cancel()
        mux.shutdown()
        await mux.client.aclose()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 0), help="HOST:PORT (port 0: any)")
    p.add_argument("--base-dir", help="parent of the children's directories (default: a new temp dir)")
    p.add_argument(
        "--mode",
        choices=("sync", "offloop"),
        default="offloop",
        help="cleanup on the event loop (before the seed PR) or in a one-worker executor (the PR, default)",
    )
    p.add_argument("--nodelay", action="store_true", help="TCP_NODELAY on the child's listening socket")
    p.add_argument("--child", choices=("python", "exec", "app"), default="python",
                   help="forked Python child, exec, or a forked child serving --app")
    p.add_argument("--app", metavar="MODULE:ATTR", help="for --child app: the ASGI app imported once at start")
    p.add_argument("--app-dir", default=".", help="for --child app: put first on sys.path")
    p.add_argument(
        "--child-cmd",
        nargs=argparse.REMAINDER,
        default=None,
        help="command for --child exec (must come last), e.g. target/release/ringmux demo-child",
    )
    args = p.parse_args()
    if args.child == "exec" and not args.child_cmd:
        p.error("--child exec needs --child-cmd CMD...")
    if args.child == "app":
        if not args.app or ":" not in args.app:
            p.error("--child app needs --app MODULE:ATTR")
        import importlib
        import sys

        global WARM_APP
        sys.path.insert(0, os.path.abspath(args.app_dir))
        mod, attr = args.app.split(":", 1)
        WARM_APP = getattr(importlib.import_module(mod), attr)  # the one expensive import

    made_base = False
    if args.base_dir:
        base = os.path.abspath(args.base_dir)
        if not os.path.isdir(base):
            os.makedirs(base, mode=0o700)
            made_base = True
    else:
        base = tempfile.mkdtemp(prefix="pyorig-")
        made_base = True

    host, port = args.listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly, as uvicorn's own bind (getaddrinfo) does, so asyncio
    # sets TCP_NODELAY on the client connections it accepts.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"pyorig: listening on http://{shown}:{bound}", flush=True)
    try:
        asyncio.run(amain(args, sock, base))
    finally:
        if made_base:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
