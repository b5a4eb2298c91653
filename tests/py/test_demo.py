"""`ringmux serve --demo`: the built-in demo MCP child."""

import os
import uuid

import anyio
import pytest

from conftest import module_ringmux
from mcp_helpers import mcp_session, tool_text

DEMO_TOOLS = {"scratch_write", "scratch_read", "echo", "whoami", "write_files"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, request):
    return module_ringmux(tmp_path_factory, request, demo=True)


def test_demo_lists_tools_and_echoes(demo):
    async def main():
        async with mcp_session(demo.path_url("/mcp", f"demo-{uuid.uuid4().hex}")) as s:
            names = {t.name for t in (await s.list_tools()).tools}
            echoed = tool_text(await s.call_tool("echo", {"text": "ping-123"}))
            return names, echoed

    names, echoed = anyio.run(main)
    assert DEMO_TOOLS <= names
    assert "ping-123" in echoed


def test_demo_scratch_is_per_key(demo):
    k1, k2 = f"d1-{uuid.uuid4().hex}", f"d2-{uuid.uuid4().hex}"

    async def rollout(key, value, out):
        async with mcp_session(demo.path_url("/mcp", key)) as s:
            w = await s.call_tool("scratch_write", {"value": value})
            assert not w.is_error, w
            await anyio.sleep(0.2)
            out[key] = (
                tool_text(await s.call_tool("scratch_read", {})),
                tool_text(await s.call_tool("whoami", {})),
            )

    async def main():
        out = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(rollout, k1, "alpha-value-1", out)
            tg.start_soon(rollout, k2, "beta-value-2", out)
        return out

    out = anyio.run(main)
    assert "alpha-value-1" in out[k1][0] and "beta-value-2" not in out[k1][0]
    assert "beta-value-2" in out[k2][0] and "alpha-value-1" not in out[k2][0]
    assert out[k1][1] != out[k2][1]
    assert os.path.isdir(demo.child_dir(k1)) and os.path.isdir(demo.child_dir(k2))


def test_demo_write_files_then_close(demo):
    key = f"dfiles-{uuid.uuid4().hex}"

    async def main():
        async with mcp_session(demo.path_url("/mcp", key)) as s:
            r = await s.call_tool("write_files", {"count": 300, "dirs": 3})
            assert not r.is_error, r

    anyio.run(main)
    d = demo.child_dir(key)
    n = sum(len(f) for _, _, f in os.walk(d))
    assert n >= 300
    r = demo.close_key(key)
    assert (r.status_code, r.text) == (200, "closed")
    assert not os.path.exists(d)
