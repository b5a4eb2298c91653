"""The fork server: ``python -m ringmux_fork APP [--setup F] [--setup-task F]``.

Run by ``ringmux serve --fork -- python -m ringmux_fork my_tools:app``. Once:
import the app's module (its module-level state is the warm state), run the
optional ``setup()``, import uvicorn and load its config (protocol classes,
the app wrapped in its middleware), ``gc.freeze()``, report ready. Per spawn
request: fork (refused while threads run), and in the child: drop the
channel, die with ringmux, own process group, ``fchdir`` to the rollout's
directory, the listening socket as fd 3, ``setup_task(query)``, then serve the
app with uvicorn on that socket.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import importlib
import inspect
import json
import os
import selectors
import socket
import sys
import time
import traceback

from . import clone, hugepages, protocol
from .protocol import ENV_FD, ENV_PROTOCOL, ENV_RINGMUX_PID, PROTOCOL_VERSION

EXIT_SETUP_FAILED = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ringmux_fork",
        description=(
            "Warm fork server for `ringmux serve --fork`: imports APP once, then forks a "
            "copy-on-write child per rollout that runs SETUP_TASK(query) and serves APP "
            "with uvicorn on the socket ringmux hands it."
        ),
        epilog="Example: ringmux serve --fork -- python -m ringmux_fork my_tools:app "
        "--setup-task my_tools:setup_task",
    )
    p.add_argument("app", help="the ASGI app as MODULE:ATTRIBUTE (e.g. my_tools:app)")
    p.add_argument("--factory", action="store_true",
                   help="APP is a zero-argument function returning the app (called once, in the fork server)")
    p.add_argument("--setup", metavar="MODULE:FUNC",
                   help="run FUNC() once in the fork server after the import (more warm state)")
    p.add_argument("--setup-task", metavar="MODULE:FUNC",
                   help="run FUNC(query) in each child before it serves; query is the rollout's "
                        "first request's query string (parse it with urllib.parse.parse_qs); "
                        "an exception fails that rollout's start (502) and is logged by ringmux")
    p.add_argument("--app-dir", default=".", help="directory put first on sys.path (default: .)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default: warning)")
    p.add_argument("--access-log", action="store_true", help="uvicorn access log (default: off)")
    p.add_argument("--lifespan", default="auto", choices=["auto", "on", "off"],
                   help="uvicorn lifespan mode (default: auto)")
    p.add_argument("--http", default="auto", help="uvicorn HTTP protocol (auto, h11, httptools)")
    p.add_argument("--preimport", action="append", default=[], metavar="MODULE",
                   help="import MODULE in the fork server too (repeatable): modules the app imports "
                        "lazily on its first request or at start-up would otherwise be imported again "
                        "by every child (anyio's asyncio backend is pre-imported when anyio is loaded)")
    p.add_argument("--pool", type=int, default=2, metavar="N",
                   help="keep N children pre-forked, their event loop already running, so a new "
                        "rollout costs only the hand-over, its lifespan, its hook and its first "
                        "request (default: 2; 0: fork at hand-over). With a pool, an async "
                        "setup_task is awaited in the child's event loop, and a sync one must not "
                        "start an event loop of its own")
    p.add_argument("--no-hugepages", action="store_true",
                   help="do not collapse the warm heap into transparent huge pages (MADV_COLLAPSE); "
                        "collapsing makes each fork copy ~500x fewer page-table entries")
    return p


# Imported lazily by libraries on first use in an event loop: without this,
# every child pays the import (anyio's asyncio backend: ~14 ms measured, most
# of an MCP server's start).
LAZY_IMPORTS = {"anyio": ["anyio._backends._asyncio"]}


def _load(ref: str, what: str):
    mod_name, sep, attr = ref.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"{what} must be MODULE:ATTRIBUTE, got {ref!r}")
    obj = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _summary(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def redact(text: str, query: str) -> str:
    """`text` with every query value longer than 5 characters (raw and
    decoded) replaced: the query holds the rollout key, which must never
    reach a log."""
    from urllib.parse import unquote_plus

    for field in query.split("&"):
        value = field.split("=", 1)[1] if "=" in field else field
        for v in {value, unquote_plus(value)}:
            if len(v) > 5:
                text = text.replace(v, "<redacted>")
    return text


def _channel() -> tuple[socket.socket, int]:
    if ENV_FD not in os.environ:
        sys.exit(
            "ringmux_fork: RINGMUX_FORK_SERVER_FD is not set: this is a fork server for "
            "`ringmux serve --fork -- python -m ringmux_fork APP`, not a standalone server"
        )
    version = os.environ.get(ENV_PROTOCOL)
    if version != str(PROTOCOL_VERSION):
        sys.exit(f"ringmux_fork: ringmux speaks fork-server protocol {version}, "
                 f"this helper {PROTOCOL_VERSION}: upgrade one of them")
    fd = int(os.environ[ENV_FD])
    chan = socket.socket(fileno=fd)
    if chan.type != socket.SOCK_SEQPACKET:
        sys.exit(f"ringmux_fork: fd {fd} is not a SOCK_SEQPACKET socket")
    return chan, int(os.environ[ENV_RINGMUX_PID])


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    chan, ringmux_pid = _channel()
    t0 = time.monotonic()
    try:
        sys.path.insert(0, os.path.abspath(args.app_dir))
        app = _load(args.app, "APP")
        if args.factory:
            app = app()
        if args.setup:
            r = _load(args.setup, "--setup")()
            if inspect.isawaitable(r):
                asyncio.run(r)
        setup_task = _load(args.setup_task, "--setup-task") if args.setup_task else None
        import uvicorn  # the app's dependency, not ours

        config = uvicorn.Config(
            app, log_level=args.log_level, access_log=args.access_log,
            lifespan=args.lifespan, http=args.http,
        )
        config.load()  # protocol classes, middleware, lifespan class: once, here
        import uvicorn.server  # noqa: F401  (pre-import for every child)

        for pkg, mods in LAZY_IMPORTS.items():
            if pkg in sys.modules:
                for m in mods:
                    importlib.import_module(m)
        for m in args.preimport:
            importlib.import_module(m)
        clone.check_single_threaded()
        gc.collect()
        gc.freeze()  # the warm heap stays shared: the GC never writes to it in children
        huge = None if args.no_hugepages else hugepages.collapse_heap()
    except BaseException as e:  # noqa: BLE001 - everything is reported, then we exit
        traceback.print_exc()
        try:
            protocol.send(chan, {"type": "fatal", "error": f"fork server setup failed: {_summary(e)}"})
        except OSError:
            pass
        sys.exit(1)
    protocol.send(chan, {"type": "ready", "pid": os.getpid()})
    pages = ""
    if huge is not None:
        pages = f", {huge['mib']} MiB of heap in huge pages"
        if huge["error"]:
            pages += f" (some not: {huge['error']})"
    print(f"ringmux_fork: ready in {time.monotonic() - t0:.2f}s (pid {os.getpid()}{pages})",
          file=sys.stderr, flush=True)
    _serve_requests(chan, ringmux_pid, config, setup_task, args.pool)


class _Pooled:
    """A pre-forked child waiting for its rollout: (pid, pidfd, our end of
    its hand-over socket)."""

    __slots__ = ("pid", "pidfd", "sock")

    def __init__(self, pid, pidfd, sock):
        self.pid, self.pidfd, self.sock = pid, pidfd, sock

    def close(self):
        self.sock.close()
        os.close(self.pidfd)


def _serve_requests(chan, ringmux_pid, config, setup_task, pool_size=0) -> None:
    sel = selectors.DefaultSelector()
    sel.register(chan, selectors.EVENT_READ, None)
    pool: collections.deque[_Pooled] = collections.deque()
    pool_error = [None]

    def drop_pooled(entry, why):
        """A pooled child that will serve nobody: ringmux reaps it."""
        try:
            sel.unregister(entry.sock)
        except (KeyError, ValueError):
            pass
        try:
            protocol.send(chan, {"type": "orphan", "pid": entry.pid, "why": why}, [entry.pidfd])
        except OSError:
            pass
        entry.close()

    def refill():
        # Requests first: forking for the pool only when none is waiting.
        while len(pool) < pool_size and not sel.select(0):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                pid, pidfd = clone.fork_into_parent()
            except (OSError, clone.ThreadsRunning) as e:
                ours.close()
                theirs.close()
                if pool_error[0] != str(e):
                    pool_error[0] = str(e)
                    print(f"ringmux_fork: cannot pre-fork: {e}", file=sys.stderr, flush=True)
                return
            if pid == 0:
                _drop_zygote_fds(chan, sel, pool, [ours])
                _pooled_child(theirs, ringmux_pid, config, setup_task)
            theirs.close()
            entry = _Pooled(pid, pidfd, ours)
            pool.append(entry)
            sel.register(ours, selectors.EVENT_READ, entry)

    def take_pooled():
        if not pool:
            return None
        entry = pool.popleft()
        sel.unregister(entry.sock)
        return entry

    while True:
        refill()
        for key, _ in sel.select():
            if key.data is not None:
                # A pooled child's socket is readable only at its end: it died.
                if key.data in pool:
                    pool.remove(key.data)
                    drop_pooled(key.data, "died in the pool")
                continue
            _handle_one(chan, ringmux_pid, config, setup_task, take_pooled, drop_pooled,
                        lambda: _drop_zygote_fds(chan, sel, pool))


def _drop_zygote_fds(chan, sel, pool, extra=()) -> None:
    """In a new child: closes the fork server's own descriptors (its
    channel, its selector, the pool's sockets and pidfds), which no child may
    keep."""
    for s in (chan, *(e.sock for e in pool), *extra):
        s.close()
    sel.close()
    for e in pool:
        try:
            os.close(e.pidfd)
        except OSError:
            pass
    # Keep fd 3 taken until the rollout's listening socket replaces it, so
    # that nothing opened meanwhile (a pooled child's event loop) lands there.
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    if devnull != 3:
        os.dup2(devnull, 3, inheritable=False)
        os.close(devnull)


def _handle_one(chan, ringmux_pid, config, setup_task, take_pooled, drop_pooled, drop_own) -> None:
    try:
        got = protocol.recv(chan)
    except protocol.ProtocolError as e:
        protocol.send(chan, {"type": "fatal", "error": f"bad request from ringmux: {e}"})
        sys.exit(1)
    if got is None:
        sys.exit(0)  # ringmux closed the channel
    msg, fds = got
    rid = msg.get("id")
    if msg.get("type") != "spawn" or not isinstance(rid, int) or len(fds) not in (3, 4):
        for fd in fds:
            os.close(fd)
        if isinstance(rid, int):
            protocol.send(chan, {"type": "error", "id": rid,
                                 "error": "expected a spawn request with 3 or 4 descriptors"})
            return
        protocol.send(chan, {"type": "fatal", "error": "unexpected message from ringmux"})
        sys.exit(1)
    t0 = time.perf_counter()
    try:
        while (entry := take_pooled()) is not None:
            try:
                socket.send_fds(entry.sock, [json.dumps(msg).encode()], fds)
            except OSError:
                drop_pooled(entry, "died in the pool")
                continue
            fork_us = int((time.perf_counter() - t0) * 1e6)
            protocol.send(chan, {"type": "spawned", "id": rid, "pid": entry.pid, "fork_us": fork_us,
                                 "pooled": True}, [entry.pidfd])
            entry.close()
            return
        try:
            pid, pidfd = clone.fork_into_parent(fds[3] if len(fds) == 4 else None)
        except (OSError, clone.ThreadsRunning) as e:
            protocol.send(chan, {"type": "error", "id": rid, "error": str(e)})
            return
        if pid == 0:
            drop_own()  # the channel too: it is the fork server's alone
            _child(fds, msg, ringmux_pid, config, setup_task)  # never returns
        try:
            fork_us = int((time.perf_counter() - t0) * 1e6)
            protocol.send(chan, {"type": "spawned", "id": rid, "pid": pid, "fork_us": fork_us}, [pidfd])
        finally:
            os.close(pidfd)
    finally:
        for fd in fds:
            os.close(fd)


def _become_rollout(fds, msg, ringmux_pid, pooled=False):
    """In a new child: everything between the fork and the rollout's hook.
    Returns the status socket."""
    listen_fd, dir_fd, status_fd = fds[:3]
    status = socket.socket(fileno=status_fd)
    if len(fds) == 4:
        # Its cgroup: a child forked at hand-over was born there
        # (CLONE_INTO_CGROUP); a pooled one moves itself before any of the
        # tool's code runs.
        if pooled:
            clone.enter_cgroup(fds[3])
        os.close(fds[3])
    if not pooled:
        clone.die_with_parent(ringmux_pid)
        os.setpgid(0, 0)
    os.fchdir(dir_fd)
    os.close(dir_fd)
    if listen_fd != 3:
        os.dup2(listen_fd, 3)
        os.close(listen_fd)
    for name in (ENV_FD, ENV_PROTOCOL):
        os.environ.pop(name, None)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["RINGMUX_CHILD_ADDR"] = str(msg.get("addr", ""))
    return status


def _setup_failed(status, msg, e) -> None:
    query = str(msg.get("query", ""))
    print(redact(traceback.format_exc(), query), file=sys.stderr, end="", flush=True)
    try:
        error = redact(f"setup_task: {_summary(e)}", query)
        protocol.send(status, {"type": "setup_failed", "error": error})
    except OSError:
        pass
    os._exit(EXIT_SETUP_FAILED)


def _setup_done(status) -> None:
    try:
        protocol.send(status, {"type": "setup_done"})
    except OSError:
        pass
    status.close()


def _start_rollout(fds, msg, ringmux_pid, setup_task, pooled=False):
    """In a new child: `_become_rollout`, then the hook. Returns the status
    socket and the hook's awaitable (None unless it is async), which the
    caller runs in its way; exits (after reporting) if anything fails."""
    status = None
    try:
        status = _become_rollout(fds, msg, ringmux_pid, pooled)
        r = setup_task(str(msg.get("query", ""))) if setup_task is not None else None
        return status, (r if inspect.isawaitable(r) else None)
    except BaseException as e:  # noqa: BLE001
        _start_failed(status, msg, e)


def _start_failed(status, msg, e) -> None:
    if status is None:
        traceback.print_exc()
        os._exit(EXIT_SETUP_FAILED)
    _setup_failed(status, msg, e)


def _child(fds, msg, ringmux_pid, config, setup_task) -> None:
    """A child forked at hand-over: becomes the rollout's server."""
    status, pending = _start_rollout(fds, msg, ringmux_pid, setup_task)
    if pending is not None:
        try:
            asyncio.run(pending)
        except BaseException as e:  # noqa: BLE001
            _start_failed(status, msg, e)
    _setup_done(status)
    _run_uvicorn(lambda: __import__("uvicorn").Server(config), [socket.socket(fileno=3)])


