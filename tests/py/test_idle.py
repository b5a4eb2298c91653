"""--child-idle-timeout: a keyed child with no request in flight and none
started or ended for the timeout is closed as a close would (killed, reaped,
its directory removed, `ringmux_child_exits_total{cause="idle"}`), and its
key's next request starts a fresh child. A request or a stream in flight
keeps its child however long it runs; so does a key used more often than the
timeout; the keyless default child is never retired. The checks wait with
bounds (the sweep runs once a second); nothing asserts on a duration."""

import os
import subprocess
import threading
import uuid

import httpx
import pytest

from conftest import RAW_CMD, RINGMUX_BIN, proc_stat, wait_until

ADMIN = ["--admin", "127.0.0.1:0"]


def _idle_ringmux(ringmux_factory, timeout: str):
    return ringmux_factory(cmd=RAW_CMD, args=[*ADMIN, "--child-idle-timeout", timeout])


def test_an_idle_child_is_closed_and_its_key_starts_afresh(ringmux_factory):
    rm = _idle_ringmux(ringmux_factory, "1s")
    key = f"idle-{uuid.uuid4().hex}"
    default_pid = rm.info(None)["pid"]
    assert rm.put("/state", key, content=b"warm").status_code == 200
    pid = rm.info(key)["pid"]
    d = rm.child_dir(key)
    assert os.path.isdir(d)
    wait_until(lambda: proc_stat(pid) is None, 15.0, what="the idle child to be killed and reaped")
    wait_until(lambda: not os.path.exists(d), 5.0, what="the idle child's directory to go")
    assert rm.wait_metric("ringmux_child_exits_total", lambda v: v == 1, cause="idle") == 1
    assert rm.metric("ringmux_child_exits_total", cause="crashed") == 0
    assert rm.zombies() == []
    # The key starts again, fresh: a new child, and none of the old state.
    fresh = rm.info(key)
    assert fresh["pid"] != pid and fresh["cwd"] == d
    assert rm.get("/state", key).content == b""
    # The shared default child is not a rollout's, and is never retired.
    assert rm.info(None)["pid"] == default_pid
    log = rm.stderr_text(10**7)
    assert "closing a child idle past --child-idle-timeout" in log
    assert key not in log
    assert rm.stop() == 0


def test_a_request_or_stream_in_flight_keeps_its_child(ringmux_factory):
    rm = _idle_ringmux(ringmux_factory, "1s")
    key = f"busy-{uuid.uuid4().hex}"
    pid = rm.info(key)["pid"]
    results = {}

    def slow_call():
        # The child sleeps 3.5 s before it answers.
        r = httpx.get(rm.path_url("/sleep", key, "ms=3500"), timeout=30)
        results["sleep"] = (r.status_code, r.text, r.headers.get("ringmux-error"))

    def stream():
        with httpx.stream("GET", rm.path_url("/sse", key, "n=4&interval_ms=1100"), timeout=30) as r:
            events = [line for line in r.iter_lines() if line.startswith("data:")]
        results["sse"] = (r.status_code, len(events))

    threads = [threading.Thread(target=slow_call), threading.Thread(target=stream)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.get("sleep") == (200, "slept", None), results
    assert results.get("sse") == (200, 4), results
    assert rm.info(key)["pid"] == pid, "the child served both to the end"
    assert rm.metric("ringmux_child_exits_total", cause="idle") == 0
    # Once nothing is in flight, the same child is retired after all.
    wait_until(lambda: proc_stat(pid) is None, 15.0, what="the child to be retired once idle")
    assert rm.wait_metric("ringmux_child_exits_total", lambda v: v == 1, cause="idle") == 1
    assert rm.stop() == 0


def test_a_key_used_more_often_than_the_timeout_keeps_its_child(ringmux_factory):
    rm = _idle_ringmux(ringmux_factory, "2s")
    key = f"used-{uuid.uuid4().hex}"
    assert rm.put("/state", key, content=b"kept").status_code == 200
    pid = rm.info(key)["pid"]
    stop = threading.Event()
    for _ in range(10):  # 10 requests 0.5 s apart: 5 s, longer than the timeout
        stop.wait(0.5)
        assert rm.get("/state", key).content == b"kept"
    assert rm.info(key)["pid"] == pid
    assert rm.metric("ringmux_child_exits_total", cause="idle") == 0
    assert rm.stop() == 0


def test_without_the_flag_an_unused_child_stays(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=ADMIN)
    key = f"kept-{uuid.uuid4().hex}"
    pid = rm.info(key)["pid"]
    threading.Event().wait(2.5)  # past two sweeps
    assert proc_stat(pid) is not None
    assert rm.info(key)["pid"] == pid
    assert rm.metric("ringmux_child_exits_total", cause="idle") == 0
    assert rm.stop() == 0


@pytest.mark.parametrize("value,needle", [
    ("500ms", "--child-idle-timeout must be at least 1s"),
    ("soon", "--child-idle-timeout"),
])
def test_a_bad_idle_timeout_is_refused_clearly(tmp_path, value, needle):
    p = subprocess.run(
        [str(RINGMUX_BIN), "serve", "--base-dir", str(tmp_path), "--child-idle-timeout", value, "--demo"],
        capture_output=True, text=True, timeout=20,
    )
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert needle in p.stderr, p.stderr
    assert not list(tmp_path.iterdir()), "nothing was made"
