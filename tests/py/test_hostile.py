"""Hostile and broken clients: timeouts with clear answers, the body limit,
and many slow clients at once not delaying the others.

Every test waits for ringmux's answer within a generous bound (it asserts
what the client sees, never how fast): a short --head-timeout etc. makes the
suite quick, the bound only keeps a broken build from hanging it."""

from __future__ import annotations

import resource
import socket
import threading
import time

import httpx
import pytest

from conftest import RAW_CMD, status_of, wait_until

INIT = (b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
        b'"capabilities":{},"clientInfo":{"name":"t","version":"0"}}}')


def connect(rm) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", rm.port), timeout=10)
    s.settimeout(10)
    return s


def read_until_eof(s: socket.socket, within: float = 10.0) -> bytes:
    """Everything the server sends until it closes (bounded)."""
    s.settimeout(within)
    out = b""
    while True:
        try:
            b = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not b:
            break
        out += b
    return out


def total(rm, name: str) -> float:
    m = rm.metrics()
    return sum(v for k, v in m.items() if k.startswith(name + "{"))


@pytest.fixture
def raw(ringmux_factory):
    return ringmux_factory(cmd=RAW_CMD, args=["--head-timeout", "1s", "--idle-timeout", "1500ms",
                                              "--body-timeout", "1s", "--admin", "127.0.0.1:0"])


def test_a_connection_that_sends_nothing_gets_408_and_is_closed(raw):
    s = connect(raw)
    got = read_until_eof(s)
    assert status_of(got) == 408, got
    assert b"connection: close" in got.lower()
    assert total(raw, "ringmux_head_timeouts_total") == 1
    assert total(raw, "ringmux_client_connections") == 0


