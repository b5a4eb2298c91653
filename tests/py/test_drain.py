"""Health, readiness and drain (what a load balancer in front of ringmux
needs): `/healthz` and `/readyz` on the proxy listener (without a key) and
on the admin listener; a drain by SIGUSR1 or `POST /drain` refuses new keys
with 503 + Retry-After while the live rollouts are served and closed, and
the instance exits 0 when the last one is closed, or at --drain-timeout as
on SIGTERM. Real binary, real sockets; processes and directories checked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid

import httpx

from conftest import HTTP_TIMEOUT, parse_prometheus, pid_alive, wait_until

ECHO = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "scratch_write", "arguments": {"value": "v"}}}
READ = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "scratch_read", "arguments": {}}}
HDRS = {"accept": "application/json, text/event-stream"}


def raw(port: int, data: bytes) -> bytes:
    """One request on a fresh connection; everything until the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def admin_port(rm) -> int:
    return int(rm.metrics_url.rsplit(":", 1)[1].split("/")[0])


def mcp(rm, key, body):
    return httpx.post(rm.path_url("/mcp", key), json=body, headers=HDRS, timeout=HTTP_TIMEOUT)


def wait_exit(rm, within=30.0) -> int:
    rc = rm.proc.wait(timeout=within)
    rm._stopped = True
    return rc


