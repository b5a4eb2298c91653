"""Thin wrappers around the official MCP Python SDK (mcp 2.x) client.

mcp 2.x facts used here:
  from mcp import ClientSession
  from mcp.client.streamable_http import streamable_http_client
  async with streamable_http_client(url) as (read, write):      # a 2-tuple in 2.x
      async with ClientSession(read, write) as session:
          await session.initialize()
          tools = (await session.list_tools()).tools
          res = await session.call_tool("name", {"arg": 1})      # res.is_error,
                                                                 # res.content, res.structured_content
"""

from __future__ import annotations

import contextlib
import json

import anyio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

MCP_OP_TIMEOUT = 20.0  # seconds; every MCP session in the tests is bounded by this


@contextlib.asynccontextmanager
async def mcp_session(url: str, timeout: float = MCP_OP_TIMEOUT):
    """An initialized ClientSession; the whole block is bounded by `timeout`."""
    with anyio.fail_after(timeout):
        async with streamable_http_client(url) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=timeout) as session:
                await session.initialize()
                yield session


def tool_text(result) -> str:
    """Concatenated text content of a CallToolResult (asserts it is not an error)."""
    assert not getattr(result, "is_error", False), f"tool returned an error: {result!r}"
    parts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    return "".join(parts)


def tool_json(result):
    """structured_content if present, else the text content parsed as JSON."""
    assert not getattr(result, "is_error", False), f"tool returned an error: {result!r}"
    sc = getattr(result, "structured_content", None)
    if sc:
        # MCPServer wraps non-object returns as {"result": ...}
        if set(sc.keys()) == {"result"}:
            return sc["result"]
        return sc
    return json.loads(tool_text(result))
