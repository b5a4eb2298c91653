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
import gc
import importlib
import inspect
import os
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
    _serve_requests(chan, ringmux_pid, config, setup_task)


def _serve_requests(chan, ringmux_pid, config, setup_task) -> None:
    while True:
        try:
            got = protocol.recv(chan)
        except protocol.ProtocolError as e:
            protocol.send(chan, {"type": "fatal", "error": f"bad request from ringmux: {e}"})
            sys.exit(1)
        if got is None:
            sys.exit(0)  # ringmux closed the channel
        msg, fds = got
        rid = msg.get("id")
        if msg.get("type") != "spawn" or not isinstance(rid, int) or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            if isinstance(rid, int):
                protocol.send(chan, {"type": "error", "id": rid,
                                     "error": "expected a spawn request with 3 descriptors"})
                continue
            protocol.send(chan, {"type": "fatal", "error": "unexpected message from ringmux"})
            sys.exit(1)
        t0 = time.perf_counter()
        try:
            pid, pidfd = clone.fork_into_parent()
        except (OSError, clone.ThreadsRunning) as e:
            for fd in fds:
                os.close(fd)
            protocol.send(chan, {"type": "error", "id": rid, "error": str(e)})
            continue
        if pid == 0:
            _child(chan, fds, msg, ringmux_pid, config, setup_task)  # never returns
        try:
            fork_us = int((time.perf_counter() - t0) * 1e6)
            protocol.send(chan, {"type": "spawned", "id": rid, "pid": pid, "fork_us": fork_us}, [pidfd])
        finally:
            os.close(pidfd)
            for fd in fds:
                os.close(fd)


def _child(chan, fds, msg, ringmux_pid, config, setup_task) -> None:
    listen_fd, dir_fd, status_fd = fds
    status = socket.socket(fileno=status_fd)
    try:
        chan.close()  # the channel is the fork server's alone
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
        if setup_task is not None:
            r = setup_task(str(msg.get("query", "")))
            if inspect.isawaitable(r):
                asyncio.run(r)
    except BaseException as e:  # noqa: BLE001
        query = str(msg.get("query", ""))
        print(redact(traceback.format_exc(), query), file=sys.stderr, end="", flush=True)
        try:
            error = redact(f"setup_task: {_summary(e)}", query)
            protocol.send(status, {"type": "setup_failed", "error": error})
        except OSError:
            pass
        os._exit(EXIT_SETUP_FAILED)
    try:
        protocol.send(status, {"type": "setup_done"})
    except OSError:
        pass
    status.close()
    code = 0
    try:
        import uvicorn

        sock = socket.socket(fileno=3)
        uvicorn.Server(config).run(sockets=[sock])
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
