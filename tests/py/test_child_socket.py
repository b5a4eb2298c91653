"""--child-socket unix|tcp: what a child is handed on fd 3, the Host it sees,
and that an official-SDK server (DNS-rebinding protection on, as MCPServer
sets it for loopback) accepts that Host; and that no socket outlives its
rollout.

The whole suite runs with ringmux's default (tcp) in its first pass and with
`--child-socket unix` in its second (scripts/test.sh); this module pins each
kind explicitly, and checks the default without the test passes' flags."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid

import anyio
import pytest

from conftest import MCP_CMD, RINGMUX_BIN, wait_until
from mcp_helpers import mcp_session, tool_json, tool_text

INIT = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "t", "version": "0"}},
}).encode()


def fd3_socket(pid: int) -> tuple[str, str]:
    """(family, address) of the listening socket `pid` holds as fd 3, read
    from /proc: ("unix", "@name") or ("tcp", "127.0.0.1:port")."""
    inode = os.readlink(f"/proc/{pid}/fd/3").removeprefix("socket:[").rstrip("]")
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[6] == inode:
                return "unix", parts[7] if len(parts) > 7 else ""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[9] == inode:
                ip, port = parts[1].split(":")
                octets = [str(int(ip[i:i + 2], 16)) for i in (6, 4, 2, 0)]
                return "tcp", f"{'.'.join(octets)}:{int(port, 16)}"
    raise AssertionError(f"fd 3 of {pid} (inode {inode}) is neither a Unix nor a TCP socket")


def unix_names(prefix: str) -> list[str]:
    with open("/proc/net/unix") as f:
        return [p[7] for p in (line.split() for line in f.readlines()[1:])
                if len(p) > 7 and p[7].startswith(prefix)]


def post_direct(kind: str, addr: str, host: str) -> int:
    """POST an initialize straight to the child (not through ringmux) with
    `host` as its Host; returns the status code."""
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = "\0" + addr.removeprefix("@")
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ip, port = addr.rsplit(":", 1)
        target = (ip, int(port))
    with s:
        s.settimeout(10)
        s.connect(target)
        s.sendall(b"POST /mcp HTTP/1.1\r\nHost: " + host.encode() +
                  b"\r\nContent-Type: application/json\r\n"
                  b"Accept: application/json, text/event-stream\r\n"
                  b"Connection: close\r\nContent-Length: " + str(len(INIT)).encode() +
                  b"\r\n\r\n" + INIT)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_an_official_sdk_server_serves_and_accepts_the_forwarded_host(ringmux_factory, kind):
    rm = ringmux_factory(cmd=MCP_CMD, args=["--child-socket", kind])
    key = f"sock-{uuid.uuid4().hex}"

    async def main():
        async with mcp_session(rm.path_url("/mcp", key)) as s:
            assert tool_text(await s.call_tool("remember", {"value": kind})) == "ok"
            assert tool_text(await s.call_tool("recall", {})) == kind
            return tool_json(await s.call_tool("whoami", {}))

    who = anyio.run(main)
    assert who["pid"] in rm.child_pids()
    family, addr = fd3_socket(who["pid"])
    assert family == kind, (family, addr)
    instance = os.path.basename(rm.instance_dir)
    if kind == "unix":
        assert addr.startswith(f"@{instance}/"), addr
        forwarded = "localhost:0"
        # The SDK's check is really on: a bare `localhost` (what nginx sends
        # to a Unix upstream) would be refused; ringmux's value is accepted.
        assert post_direct(kind, addr, "localhost") == 421
    else:
        assert addr.startswith("127.0.0.1:"), addr
        forwarded = addr
        assert post_direct(kind, addr, "evil.example:80") == 421
    assert post_direct(kind, addr, forwarded) == 200
    assert rm.stop() == 0


def test_unix_sockets_vanish_with_their_rollouts(ringmux_factory):
    """Abstract names leave nothing on disk, and no name outlives its child:
    closed rollouts' names are gone, and none is left after shutdown."""
    rm = ringmux_factory(demo=True, args=["--child-socket", "unix"])
    prefix = "@" + os.path.basename(rm.instance_dir) + "/"
    keys = [f"gone-{i}-{uuid.uuid4().hex}" for i in range(3)]
    for k in keys:
        assert rm.get("/healthz", k).status_code == 200
    names = unix_names(prefix)
    assert len(set(names)) == 3, names
    assert rm.close_key(keys[0]).status_code == 200
    wait_until(lambda: len(set(unix_names(prefix))) == 2, 10, what="the closed rollout's socket to go")
    assert rm.stop() == 0
    assert unix_names(prefix) == []


def test_the_default_is_tcp(tmp_path):
    """Without --child-socket (and without the test passes' extra flags) a
    child gets a TCP socket on 127.0.0.1 (the default chosen from the SSE
    row of benches/RESULTS.md, Part 2b)."""
    import re

    import httpx

    from conftest import children_of

    p = subprocess.Popen([str(RINGMUX_BIN), "serve", "--demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                          "--base-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = None
        for _ in range(50):
            line = p.stdout.readline()
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "ringmux did not print its address"
        r = httpx.post(f"http://127.0.0.1:{port}/mcp?vf_state_secret=d", content=INIT,
                       headers={"content-type": "application/json", "accept": "application/json, text/event-stream"},
                       timeout=15)
        assert r.status_code == 200, r.text[:200]
        (child,) = children_of(p.pid)
        kind, addr = fd3_socket(child)
        assert kind == "tcp" and addr.startswith("127.0.0.1:"), (kind, addr)
    finally:
        p.terminate()  # a clean shutdown: children, cgroups and directories go
        try:
            assert p.wait(timeout=30) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
            p.stdout.close()


def test_a_bad_child_socket_kind_is_a_flag_error():
    p = subprocess.run([str(RINGMUX_BIN), "serve", "--demo", "--child-socket", "sctp"],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 2
    assert "--child-socket" in p.stderr and "unix" in p.stderr and "tcp" in p.stderr, p.stderr
