"""MCP test child for ringmux's transport tests (test_mcp_transport.py).

An MCPServer (ex-FastMCP) from the official SDK, stateful streamable HTTP (SSE
responses), served as a ringmux child with
    uvicorn --fd 3 --app-dir tests/py/children mcp_transport_child:app
or standalone (no ringmux) on any listening socket.

Tools:
  whoami()                         -> {"pid", "cwd"}
  ask_sampling(prompt)             -> asks the CLIENT for sampling (sampling/createMessage on
                                      the call's SSE stream) and returns what the client answered
  ask_elicitation(question)        -> asks the CLIENT for a form (elicitation/create) and returns
                                      the client's answer
  lockstep(name, n, ack_timeout_s) -> sends progress i (i = 0..n-1) and after each one waits for
                                      ack(name, i) to be called (a separate request); fails if an
                                      ack does not come in time. So tick i+1 can only be produced
                                      after the client has RECEIVED tick i.
  ack(name, i)                     -> releases lockstep(name, ...) past tick i
  store_sleep_read(value, sleep_s, signal_path, wait_path, wait_timeout_s)
                                   -> the seed users' isolation check: stores value in a module
                                      global, [touches signal_path], sleeps sleep_s,
                                      [waits until wait_path exists], reads the global back.
                                      Returns {"stored", "read", "pid"}.

Besides MCP, the ASGI app answers GET /transport-log itself: a JSON list, one entry per
HTTP request the MCP app served so far, with the request's method, its Mcp-Session-Id and
MCP-Protocol-Version headers, the response status and the response's Mcp-Session-Id.
"""

import asyncio
import json
import os
import time
import warnings

warnings.filterwarnings("ignore", message=".*capability is deprecated.*")
warnings.filterwarnings("ignore", message=".*deprecated as of 2026-07-28.*")

from mcp.server.mcpserver import Context, MCPServer  # noqa: E402
from mcp.types import SamplingMessage, TextContent  # noqa: E402
from pydantic import BaseModel  # noqa: E402

GLOBAL = {"value": None}
ACKS: dict = {}
ACK_COND: asyncio.Condition | None = None
TRANSPORT_LOG: list = []

server = MCPServer("ringmux-transport-child", log_level="WARNING")


def _cond() -> asyncio.Condition:
    global ACK_COND
    if ACK_COND is None:
        ACK_COND = asyncio.Condition()
    return ACK_COND


@server.tool()
def whoami() -> dict:
    """This child's pid and working directory."""
    return {"pid": os.getpid(), "cwd": os.getcwd()}


@server.tool()
async def ask_sampling(prompt: str, ctx: Context) -> dict:
    """Ask the client to sample; return exactly what it answered."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
            max_tokens=64,
            related_request_id=ctx.request_id,
        )
    content = res.content
    return {
        "prompt": prompt,
        "text": getattr(content, "text", None),
        "model": res.model,
        "stop_reason": res.stop_reason,
        "pid": os.getpid(),
    }


class Answer(BaseModel):
    name: str
    number: int


@server.tool()
async def ask_elicitation(question: str, ctx: Context) -> dict:
    """Ask the client for a form (name, number); return its answer."""
    res = await ctx.elicit(message=question, schema=Answer)
    data = res.data.model_dump() if res.action == "accept" else None
    return {"question": question, "action": res.action, "data": data, "pid": os.getpid()}


@server.tool()
async def lockstep(name: str, n: int, ack_timeout_s: float, ctx: Context) -> dict:
    """Progress i, then wait for ack(name, i); n rounds."""
    cond = _cond()
    for i in range(n):
        await ctx.report_progress(i, n, f"{name}:{i}")
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(lambda: ACKS.get(name, 0) > i), ack_timeout_s)
            except asyncio.TimeoutError:
                raise RuntimeError(f"lockstep {name}: no ack for tick {i} within {ack_timeout_s} s")
    return {"name": name, "ticks": n, "pid": os.getpid()}


@server.tool()
async def ack(name: str, i: int) -> str:
    """Release lockstep(name) past tick i."""
    cond = _cond()
    async with cond:
        ACKS[name] = max(ACKS.get(name, 0), i + 1)
        cond.notify_all()
    return "ok"


@server.tool()
async def store_sleep_read(
    value: str,
    sleep_s: float,
    ctx: Context,
    signal_path: str = "",
    wait_path: str = "",
    wait_timeout_s: float = 10.0,
) -> dict:
    """Store value in a module global, sleep, read it back."""
    GLOBAL["value"] = value
    if signal_path:
        with open(signal_path, "w") as f:
            f.write(value)
    await ctx.report_progress(1, 2, "stored")
    await asyncio.sleep(sleep_s)
    if wait_path:
        deadline = time.monotonic() + wait_timeout_s
        while not os.path.exists(wait_path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{wait_path} did not appear within {wait_timeout_s} s")
            await asyncio.sleep(0.01)
    return {"stored": value, "read": GLOBAL["value"], "pid": os.getpid()}


_mcp_app = server.streamable_http_app()


def _header(scope_headers, name: bytes):
    for k, v in scope_headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


async def app(scope, receive, send):
    """The MCP app, plus GET /transport-log, recording every MCP request it serves."""
    if scope["type"] != "http":
        return await _mcp_app(scope, receive, send)
    if scope["path"] == "/transport-log":
        body = json.dumps(TRANSPORT_LOG).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    entry = {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope.get("query_string", b"").decode("latin-1"),
        "session_id": _header(scope["headers"], b"mcp-session-id"),
        "protocol_version": _header(scope["headers"], b"mcp-protocol-version"),
        "status": None,
        "response_session_id": None,
    }
    TRANSPORT_LOG.append(entry)

    async def send_wrapper(message):
        if message["type"] == "http.response.start":
            entry["status"] = message["status"]
            entry["response_session_id"] = _header(message.get("headers", []), b"mcp-session-id")
        await send(message)

    await _mcp_app(scope, receive, send_wrapper)
