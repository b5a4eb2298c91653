"""Bodies and streams through the proxy: SSE unbuffered, keep-alive, chunked, large bodies."""

import hashlib
import http.client
import json
import os
import threading
import time
import uuid

from conftest import blob_bytes


def test_sse_streams_event_by_event(raw_ringmux):
    rm = raw_ringmux
    key = f"sse-{uuid.uuid4().hex}"
    rm.info(key)  # child already running: time only the stream
    arrivals = []
    sent = []
    t0 = time.monotonic()
    with rm.client() as c:
        with c.stream("GET", rm.path_url("/sse", key, "n=5&interval_ms=400")) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: event"):
                    arrivals.append(time.monotonic() - t0)
                    sent.append(float(line.rsplit("t=", 1)[1]))
                    # wall-clock lag between the child writing and us reading it
                    lag = time.time() - sent[-1]
                    assert lag < 0.3, f"event {len(arrivals) - 1} arrived {lag:.3f} s late"
    total = time.monotonic() - t0
    assert len(arrivals) == 5
    assert total >= 1.5
    assert arrivals[0] < total - 1.0, (arrivals, total)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert all(g > 0.2 for g in gaps), gaps


def test_two_concurrent_sse_streams_same_key_flow_independently(raw_ringmux):
    rm = raw_ringmux
    key = f"sse2-{uuid.uuid4().hex}"
    rm.info(key)
    firsts = {}

    def run(name, n, interval):
        t0 = time.monotonic()
        with rm.client() as c:
            with c.stream("GET", rm.path_url("/sse", key, f"n={n}&interval_ms={interval}")) as r:
                for line in r.iter_lines():
                    if line.startswith("data: event"):
                        firsts.setdefault(name, time.monotonic() - t0)

    slow = threading.Thread(target=run, args=("slow", 4, 600))
    fast = threading.Thread(target=run, args=("fast", 3, 50))
    slow.start()
    time.sleep(0.1)
    fast.start()
    fast.join(10)
    slow.join(10)
    assert firsts.get("slow", 99) < 0.5
    assert firsts.get("fast", 99) < 0.5


def test_keep_alive_many_requests_one_connection(raw_ringmux):
    rm = raw_ringmux
    key = f"ka-{uuid.uuid4().hex}"
    conn = http.client.HTTPConnection("127.0.0.1", rm.port, timeout=10)
    try:
        local = None
        pids = set()
        for i in range(8):
            conn.request("PUT", f"/state?vf_state_secret={key}", body=f"v{i}".encode())
            r = conn.getresponse()
            assert r.status == 200 and r.read() == b"ok"
            conn.request("GET", f"/state?vf_state_secret={key}")
            r = conn.getresponse()
            assert r.status == 200 and r.read() == f"v{i}".encode()
            conn.request("GET", f"/info?vf_state_secret={key}")
            r = conn.getresponse()
            pids.add(json.loads(r.read())["pid"])
            assert conn.sock is not None, "server closed the keep-alive connection"
            name = conn.sock.getsockname()
            local = local or name
            assert name == local, "connection was re-opened between requests"
        assert len(pids) == 1
    finally:
        conn.close()


def test_keep_alive_across_keys_on_one_connection(raw_ringmux):
    rm = raw_ringmux
    k1, k2 = f"kx1-{uuid.uuid4().hex}", f"kx2-{uuid.uuid4().hex}"
    with rm.client() as c:
        p1 = c.get(rm.path_url("/info", k1)).json()["pid"]
        p2 = c.get(rm.path_url("/info", k2)).json()["pid"]
        p1b = c.get(rm.path_url("/info", k1)).json()["pid"]
    assert p1 != p2 and p1 == p1b


def test_chunked_request_body_reaches_child_intact(raw_ringmux):
    rm = raw_ringmux
    key = f"chunk-{uuid.uuid4().hex}"
    pieces = [os.urandom(n) for n in (1, 100, 5000, 70000, 3)]
    data = b"".join(pieces)
    conn = http.client.HTTPConnection("127.0.0.1", rm.port, timeout=10)
    try:
        conn.request("POST", f"/echo?vf_state_secret={key}", body=iter(pieces), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, body
        assert json.loads(body) == {"len": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        # and the connection is still usable afterwards
        conn.request("GET", f"/state?vf_state_secret={key}")
        r = conn.getresponse()
        assert r.status == 200
        r.read()
    finally:
        conn.close()


def test_one_mib_request_body_intact(raw_ringmux):
    rm = raw_ringmux
    key = f"big-up-{uuid.uuid4().hex}"
    data = os.urandom(1 << 20)
    r = rm.post("/echo", key, content=data)
    assert r.status_code == 200
    assert r.json() == {"len": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_one_mib_response_body_intact(raw_ringmux):
    rm = raw_ringmux
    key = f"big-down-{uuid.uuid4().hex}"
    size = 1 << 20
    r = rm.get("/blob", key, extra=f"size={size}")
    assert r.status_code == 200
    assert len(r.content) == size
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(blob_bytes(size)).hexdigest()
