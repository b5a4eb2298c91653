"""The test children work on their own (fd 3 contract, no ringmux).

If these fail, the bug is in the test fixtures, not in ringmux.
"""

import hashlib
import http.client
import os

import anyio
import httpx

from conftest import MCP_CMD, RAW_CMD, wait_http_ok
from mcp_helpers import mcp_session, tool_json, tool_text


def test_raw_child_endpoints(standalone, tmp_path):
    s = standalone(RAW_CMD, cwd=tmp_path / "raw")
    wait_http_ok(s.url + "/info")
    with httpx.Client(base_url=s.url, timeout=10) as c:
        info = c.get("/info").json()
        assert info["pid"] == s.proc.pid
        assert info["cwd"] == str(tmp_path / "raw")
        assert info["listen_fds"] == "1"
        assert 3 in info["startup_fds"]
        assert c.put("/state", content=b"hello").text == "ok"
        assert c.get("/state").text == "hello"
        h = c.get("/headers?a=1&b=2", headers={"X-Other": "v"}).json()
        assert h["query"] == "a=1&b=2"
        assert ["X-Other", "v"] in h["headers"]
        made = c.post("/mkfiles?n=200&dirs=4").json()["made"]
        assert made == 200
        listing = c.get("/listdir").json()
        assert len([p for p in listing if os.path.basename(p).startswith("f")]) == 200
        body = os.urandom(1 << 20)
        r = c.post("/echo", content=body).json()
        assert r == {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        blob = c.get("/blob?size=1048576").content
        assert len(blob) == 1 << 20


def test_raw_child_chunked_and_sse(standalone, tmp_path):
    s = standalone(RAW_CMD)
    wait_http_ok(s.url + "/info")
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    body = [b"abc" * 1000, b"", b"xyz"]
    conn.request("POST", "/echo", body=iter([b"abc" * 1000, b"xyz"]), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    data = b"".join(body)
    assert r.status == 200
    import json
    assert json.loads(r.read()) == {"len": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    conn.request("GET", "/sse?n=3&interval_ms=50")
    r = conn.getresponse()
    text = r.read().decode()
    assert text.count("data: event") == 3
    conn.close()


def test_mcp_child_standalone(standalone):
    s = standalone(MCP_CMD)
    wait_http_ok(s.url + "/mcp")

    async def main():
        async with mcp_session(s.url + "/mcp") as session:
            names = {t.name for t in (await session.list_tools()).tools}
            assert {"remember", "recall", "whoami", "echo"} <= names
            assert tool_text(await session.call_tool("remember", {"value": "v1"})) == "ok"
            assert tool_text(await session.call_tool("recall", {})) == "v1"
            who = tool_json(await session.call_tool("whoami", {}))
            assert who["pid"] == s.proc.pid
            assert tool_json(await session.call_tool("slow_count", {"n": 2, "interval_ms": 10})) == 2

    anyio.run(main)
