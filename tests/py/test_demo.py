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


def _read_listen_lines(p, n, timeout=15):
    """The first `n` `demo-child: listening on ...` lines of `p`'s stdout."""
    import select
    import time

    lines, buf, end = [], b"", time.monotonic() + timeout
    while len(lines) < n and time.monotonic() < end:
        r, _, _ = select.select([p.stdout], [], [], 0.2)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines += [d.decode() for d in done]
    return lines


def _call(client, url, name, args):
    import httpx

    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": args}}
    r = client.post(url, json=body, headers={"accept": "application/json, text/event-stream"})
    assert r.status_code == 200, r.text[:300]
    return r.json()["result"]["content"][0]["text"]


def test_demo_child_serves_tcp_and_unix_from_one_process(tmp_path):
    """`demo-child --listen ADDR --listen-unix PATH` (what benches/hotpath.py
    puts nginx's and HAProxy's two upstreams on): one process answers on
    both, so state written over TCP is read back over the Unix socket; a
    stale socket file is replaced, and any other file there is refused and
    left alone."""
    import json
    import subprocess

    import httpx

    from conftest import RINGMUX_BIN

    sock = tmp_path / "child.sock"
    for attempt in range(2):  # the second start finds the first one's socket file
        p = subprocess.Popen([str(RINGMUX_BIN), "demo-child", "--listen", "127.0.0.1:0", "--listen-unix", str(sock)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            lines = _read_listen_lines(p, 2)
            assert len(lines) == 2, (lines, p.poll())
            tcp = next(ln for ln in lines if "http://" in ln).split("http://")[1]
            assert f"demo-child: listening on unix:{sock}" in lines, lines
            value = f"v-{attempt}-{uuid.uuid4().hex[:6]}"
            with httpx.Client(timeout=15) as c:
                _call(c, f"http://{tcp}/mcp", "scratch_write", {"value": value})
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=15) as u:
                assert _call(u, "http://localhost/mcp", "scratch_read", {}) == value
                assert json.loads(_call(u, "http://localhost/mcp", "whoami", {}))["pid"] == p.pid
        finally:
            p.kill()
            p.wait(timeout=10)
            p.stdout.close()
            p.stderr.close()
        assert sock.is_socket(), "the socket file stays after a kill: the next start must replace it"

    sock.unlink()
    sock.write_text("not a socket")
    p = subprocess.run([str(RINGMUX_BIN), "demo-child", "--listen-unix", str(sock)],
                       capture_output=True, text=True, timeout=15)
    assert p.returncode == 2 and "exists and is not a socket" in p.stderr, (p.returncode, p.stderr)
    assert sock.read_text() == "not a socket"
