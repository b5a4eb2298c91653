"""Fork-mode test child: an official-SDK MCPServer with warm state, served by
the ringmux_fork helper (one import in the fork server, one fork per rollout):

    ringmux serve --fork -- python -m ringmux_fork fork_child:app \
        --app-dir tests/py/children --setup fork_child:setup --setup-task fork_child:setup_task

WARM is built at import (FORK_CHILD_WARM_MIB MiB of strings, default 1) and
touched by setup(): every child starts from it. setup_task(query) records the
rollout's query; `fail_setup=1` in it makes the hook raise.
"""

import asyncio
import os
import warnings
from pathlib import Path
from urllib.parse import parse_qs

warnings.filterwarnings("ignore", message=".*logging capability is deprecated.*")

from mcp.server.mcpserver import MCPServer  # noqa: E402

IMPORTED_BY = os.getpid()
WARM = {"owner": IMPORTED_BY, "marker": "warm"}
# A big table, built once at import: the expensive warm state.
BIG = [f"row-{i:08d}" + "x" * 96 for i in range(int(float(os.environ.get("FORK_CHILD_WARM_MIB", "1")) * 1024 * 1024) // 160)]
SETUP = {"setup_pid": None, "query": None, "task_pid": None}
GLOBAL = {"value": None}

server = MCPServer("ringmux-fork-test-child", log_level="WARNING")


def setup():
    SETUP["setup_pid"] = os.getpid()
    WARM["setup_ran"] = True
    tag = os.environ.get("FORK_CHILD_SETUP_DAEMON")
    if tag:  # a helper process of the fork server itself, out of its group
        import subprocess

        subprocess.Popen(["setsid", "sleep", f"{tag}1"], stdin=subprocess.DEVNULL)


def setup_task(query: str):
    if parse_qs(query).get("fail_setup") == ["1"]:
        raise RuntimeError(f"setup_task refused this rollout (query {query})")
    SETUP["query"] = query
    SETUP["task_pid"] = os.getpid()


@server.tool()
def whoami() -> dict:
    """pid, parent, cwd, who imported the module and what the hook saw."""
    return {
        "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
        "imported_by": IMPORTED_BY, "setup": dict(SETUP), "big_rows": len(BIG),
    }


@server.tool()
async def global_and_file(value: str, sleep_ms: int) -> dict:
    """Write a module global and ./state.txt, sleep, read both back."""
    GLOBAL["value"] = value
    Path("state.txt").write_text(value)
    await asyncio.sleep(sleep_ms / 1000.0)
    return {"global": GLOBAL["value"], "file": Path("state.txt").read_text()}


@server.tool()
def warm_get() -> dict:
    """The warm state as this child sees it."""
    return dict(WARM)


@server.tool()
def warm_set(key: str, value: str) -> str:
    """Change the warm state (in this child only: it is a copy)."""
    WARM[key] = value
    return "ok"


@server.tool()
def crash(code: int = 9) -> str:
    """Exit at once."""
    os._exit(code)


app = server.streamable_http_app()


@server.tool()
def start_detached(tag: int) -> str:
    """Start processes that leave this process group: a setsid sleep and a
    double-forked one (the escape a cgroup must contain)."""
    import subprocess

    subprocess.Popen(["setsid", "sleep", f"{tag}1"], stdin=subprocess.DEVNULL)
    subprocess.Popen(["sh", "-c", f"(sleep {tag}2 &)"], stdin=subprocess.DEVNULL).wait()
    return "started"
