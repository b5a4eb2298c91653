"""A rollout key is a secret: it never appears in ringmux's logs (at its most
verbose level), its metrics, or any process's command line or environment —
through opens, closes, crashes, refusals, timeouts and errors, in exec and in
fork mode. (Children see their own key in the requests they serve; that is
their business, not ringmux's: the children used here do not log.)"""

from __future__ import annotations

import os
import uuid
from urllib.parse import quote

import httpx

from conftest import RAW_CMD, raw_http, status_of, wait_until

TRACE = {"RINGMUX_LOG": "trace"}


def secret() -> str:
    return "sekrit" + uuid.uuid4().hex


def forms(key: str) -> list[bytes]:
    """The key as written and as sent on the wire (percent-encoded), and
    its first 16 characters (a log that truncates it leaks it too)."""
    out = {key.encode(), quote(key, safe="").encode(), key[:16].encode()}
    return sorted(out)


def everything_visible(rm) -> dict[str, bytes]:
    """ringmux's stdout and stderr, its metrics, and /proc/*/cmdline and
    /proc/*/environ of every process on the machine."""
    seen = {
        "stderr": rm.stderr_path.read_bytes(),
        "stdout": "\n".join(rm.stdout_lines).encode(),
    }
    if rm.metrics_url and rm.alive():
        seen["metrics"] = rm.metrics_text().encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for what in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    seen[f"/proc/{pid}/{what}"] = f.read()
            except OSError:
                pass
    return seen


def assert_secret(rm, keys: list[str]) -> None:
    seen = everything_visible(rm)
    assert len(seen["stderr"]) > 1000, "the trace log is suspiciously short: is RINGMUX_LOG honoured?"
    for key in keys:
        for form in forms(key):
            leaks = [where for where, data in seen.items() if form in data]
            assert not leaks, f"key form {form!r} found in {leaks}"


def test_no_key_in_logs_metrics_or_processes_exec_mode(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, env=TRACE, args=[
        "--admin", "127.0.0.1:0", "--max-children", "3", "--head-timeout", "1s", "--max-body", "64K"])
    opened, crashed, refused, odd = secret(), secret(), secret(), "s€krit/+ " + uuid.uuid4().hex
    # open, use, close
    assert rm.put("/state", opened, content=b"v").status_code == 200
    assert rm.get("/state", opened).text == "v"
    assert rm.close_key(opened).text == "closed"
    assert rm.close_key(opened).text == "closed"  # an unknown key
    # a key that needs percent-encoding
    assert rm.get("/state", odd).status_code == 200
    # a crash, then a fresh child for the same key
    assert rm.get("/state", crashed).status_code == 200
    assert rm.post("/exit", crashed).status_code == 200
    # Seen as crashed first (until then a request may still reach the dying child).
    rm.wait_metric("ringmux_child_exits_total", lambda v: v == 1, timeout=10, cause="crashed")
    wait_until(lambda: rm.get("/state", crashed).status_code == 200, 10, what="a fresh child")
    assert rm.metric("ringmux_live_children") == 2
    # refusals: a foreign Origin (403), capacity (503: three live already)
    r = rm.get("/state", refused, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    third = secret()
    assert rm.get("/state", third).status_code == 200
    capped = secret()
    assert rm.get("/state", capped).status_code == 503
    assert rm.close_key(third).text == "closed"
    # errors: malformed head (400), body too large (413), a head that never ends (408)
    bad = secret()
    assert status_of(raw_http(rm.port, f"GET /state?vf_state_secret={bad} HTTP/1.1\r\nHost: 127.0.0.1\r\nNo colon\r\n\r\n"
                         .encode())) == 400
    big = secret()
    assert status_of(raw_http(rm.port, f"POST /echo?vf_state_secret={big} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Content-Length: 999999999\r\n\r\n".encode())) == 413
    slow = secret()
    assert status_of(raw_http(rm.port, f"GET /state?vf_state_secret={slow} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())) == 408
    # a child that dies at once: 502 for its waiters
    gone = secret()
    r = rm.post("/die", gone)
    assert r.status_code == 502
    keys = [opened, crashed, refused, odd, third, capped, bad, big, slow, gone]
    assert_secret(rm, keys)
    assert rm.stop() == 0
    assert_secret(rm, keys)


def test_no_key_in_logs_or_processes_fork_mode(ringmux_factory):
    rm = ringmux_factory(demo=True, env=TRACE, args=["--fork", "--admin", "127.0.0.1:0"])
    wait_until(lambda: "fork server ready" in rm.stderr_text(100000), 30, what="the fork server")
    key = secret()
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "0"}}}
    with httpx.Client(timeout=15) as c:
        r = c.post(rm.path_url("/mcp", key), json=init,
                   headers={"accept": "application/json, text/event-stream"})
    assert r.status_code == 200, r.text
    assert rm.close_key(key).text == "closed"
    assert_secret(rm, [key])
    assert rm.stop() == 0
    assert_secret(rm, [key])
