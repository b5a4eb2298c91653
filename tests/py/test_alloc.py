"""Heap allocations on the steady-state request path (issue #13).

The real binary counts allocations per thread (src/alloc_count.rs) and each
worker publishes its own as `ringmux_worker_allocations_total{worker}` on its
10 ms heartbeat. After a warm-up, N keep-alive requests through one worker
must cost at most ALLOCS_PER_REQUEST_MAX allocations each; what the
heartbeat allocates meanwhile is measured in an idle window as long and
subtracted.
"""

import http.client
import json
import time
import uuid

N = 2000
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"text": "x" * 64}}}).encode()
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
           "user-agent": "alloc-test", "x-a": "1", "x-b": "2", "x-c": "3"}
# Measured: 0.00 (39.3 before issue #13's work). The allowance is for rare
# timer-driven work that lands in one window and not the other (an expired
# pooled connection, a deadline that fires): at most 1 per 100 requests.
ALLOCS_PER_REQUEST_MAX = 0.01


def worker_allocs(rm) -> int:
    """The total over workers as of their latest heartbeat (at most 10 ms
    old: a few allocations of error against thousands of requests)."""
    time.sleep(0.03)
    m = rm.metrics()
    return int(sum(v for k, v in m.items() if k.startswith("ringmux_worker_allocations_total{")))


def run(conn, path, n):
    for _ in range(n):
        conn.request("POST", path, body=BODY, headers=HEADERS)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body[:200])


def test_keep_alive_requests_allocate_at_most_a_stated_constant(ringmux_factory):
    rm = ringmux_factory(demo=True, args=["--workers", "1", "--admin", "127.0.0.1:0"])
    key = f"alloc-{uuid.uuid4().hex}"
    path = f"/mcp?vf_state_secret={key}"
    conn = http.client.HTTPConnection("127.0.0.1", rm.port, timeout=10)
    a0 = worker_allocs(rm)
    run(conn, path, 200)  # spawns the child, fills the pools and free lists
    a1 = worker_allocs(rm)
    # The counter is live: spawning a child and serving 200 requests allocate.
    assert a1 > a0, (a0, a1)
    t = time.monotonic()
    run(conn, path, N)
    secs = time.monotonic() - t
    a2 = worker_allocs(rm)
    time.sleep(secs)  # an idle window as long as the busy one: heartbeat work
    a3 = worker_allocs(rm)
    conn.close()
    idle = a3 - a2
    # The heartbeat's own allocations (the idle window) are not the
    # request path's: subtracted.
    per_request = (a2 - a1 - idle) / N
    print(f"allocations per request: {per_request:.2f} (busy window {a2 - a1} for {N}, "
          f"idle window of {secs:.2f} s: {idle})")
    assert per_request <= ALLOCS_PER_REQUEST_MAX, (per_request, a2 - a1, idle)
