"""Daemon lifecycle: SIGTERM/SIGINT clean shutdown, children die with ringmux."""

import os
import signal
import threading
import time
import uuid

import httpx
import pytest

from conftest import RAW_CMD, pid_alive, procs_with_cwd_under, wait_until


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_kills_children_and_removes_instance_dir(ringmux_factory, sig):
    rm = ringmux_factory(cmd=RAW_CMD)
    keys = [f"live-{i}-{uuid.uuid4().hex}" for i in range(3)]
    pids = [rm.info(k)["pid"] for k in keys]
    assert sorted(rm.child_pids()) == sorted(pids)
    # a client in the middle of a long SSE response must not hold shutdown up,
    # and must itself see its stream end rather than hang
    streaming = threading.Event()
    stream_end = {}

    def long_stream():
        try:
            with httpx.Client(timeout=httpx.Timeout(15.0, connect=5.0)) as c:
                with c.stream("GET", rm.path_url("/sse", keys[0], "n=100&interval_ms=200")) as r:
                    for line in r.iter_lines():
                        streaming.set()
            stream_end["how"] = "eof"
        except httpx.HTTPError as e:
            stream_end["how"] = type(e).__name__
        stream_end["t"] = time.monotonic()

    t = threading.Thread(target=long_stream, daemon=True)
    t.start()
    assert streaming.wait(5), "SSE stream did not start"
    inst = rm.instance_dir
    t0 = time.monotonic()
    rm.proc.send_signal(sig)
    rc = rm.proc.wait(10)
    dt = time.monotonic() - t0
    t.join(5)
    assert "t" in stream_end, "client stream still hanging after ringmux exited"
    assert stream_end["how"] in ("eof", "RemoteProtocolError", "ReadError"), stream_end
    assert rc == 0, rm.stderr_text()
    assert dt < 10
    wait_until(lambda: not any(pid_alive(p) for p in pids), 2.0, what="children to be gone")
    assert not os.path.exists(inst)
    assert procs_with_cwd_under(inst) == []


def test_stop_helper_with_live_children(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD)
    for i in range(3):
        rm.post("/mkfiles", f"k{i}", extra="n=200&dirs=4")
    assert len(rm.child_pids()) == 3
    assert rm.stop() == 0


def test_children_die_when_ringmux_is_killed(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD)
    pids = [rm.info(f"orphan-{i}")["pid"] for i in range(2)]
    rm.proc.send_signal(signal.SIGKILL)
    rm.proc.wait(10)
    wait_until(lambda: not any(pid_alive(p) for p in pids), 5.0, what="PDEATHSIG to kill children")


def test_listen_address_and_instance_dir_lines(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD)
    assert os.path.isabs(rm.instance_dir)
    assert os.path.isdir(rm.instance_dir)
    assert os.path.dirname(rm.instance_dir) == str(rm.base_dir)
    assert rm.stdout_lines[0].startswith("ringmux: instance dir ")
    # two instances on one base dir get different instance dirs
    rm2 = ringmux_factory(cmd=RAW_CMD, start=False)
    rm2.base_dir = rm.base_dir
    rm2.start()
    assert rm2.instance_dir != rm.instance_dir
    assert rm2.port != rm.port
    assert rm2.stop() == 0
    assert os.path.isdir(rm.instance_dir)
    assert rm.stop() == 0
