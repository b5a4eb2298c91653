"""Children that fail, time out, and clients that send garbage."""

import http.client
import os
import socket
import threading
import time
import uuid

import pytest

from conftest import RAW_CMD, pid_alive, raw_http, read_spawn_log, status_of, wait_until




def test_child_that_exits_at_once_gives_502_and_respawns(ringmux_factory, tmp_path):
    log = tmp_path / "spawns.log"
    rm = ringmux_factory(cmd=RAW_CMD + ["--spawn-log", str(log), "--exit-now"])
    key = f"dead-{uuid.uuid4().hex}"
    for attempt in (1, 2):
        t0 = time.monotonic()
        r = rm.get("/info", key)
        dt = time.monotonic() - t0
        assert r.status_code == 502, (attempt, r.status_code, r.text)
        assert r.headers.get("ringmux-error") in ("child-closed", "child-unreachable"), r.headers
        assert dt < 5.0, f"502 took {dt:.2f} s"
        assert len(r.content) < 1024
        assert r.headers.get("content-type", "").startswith("text/plain")
        assert len(read_spawn_log(log)) == attempt
    # the dead children are reaped
    wait_until(lambda: rm.zombies() == [] and rm.child_pids() == [], 3.0, what="dead children reaped")
    assert all(not pid_alive(p) for p in read_spawn_log(log))
    assert rm.alive()


def test_child_never_ready_gives_504_and_is_reaped(ringmux_factory, tmp_path):
    log = tmp_path / "spawns.log"
    rm = ringmux_factory(
        cmd=RAW_CMD + ["--spawn-log", str(log), "--never-accept"], args=["--ready-timeout", "1s"]
    )
    key = f"slow-{uuid.uuid4().hex}"
    t0 = time.monotonic()
    r = rm.get("/info", key)
    dt = time.monotonic() - t0
    assert r.status_code == 504, (r.status_code, r.text)
    assert r.headers.get("ringmux-error") == "ready-timeout", r.headers
    assert 0.8 <= dt < 5.0, f"504 after {dt:.2f} s with --ready-timeout 1s"
    pids = read_spawn_log(log)
    assert len(pids) == 1
    wait_until(lambda: not pid_alive(pids[0]), 3.0, what="never-ready child to be killed")
    wait_until(lambda: rm.zombies() == [] and rm.child_pids() == [], 3.0, what="never-ready child reaped")
    assert rm.alive()


def test_slow_starting_child_within_ready_timeout_succeeds(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD + ["--delay-start", "0.7"], args=["--ready-timeout", "5s"])
    t0 = time.monotonic()
    r = rm.get("/info", "slowstart")
    dt = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert dt >= 0.6
    assert r.json()["cwd"] == rm.child_dir("slowstart")


def test_concurrent_waiters_on_never_ready_child_all_get_504(ringmux_factory, tmp_path):
    log = tmp_path / "spawns.log"
    rm = ringmux_factory(
        cmd=RAW_CMD + ["--spawn-log", str(log), "--never-accept"], args=["--ready-timeout", "1s"]
    )
    key = f"herd504-{uuid.uuid4().hex}"
    codes = []

    def worker():
        codes.append(rm.get("/info", key).status_code)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert codes == [504] * 4
    assert len(read_spawn_log(log)) == 1


@pytest.fixture(scope="module")
def garbage_ringmux(tmp_path_factory, request):
    from conftest import module_ringmux

    return module_ringmux(tmp_path_factory, request, cmd=RAW_CMD)


@pytest.mark.parametrize(
    "payload,allowed",
    [
        (b"GARBAGE\r\n\r\n", {400}),
        (b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nthis is not a header\r\n\r\n", {400}),
        (b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: nope\r\n\r\n", {400}),
        (b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", {400}),
        (b"GET /info HTTP/9.9\r\n\r\n", {400, 505}),
    ],
    ids=["garbage-line", "bad-header-line", "bad-content-length", "conflicting-content-length", "bad-version"],
)
def test_malformed_request_gets_400(garbage_ringmux, payload, allowed):
    rm = garbage_ringmux
    resp = raw_http(rm.port, payload)
    assert status_of(resp) in allowed, resp[:300]
    assert b"\r\nringmux-error: bad-request\r\n" in resp, resp[:300]
    assert rm.alive()


def test_garbage_does_not_disturb_other_clients(garbage_ringmux):
    rm = garbage_ringmux
    key = f"good-{uuid.uuid4().hex}"
    assert rm.get("/info", key).status_code == 200
    # a half-sent request held open must not block anyone
    stuck = socket.create_connection(("127.0.0.1", rm.port), timeout=5)
    stuck.sendall(b"GET /info?vf_state_secret=x HTTP/1.1\r\nHost: a")
    stop = threading.Event()
    bad_codes = []

    def spam():
        for _ in range(30):
            if stop.is_set():
                break
            bad_codes.append(status_of(raw_http(rm.port, b"GARBAGE\r\n\r\n")))

    t = threading.Thread(target=spam)
    t.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", rm.port, timeout=5)
        for _ in range(20):
            conn.request("GET", f"/state?vf_state_secret={key}")
            r = conn.getresponse()
            r.read()
            assert r.status == 200
        conn.close()
    finally:
        stop.set()
        t.join(20)
        stuck.close()
    assert bad_codes and set(bad_codes) == {400}
    assert rm.alive()


def test_refused_connect_is_a_502_that_names_the_operation_and_errno(ringmux_factory):
    """A child that closed its listening socket refuses connections: the
    client gets a 502 saying which operation failed and why (the errno), and
    the log says the same at 3 a.m. without the rollout key."""
    rm = ringmux_factory(cmd=RAW_CMD + ["--close-listener"], args=["--ready-timeout", "30s"])
    key = f"refused-{uuid.uuid4().hex}"
    # The first request may reach the backlog before the child closes it
    # (then the child "closed the connection"); once fd 3 is gone, connects
    # are refused.
    first = rm.get("/info", key)
    assert first.status_code == 502, (first.status_code, first.text)
    pids = rm.child_pids()
    assert len(pids) == 1, pids
    wait_until(lambda: not os.path.exists(f"/proc/{pids[0]}/fd/3"), 10.0, what="the child closed fd 3")
    r = rm.get("/info", key)
    assert r.status_code == 502, (r.status_code, r.text)
    assert r.text == "ringmux: child unreachable (connect: Connection refused (os error 111))\n", r.text
    assert r.headers.get("ringmux-error") == "child-unreachable", r.headers
    wait_until(lambda: "connect: Connection refused" in rm.stderr_text(), 5.0, what="the 502 logged")
    log = rm.stderr_text()
    assert "side=\"child\"" in log or "side=child" in log, log[-2000:]
    assert key not in log
    assert rm.get("/info", None).status_code in (200, 502)  # the instance goes on serving
    assert rm.alive()