def test_health_and_ready_on_both_listeners_answer_any_host(ringmux_factory):
    rm = ringmux_factory(demo=True, args=["--admin", "127.0.0.1:0"])
    for port in (rm.port, admin_port(rm)):
        # A balancer's check sends whatever Host it was given: not refused.
        for path, body in (("/healthz", b"ok\n"), ("/readyz", b"ready\n")):
            r = raw(port, f"GET {path} HTTP/1.1\r\nHost: backend-pool\r\nConnection: close\r\n\r\n".encode())
            assert r.startswith(b"HTTP/1.1 200"), (port, path, r[:200])
            assert r.endswith(b"\r\n\r\n" + body), (port, path, r)
        r = raw(port, b"HEAD /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert r.startswith(b"HTTP/1.1 200") and r.endswith(b"\r\n\r\n"), r
        r = raw(port, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        assert r.startswith(b"HTTP/1.1 405"), r
    # The exemption is only for the checks: /metrics and /drain keep the
    # DNS-rebinding rules.
    r = raw(admin_port(rm), b"GET /metrics HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 403"), r[:100]
    r = raw(admin_port(rm), b"POST /drain HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 403"), r[:100]
    assert httpx.get(f"{rm.url}/readyz", timeout=HTTP_TIMEOUT).status_code == 200, "a refused /drain must not drain"
    # With a key the path is the rollout's: it reaches the child (the demo
    # has no /readyz: 404), and no health check starts a child.
    assert rm.child_pids() == []
    r = httpx.get(rm.path_url("/readyz", "k1"), timeout=HTTP_TIMEOUT)
    assert r.status_code == 404 and len(rm.child_pids()) == 1, (r.status_code, r.text)
    # Keep-alive: several checks on one connection.
    with httpx.Client(timeout=HTTP_TIMEOUT) as c:
        assert [c.get(f"{rm.url}/healthz").status_code for _ in range(3)] == [200] * 3


def test_drain_by_signal_serves_live_keys_refuses_new_ones_and_exits_when_the_last_closes(ringmux_factory):
    rm = ringmux_factory(demo=True, args=["--admin", "127.0.0.1:0"])
    live = f"live-{uuid.uuid4().hex[:6]}"
    assert mcp(rm, live, ECHO).status_code == 200
    (child,) = rm.child_pids()
    child_dir = rm.child_dir(live)
    assert os.path.isdir(child_dir)

    os.kill(rm.pid, signal.SIGUSR1)
    wait_until(lambda: httpx.get(f"{rm.url}/readyz", timeout=HTTP_TIMEOUT).status_code == 503, 10,
               what="/readyz to say draining")
    r = httpx.get(f"{rm.url}/readyz", timeout=HTTP_TIMEOUT)
    assert r.headers.get("retry-after") == "1" and r.text == "draining\n", (r.headers, r.text)
    assert r.headers.get("ringmux-error") == "draining", r.headers
    assert httpx.get(f"{rm.url}/healthz", timeout=HTTP_TIMEOUT).status_code == 200, "alive while draining"
    m = parse_prometheus(httpx.get(rm.metrics_url, timeout=HTTP_TIMEOUT).text)
    assert m["ringmux_draining"] == 1, m.get("ringmux_draining")

    # A new key is refused, so the balancer sends it elsewhere; no child starts.
    r = mcp(rm, f"new-{uuid.uuid4().hex[:6]}", ECHO)
    assert r.status_code == 503 and r.headers.get("retry-after") == "1", (r.status_code, r.headers)
    assert "draining" in r.text, r.text
    # ringmux's own refusal says so in a header a balancer can match on
    # (deploy/kubernetes/envoy.yaml retries on it); a child's answer has none.
    assert r.headers.get("ringmux-error") == "draining", r.headers
    assert rm.child_pids() == [child]
    r = httpx.get(rm.path_url("/no-such-path", live), timeout=HTTP_TIMEOUT)
    assert r.status_code == 404 and "ringmux-error" not in r.headers, (r.status_code, r.headers)
    # The live rollout is served as before, by the same child.
    r = mcp(rm, live, READ)
    assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "v", r.text
    assert rm.child_pids() == [child]
    # A second drain request changes nothing.
    os.kill(rm.pid, signal.SIGUSR1)
    assert rm.proc.poll() is None

    # Its close is answered, and then the instance ends by itself, cleanly.
    assert rm.close_key(live).status_code == 200
    assert wait_exit(rm) == 0, rm.stderr_text()
    assert not pid_alive(child)
    assert not os.path.exists(child_dir)
    assert not os.path.exists(rm.instance_dir), "the instance directory is removed"
    log = rm.stderr_text()
    assert "draining" in log and "drain finished" in log, log
    assert live not in log, "a rollout key reached the log"


def test_a_key_reopened_while_its_close_runs_is_refused_during_a_drain(ringmux_factory):
    """A request for a key whose child is being torn down waits for the
    teardown; during a drain it is then refused like any new key, instead of
    getting a fresh child that would hold the drain open."""
    rm = ringmux_factory(demo=True)
    k = f"reopen-{uuid.uuid4().hex[:6]}"
    assert mcp(rm, k, ECHO).status_code == 200
    (child,) = rm.child_pids()
    child_dir = rm.child_dir(k)
    # A teardown that takes a while: without a trash (removed under the
    # running instance, as a full or read-only trash would be) the key's
    # directory is deleted in place and the key stays locked until then.
    for i in range(5_000):
        os.close(os.open(os.path.join(child_dir, f"f{i}"), os.O_CREAT | os.O_WRONLY, 0o600))
    os.rmdir(os.path.join(rm.instance_dir, ".trash"))
    os.kill(rm.pid, signal.SIGUSR1)
    wait_until(lambda: httpx.get(f"{rm.url}/readyz", timeout=HTTP_TIMEOUT).status_code == 503, 10,
               what="/readyz to say draining")

    closed: dict = {}

    def close():
        closed["status"] = rm.close_key(k).status_code
        closed["at"] = time.monotonic()

    t = threading.Thread(target=close)
    t.start()
    wait_until(lambda: not pid_alive(child) or "status" in closed, 10, what="the child to be reaped")
    sent = time.monotonic()
    r = mcp(rm, k, ECHO)
    t.join(30)
    print(f"close took {closed.get('at', 0) - sent:.3f} s after the request was sent")
    assert closed.get("status") == 200, closed
    assert sent < closed["at"], "the close finished before the request was sent: nothing was tested"
    assert r.status_code == 503 and "draining" in r.text, (r.status_code, r.text)
    assert rm.child_pids() == [], "a drain started a child"
    assert wait_exit(rm) == 0, rm.stderr_text()
    # A deleted trash was once read as "nothing to move", which left the
    # key's directory (and so the instance directory) behind.
    assert not os.path.exists(child_dir)
    assert not os.path.exists(rm.instance_dir), rm.stderr_text()
    log = rm.stderr_text()
    assert log.count("the trash is unusable") == 1, log
    assert "every directory removed" in log, log
    assert k not in log, "a rollout key reached the log"


def test_drain_by_admin_request_stops_at_the_drain_timeout(ringmux_factory):
    rm = ringmux_factory(demo=True, args=["--admin", "127.0.0.1:0", "--drain-timeout", "1500ms"])
    live = f"slow-{uuid.uuid4().hex[:6]}"
    assert mcp(rm, live, ECHO).status_code == 200
    (child,) = rm.child_pids()
    port = admin_port(rm)
    r = raw(port, b"GET /drain HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 405"), r[:100]
    assert rm.proc.poll() is None and httpx.get(f"{rm.url}/readyz", timeout=HTTP_TIMEOUT).status_code == 200
    r = raw(port, b"POST /drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 202"), r[:100]
    wait_until(lambda: httpx.get(f"{rm.url}/readyz", timeout=HTTP_TIMEOUT).status_code == 503, 10,
               what="/readyz to say draining")
    # Never closed: at the timeout it stops as on SIGTERM, exit 0, nothing left.
    assert wait_exit(rm) == 0, rm.stderr_text()
    assert not pid_alive(child)
    assert not os.path.exists(rm.instance_dir)
    assert "drain timeout" in rm.stderr_text(), rm.stderr_text()


def test_a_drain_with_nothing_live_exits_at_once(ringmux_factory):
    rm = ringmux_factory(demo=True)
    os.kill(rm.pid, signal.SIGUSR1)
    assert wait_exit(rm, within=15) == 0, rm.stderr_text()
    assert not os.path.exists(rm.instance_dir)


def test_sigterm_during_a_drain_stops_at_once(ringmux_factory):
    rm = ringmux_factory(demo=True)
    live = f"t-{uuid.uuid4().hex[:6]}"
    assert mcp(rm, live, ECHO).status_code == 200
    (child,) = rm.child_pids()
    os.kill(rm.pid, signal.SIGUSR1)
    wait_until(lambda: httpx.get(f"{rm.url}/readyz", timeout=HTTP_TIMEOUT).status_code == 503, 10,
               what="draining")
    os.kill(rm.pid, signal.SIGTERM)
    assert wait_exit(rm, within=30) == 0, rm.stderr_text()
    assert not pid_alive(child)


def test_drain_timeout_flag_is_checked():
    from conftest import RINGMUX_BIN

    p = subprocess.run([str(RINGMUX_BIN), "serve", "--demo", "--drain-timeout", "soon"],
                       capture_output=True, text=True, timeout=15)
    assert p.returncode == 2 and "--drain-timeout" in p.stderr, p.stderr
