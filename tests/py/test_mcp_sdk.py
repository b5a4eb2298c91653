"""The official MCP Python SDK (client and server) through ringmux."""

import os
import uuid

import anyio
import pytest

from conftest import MCP_CMD, module_ringmux
from mcp_helpers import mcp_session, tool_json, tool_text


@pytest.fixture(scope="module")
def mcp_ringmux(tmp_path_factory, request):
    return module_ringmux(tmp_path_factory, request, cmd=MCP_CMD)


def _url(rm, key):
    return rm.path_url("/mcp", key)


def test_initialize_list_and_call_tools(mcp_ringmux):
    rm = mcp_ringmux
    key = f"mcp-{uuid.uuid4().hex}"

    async def main():
        async with mcp_session(_url(rm, key)) as s:
            names = {t.name for t in (await s.list_tools()).tools}
            assert {"remember", "recall", "whoami", "echo", "slow_count"} <= names
            assert tool_text(await s.call_tool("echo", {"text": "héllo"})) == "héllo"
            who = tool_json(await s.call_tool("whoami", {}))
            return who

    who = anyio.run(main)
    assert who["cwd"] == rm.child_dir(key)
    assert who["pid"] in rm.child_pids()


def test_two_keys_at_once_are_isolated(mcp_ringmux):
    rm = mcp_ringmux
    keys = [f"mcpA-{uuid.uuid4().hex}", f"mcpB-{uuid.uuid4().hex}"]

    async def rollout(key):
        async with mcp_session(_url(rm, key)) as s:
            assert tool_text(await s.call_tool("recall", {})) == ""
            assert tool_text(await s.call_tool("remember", {"value": f"mem-{key}"})) == "ok"
            await anyio.sleep(0.2)  # let the other rollout write too
            recalled = tool_text(await s.call_tool("recall", {}))
            who = tool_json(await s.call_tool("whoami", {}))
            return recalled, who

    async def main():
        out = {}

        async def run(k):
            out[k] = await rollout(k)

        async with anyio.create_task_group() as tg:
            for k in keys:
                tg.start_soon(run, k)
        return out

    out = anyio.run(main)
    for k in keys:
        recalled, who = out[k]
        assert recalled == f"mem-{k}"
        assert who["cwd"] == rm.child_dir(k)
    assert out[keys[0]][1]["pid"] != out[keys[1]][1]["pid"]

    # A later session for the same key reaches the same child (state persists).
    async def again():
        async with mcp_session(_url(rm, keys[0])) as s:
            return tool_text(await s.call_tool("recall", {}))

    assert anyio.run(again) == f"mem-{keys[0]}"


def test_sse_notifications_flow_through(mcp_ringmux):
    rm = mcp_ringmux
    key = f"mcpsse-{uuid.uuid4().hex}"
    ticks = []

    async def main():
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        async def on_log(params):
            ticks.append((anyio.current_time(), params.data))

        with anyio.fail_after(20):
            async with streamable_http_client(_url(rm, key)) as (read, write):
                async with ClientSession(read, write, logging_callback=on_log) as s:
                    await s.initialize()
                    t0 = anyio.current_time()
                    res = await s.call_tool("slow_count", {"n": 4, "interval_ms": 300})
                    return t0, anyio.current_time(), tool_json(res)

    t0, t1, n = anyio.run(main)
    assert n == 4
    assert [d for _, d in ticks] == [f"tick {i}" for i in range(4)]
    # the first log notification arrived while the tool was still running
    assert ticks[0][0] - t0 < (t1 - t0) - 0.6, (ticks, t0, t1)


def test_close_ends_mcp_child(mcp_ringmux):
    rm = mcp_ringmux
    key = f"mcpclose-{uuid.uuid4().hex}"

    async def remember(v):
        async with mcp_session(_url(rm, key)) as s:
            before = tool_text(await s.call_tool("recall", {}))
            await s.call_tool("remember", {"value": v})
            return before, tool_json(await s.call_tool("whoami", {}))["pid"]

    before, pid1 = anyio.run(remember, "one")
    assert before == ""
    assert rm.close_key(key).text == "closed"
    assert not os.path.exists(rm.child_dir(key))
    before, pid2 = anyio.run(remember, "two")
    assert before == "" and pid2 != pid1
