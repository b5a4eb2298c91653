"""MCP test child for ringmux: an MCPServer (ex-FastMCP) from the official SDK.

Run as the ringmux CMD:
    .venv/bin/uvicorn --fd 3 --app-dir tests/py/children mcp_child:app

Tools: remember(value), recall(), whoami(), echo(text), slow_count(n, interval_ms)
State lives in a module global, so it is per child process (= per rollout key).
"""

import asyncio
import os
import warnings

warnings.filterwarnings("ignore", message=".*logging capability is deprecated.*")

try:  # mcp 2.x
    from mcp.server.mcpserver import Context, MCPServer
except ImportError:  # pragma: no cover - mcp 1.x fallback
    from mcp.server.fastmcp import Context, FastMCP as MCPServer  # type: ignore

MEMORY = {"value": None}

server = MCPServer("ringmux-test-child", log_level="WARNING")


@server.tool()
def remember(value: str) -> str:
    """Store a value in this child's memory."""
    MEMORY["value"] = value
    return "ok"


@server.tool()
def recall() -> str:
    """Return the stored value ('' if none)."""
    return MEMORY["value"] or ""


@server.tool()
def whoami() -> dict:
    """Return this child's pid and working directory."""
    return {"pid": os.getpid(), "cwd": os.getcwd()}


@server.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return text


@server.tool()
async def slow_count(n: int, interval_ms: int, ctx: Context) -> int:
    """Count to n, sending a progress/log message every interval (SSE traffic)."""
    for i in range(n):
        await ctx.info(f"tick {i}")
        await asyncio.sleep(interval_ms / 1000.0)
    return n


app = server.streamable_http_app()