def _run_uvicorn(make_server, sockets) -> None:
    code = 0
    try:
        make_server().run(sockets=sockets)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _pooled_child(sock, ringmux_pid, config, setup_task) -> None:
    """A pre-forked child: its event loop and uvicorn run before its rollout
    exists; the hand-over (the spawn request and its 3 descriptors, sent by
    the fork server on `sock`) makes it that rollout's server. The app's
    lifespan and setup_task run after the hand-over, in the rollout's
    directory, as in a child forked at hand-over."""
    try:
        clone.die_with_parent(ringmux_pid)
        os.setpgid(0, 0)
        comm = clone.get_comm()
        clone.set_comm("rmx-pooled")
        import uvicorn

        class PooledServer(uvicorn.Server):
            async def startup(self, sockets=None):
                loop = asyncio.get_running_loop()
                arrived = loop.create_future()
                loop.add_reader(sock.fileno(), lambda: arrived.done() or arrived.set_result(None))
                await arrived
                loop.remove_reader(sock.fileno())
                got = protocol.recv_raw(sock)
                if got is None:
                    os._exit(0)  # the fork server is gone: nobody will hand us a rollout
                data, fds = got
                msg = json.loads(data)
                sock.close()
                clone.set_comm(comm)
                status, pending = _start_rollout(fds, msg, ringmux_pid, setup_task, pooled=True)
                if pending is not None:
                    try:
                        await pending
                    except BaseException as e:  # noqa: BLE001
                        _start_failed(status, msg, e)
                _setup_done(status)
                await super().startup(sockets=[socket.socket(fileno=3)])

    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        os._exit(1)
    _run_uvicorn(lambda: PooledServer(config), None)