def test_a_dribbled_head_is_timed_as_a_whole_not_per_byte(raw):
    """Slowloris: a byte every 100 ms never lets the head complete; the head
    timeout counts from its first byte, so the dribbler gets 408 anyway."""
    s = connect(raw)
    head = b"GET /state?vf_state_secret=drib HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"a" * 200
    t0 = time.monotonic()
    got = b""
    for b in head:
        try:
            s.sendall(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(0.1)
        if time.monotonic() - t0 > 15:
            break
        s.settimeout(0.001)
        try:
            got += s.recv(4096)
        except (BlockingIOError, socket.timeout):
            pass
        if got:
            break
    got += read_until_eof(s)
    assert status_of(got) == 408, got
    assert raw.child_pids() == [], "a head that never completed started a child"


def test_an_idle_keep_alive_connection_is_closed_silently(raw):
    s = connect(raw)
    s.sendall(b"GET /state?vf_state_secret=idle HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    s.settimeout(10)
    first = s.recv(65536)
    assert status_of(first) == 200, first
    # Served, then nothing: closed after the idle timeout without a response.
    rest = read_until_eof(s)
    assert rest == b"", rest
    assert total(raw, "ringmux_idle_timeouts_total") == 1


def test_a_stalled_request_body_gets_408_and_the_child_keeps_serving(raw):
    s = connect(raw)
    s.sendall(b"POST /echo?vf_state_secret=stall HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Length: 100\r\n\r\n" + b"x" * 10)
    got = read_until_eof(s)
    assert status_of(got) == 408, got
    assert total(raw, "ringmux_body_timeouts_total") == 1
    # The rollout itself is fine: the next request on a new connection works.
    r = raw.post("/echo", "stall", content=b"y" * 100)
    assert r.status_code == 200 and r.json()["len"] == 100


def test_a_body_waiting_on_a_child_start_is_not_timed(ringmux_factory):
    """A wait ringmux causes (the child is starting, so the body sits unread)
    is not the client's stall: a request that waited for a child start longer
    than the body timeout still goes through (the ready timeout governs it)."""
    rm = ringmux_factory(cmd=RAW_CMD + ["--delay-start", "2"], args=["--body-timeout", "500ms"])
    s = connect(rm)
    s.sendall(b"POST /echo?vf_state_secret=slowstart HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
    got = read_until_eof(s, 20)
    assert status_of(got) == 200, got
    assert b'"len": 5' in got or b'"len":5' in got, got


def test_a_content_length_over_max_body_gets_413_before_any_child_starts(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--admin", "127.0.0.1:0"])
    s = connect(rm)
    s.sendall(b"POST /echo?vf_state_secret=huge HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Length: 10000000000\r\n\r\n")
    got = read_until_eof(s)
    assert status_of(got) == 413, got
    assert rm.child_pids() == []
    assert rm.metric("ringmux_spawns_total") == 0
    assert total(rm, "ringmux_bodies_too_large_total") == 1
    # Just under the default limit (4 MiB) passes.
    r = rm.post("/echo", "ok", content=b"z" * (4 << 20))
    assert r.status_code == 200 and r.json()["len"] == 4 << 20


def test_a_chunked_body_is_counted_as_it_arrives(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--max-body", "64K"])
    # Within the limit: forwarded.
    r = rm.post("/echo", "chunks", content=iter([b"a" * 30000, b"b" * 30000]))
    assert r.status_code == 200 and r.json()["len"] == 60000
    # Over it: 413, and the connection is closed.
    s = connect(rm)
    s.sendall(b"POST /echo?vf_state_secret=chunks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    for _ in range(5):
        try:
            s.sendall(b"4000\r\n" + b"c" * 0x4000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            break
    got = read_until_eof(s)
    assert status_of(got) == 413, got
    # The rollout's child is unharmed.
    assert rm.post("/echo", "chunks", content=b"d").json()["len"] == 1


def test_the_response_timeout_is_off_by_default_and_504_when_set(ringmux_factory):
    slow = ringmux_factory(cmd=RAW_CMD)
    r = slow.get("/sleep", "think", extra="ms=1500")
    assert r.status_code == 200 and r.text == "slept"
    timed = ringmux_factory(cmd=RAW_CMD, args=["--response-timeout", "500ms", "--admin", "127.0.0.1:0"])
    r = timed.get("/sleep", "think", extra="ms=3000")
    assert r.status_code == 504, r.text
    assert "response timeout" in r.text
    assert total(timed, "ringmux_response_timeouts_total") == 1
    # A streamed response is timed only until its head: a long SSE stream passes.
    with timed.client() as c:
        with c.stream("GET", timed.path_url("/sse", "think", "n=4&interval_ms=300")) as resp:
            assert resp.status_code == 200
            events = [line for line in resp.iter_lines() if line.startswith("data:")]
    assert len(events) == 4


def test_a_thousand_dribbling_connections_do_not_stop_other_clients(ringmux_factory):
    """1,000 connections each hold a partial head; meanwhile ordinary
    requests keep being answered, and at the head timeout every dribbler
    gets its 408 and its connection is closed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    rm = ringmux_factory(demo=True, args=["--head-timeout", "3s", "--admin", "127.0.0.1:0"])
    socks = []
    for i in range(1000):
        s = socket.create_connection(("127.0.0.1", rm.port), timeout=10)
        s.sendall(b"POST /mcp?vf_state_secret=slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(s)
    stop = threading.Event()

    def dribble():
        while not stop.is_set():
            for s in socks:
                try:
                    s.send(b"a")
                except OSError:
                    pass
            stop.wait(0.2)

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        answered = 0
        with httpx.Client(timeout=10) as c:
            url = rm.path_url("/mcp", "busy")
            for _ in range(100):
                r = c.post(url, content=INIT, headers={"content-type": "application/json",
                                                       "accept": "application/json, text/event-stream"})
                assert r.status_code == 200, r.text
                answered += 1
        assert answered == 100
    finally:
        stop.set()
        t.join(5)
    got = [read_until_eof(s, 15) for s in socks]
    for s in socks:
        s.close()
    assert all(status_of(g) == 408 for g in got), [g[:40] for g in got if not g.startswith(b"HTTP/1.1 408")][:3]
    assert all(b"\r\nringmux-error: request-timeout\r\n" in g for g in got), got[0][:300]
    assert total(rm, "ringmux_head_timeouts_total") == 1000
    rm.wait_metric("ringmux_live_children", lambda v: v == 1)


def test_a_client_that_stops_reading_is_cut_off(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--send-timeout", "1s", "--admin", "127.0.0.1:0"])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", rm.port))
    s.sendall(b"GET /blob?vf_state_secret=reader&size=67108864 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    # Read nothing: ringmux's send stays unfinished and the connection is cut.
    wait_until(lambda: total(rm, "ringmux_send_timeouts_total") == 1, 20, what="the send timeout")
    got = read_until_eof(s)
    assert len(got) < 67108864, "the whole response arrived: the connection was not cut"
    s.close()
    assert total(rm, "ringmux_client_connections") == 0
    # The child was only paused: it serves the next request.
    assert rm.get("/state", "reader").status_code == 200
