"""Regressions found in review: each test failed against an earlier build."""

import socket
import time
import uuid


def _connect(rm, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", rm.port), timeout=timeout)
    s.settimeout(timeout)
    return s


def test_stream_cut_by_close_ends_the_client_connection(raw_ringmux):
    """A child killed mid-response (here by close, after every byte so far was
    flushed) must end the client's connection, not leave it open and silent."""
    rm = raw_ringmux
    key = f"cut-{uuid.uuid4().hex}"
    s = _connect(rm)
    s.sendall(
        f"GET /sse?n=100000&interval_ms=20&vf_state_secret={key} HTTP/1.1\r\n"
        f"Host: localhost\r\n\r\n".encode()
    )
    got = b""
    deadline = time.time() + 10
    while b"data:" not in got and time.time() < deadline:
        chunk = s.recv(65536)
        assert chunk, "stream ended before the first event"
        got += chunk
    assert got.startswith(b"HTTP/1.1 200")
    assert rm.close_key(key).text == "closed"
    # Drain: the connection must reach EOF (or a reset) well before our timeout.
    s.settimeout(5.0)
    ended = False
    t_end = time.time() + 5
    while time.time() < t_end:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            ended = True
            break
        except socket.timeout:
            break
        if not chunk:
            ended = True
            break
    s.close()
    assert ended, "client connection left open after its child was closed mid-stream"


def test_expect_100_continue_is_forwarded(ringmux_factory):
    """`Expect: 100-continue`: the child's interim 100 reaches the client at
    once, so the client sends its body without waiting for its own timeout."""
    rm = ringmux_factory(demo=True)
    key = f"expect-{uuid.uuid4().hex}"
    body = (
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call",'
        b'"params":{"name":"echo","arguments":{"text":"after-100"}}}'
    )
    s = _connect(rm)
    s.sendall(
        (
            f"POST /mcp?vf_state_secret={key} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Expect: 100-continue\r\n\r\n"
        ).encode()
    )
    interim = b""
    s.settimeout(5.0)
    while b"\r\n\r\n" not in interim:
        chunk = s.recv(4096)
        assert chunk, "connection closed before the interim response"
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100"), interim[:80]
    s.sendall(body)
    rest = interim.split(b"\r\n\r\n", 1)[1]
    deadline = time.time() + 5
    while b"after-100" not in rest and time.time() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    s.close()
    assert rest.startswith(b"HTTP/1.1 200"), rest[:80]
    assert b"after-100" in rest
    rm.stop()


def test_error_with_unread_body_closes_instead_of_parsing_the_body(ringmux_factory, tmp_path):
    """A request whose child cannot be started gets 502 with `Connection:
    close`: its body was never read, so the connection cannot carry another
    request (the body must never be parsed as one)."""
    rm = ringmux_factory(cmd=[str(tmp_path / "no-such-binary")])
    key = f"nobin-{uuid.uuid4().hex}"
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
    s = _connect(rm)
    s.sendall(
        (
            f"POST /mcp?vf_state_secret={key} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Length: {len(smuggled)}\r\n\r\n"
        ).encode()
        + smuggled
    )
    data = b""
    deadline = time.time() + 10
    while time.time() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 502"), data[:80]
    assert data.count(b"HTTP/1.1 ") == 1, f"the body was answered as a request: {data!r}"
    assert b"connection: close" in data.lower()
    rm.stop()
