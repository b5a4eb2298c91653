"""Child lifecycle beyond close: crashes, ready timeouts, --keep-failed-dirs,
cleanup priority, big shutdowns and stale instances left by a SIGKILLed
ringmux. (A close moves the directory into the trash, so the same key starts
again at once: test_trash.py.)"""

import os
import re
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import (
    EXIT_WAIT_POLLED,
    mkfiles as _mkfiles,
    RAW_CMD,
    child_dirs,
    count_files,
    dir_entries,
    key_hash_dir,
    pid_alive,
    proc_stat,
    proc_threads,
    procs_with_cwd_under,
    read_spawn_log,
    thread_nice,
    wait_until,
)

ADMIN = ["--admin", "127.0.0.1:0"]
BIG_N = 20000
BIG_DIRS = 21
LONG = httpx.Timeout(60.0, connect=5.0)





def _failed_dirs(base):
    return sorted(n for n in dir_entries(base) if n.startswith("ringmux-failed-"))


# --------------------------------------------------------------------------
# children that die on their own
# --------------------------------------------------------------------------


# exit_wait "poll": exits seen as on a kernel before 6.7 (RINGMUX_EXIT_WAIT).
@pytest.mark.parametrize("exit_wait", ["waitid", "poll"])
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_child_dying_on_its_own_is_reaped_and_forgotten(ringmux_factory, how, exit_wait):
    rm = ringmux_factory(cmd=RAW_CMD, args=ADMIN, env={"RINGMUX_EXIT_WAIT": exit_wait})
    key = f"crash-{how}-{uuid.uuid4().hex}"
    bystander = f"by-{uuid.uuid4().hex}"
    by_pid = rm.info(bystander)["pid"]
    pid = rm.info(key)["pid"]
    _mkfiles(rm, key, 200, 4)
    d = rm.child_dir(key)
    assert count_files(d) == 200
    if how == "exit":
        r = rm.post("/exit", key)
        assert (r.status_code, r.text) == (200, "bye")
    else:
        os.kill(pid, signal.SIGKILL)  # "killed by someone else"
    wait_until(lambda: proc_stat(pid) is None, 5.0, what=f"dead child {pid} to be reaped (not a zombie)")
    wait_until(lambda: not os.path.exists(d), 5.0, what=f"crashed child's dir {d} to be removed")
    assert pid not in rm.zombies()
    assert rm.wait_metric("ringmux_child_exits_total", lambda v: v == 1, cause="crashed") == 1
    m = rm.metrics()
    assert m['ringmux_child_exits_total{cause="closed"}'] == 0
    assert m["ringmux_live_children"] == 1
    # the key is free: the next request starts a new child in an empty directory
    info = rm.info(key)
    assert info["pid"] != pid
    assert info["cwd"] == d
    assert rm.get("/listdir", key).json() == []
    assert rm.info(bystander)["pid"] == by_pid
    assert rm.metric("ringmux_spawns_total") == 3
    # a close is seen the same way: the child is reaped before 200 closed
    by_dir = rm.child_dir(bystander)
    assert rm.close_key(bystander).status_code == 200
    assert proc_stat(by_pid) is None and not os.path.exists(by_dir)
    assert rm.stop() == 0
    assert (EXIT_WAIT_POLLED in rm.stderr_text(10**7)) == (exit_wait == "poll")


def test_request_in_flight_to_a_dying_child_gets_502(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=ADMIN)
    key = f"inflight-{uuid.uuid4().hex}"
    pid = rm.info(key)["pid"]
    d = rm.child_dir(key)
    out = {}

    def slow():
        try:
            with rm.client() as c:
                out["r"] = c.get(rm.path_url("/sleep", key, "ms=20000&marker=sleeping"))
        except httpx.HTTPError as e:
            out["err"] = e

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    # the request reached the child once the marker exists
    wait_until(lambda: os.path.exists(os.path.join(d, "sleeping")), 5.0, what="request to reach the child")
    os.kill(pid, signal.SIGKILL)
    t.join(10)
    assert not t.is_alive(), "in-flight request still hanging 10 s after its child died"
    assert "r" in out, f"client saw {out.get('err')!r} instead of a 502"
    assert out["r"].status_code == 502, (out["r"].status_code, out["r"].text)
    assert len(out["r"].content) < 1024
    wait_until(lambda: proc_stat(pid) is None and not os.path.exists(d), 5.0, what="reap + dir removal")
    assert rm.info(key)["pid"] != pid


def test_child_exiting_without_answering_gives_502(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=ADMIN)
    key = f"die-{uuid.uuid4().hex}"
    pid = rm.info(key)["pid"]
    r = rm.post("/die", key)
    assert r.status_code == 502, (r.status_code, r.text)
    wait_until(lambda: proc_stat(pid) is None, 5.0, what="child reaped")
    wait_until(lambda: not os.path.exists(rm.child_dir(key)), 5.0, what="dir removed")
    rm.wait_metric("ringmux_child_exits_total", lambda v: v == 1, cause="crashed")
    assert rm.info(key)["pid"] != pid


@pytest.mark.parametrize("how", ["sigkill", "exit", "close"])
def test_started_stream_ends_cleanly_when_its_child_dies(ringmux_factory, how):
    rm = ringmux_factory(cmd=RAW_CMD, args=ADMIN)
    key = f"sse-{how}-{uuid.uuid4().hex}"
    pid = rm.info(key)["pid"]
    events = []
    end = {}
    started = threading.Event()

    def stream():
        try:
            with rm.client() as c:
                with c.stream("GET", rm.path_url("/sse", key, "n=200&interval_ms=100")) as r:
                    end["status"] = r.status_code
                    for line in r.iter_lines():
                        if line.startswith("data:"):
                            events.append(line)
                            started.set()
            end["how"] = "eof"
        except httpx.HTTPError as e:
            end["how"] = type(e).__name__
        end["done"] = True

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    assert started.wait(5), "stream did not start"
    if how == "sigkill":
        os.kill(pid, signal.SIGKILL)
    elif how == "exit":
        assert rm.post("/exit", key).text == "bye"  # on another connection
    else:
        assert rm.close_key(key).text == "closed"
    t.join(10)
    assert end.get("done"), f"client stream still hanging 10 s after the child died ({how})"
    assert end["status"] == 200
    assert end["how"] in ("eof", "RemoteProtocolError", "ReadError"), end
    assert 1 <= len(events) < 200
    wait_until(lambda: proc_stat(pid) is None, 5.0, what="child reaped")
    cause = "closed" if how == "close" else "crashed"
    rm.wait_metric("ringmux_child_exits_total", lambda v: v == 1, cause=cause)
    # ringmux is fine and the key gets a new child
    assert rm.info(key)["pid"] != pid


# --------------------------------------------------------------------------
# ready timeout
# --------------------------------------------------------------------------
def test_ready_timeout_kills_reaps_and_removes_dir(ringmux_factory, tmp_path):
    log = tmp_path / "spawns.log"
    rm = ringmux_factory(
        cmd=RAW_CMD + ["--spawn-log", str(log), "--touch", "early.txt", "--never-accept"],
        args=["--ready-timeout", "1s", *ADMIN],
    )
    key = f"never-{uuid.uuid4().hex}"
    codes = []

    def one():
        with rm.client() as c:
            codes.append(c.get(rm.path_url("/info", key)).status_code)

    ts = [threading.Thread(target=one) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(15)
    assert codes == [504, 504, 504], codes
    pids = read_spawn_log(log)
    assert len(pids) == 1, pids
    wait_until(lambda: proc_stat(pids[0]) is None, 5.0, what="never-ready child reaped")
    wait_until(lambda: not os.path.exists(rm.child_dir(key)), 5.0, what="never-ready child's dir removed")
    assert rm.wait_metric("ringmux_child_exits_total", lambda v: v == 1, cause="ready_timeout") == 1
    m = rm.metrics()
    assert m['ringmux_child_exits_total{cause="crashed"}'] == 0
    assert m["ringmux_live_children"] == 0
    assert rm.zombies() == []
    assert _failed_dirs(rm.base_dir) == [], "dir kept without --keep-failed-dirs"
    assert rm.stop() == 0


# --------------------------------------------------------------------------
# --keep-failed-dirs
# --------------------------------------------------------------------------
FAILED_RE = re.compile(r"^ringmux-failed-([0-9a-f]{16})-(\d+)-(\d+)$")


def test_keep_failed_dirs_keeps_crashed_child_dir(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--keep-failed-dirs", *ADMIN])
    crashed = f"kf-crash-{uuid.uuid4().hex}"
    closed = f"kf-close-{uuid.uuid4().hex}"
    pid = rm.info(crashed)["pid"]
    rm.info(closed)
    _mkfiles(rm, crashed, 120, 3)
    _mkfiles(rm, closed, 50, 2)
    assert rm.put("/state", crashed, content=b"x").status_code == 200
    t0 = int(time.time())
    assert rm.post("/exit", crashed).text == "bye"
    wait_until(lambda: proc_stat(pid) is None, 5.0, what="crashed child reaped")
    wait_until(lambda: _failed_dirs(rm.base_dir), 5.0, what="a ringmux-failed-* dir under the base dir")
    wait_until(lambda: not os.path.exists(rm.child_dir(crashed)), 5.0, what="the dir to leave the instance dir")
    kept = _failed_dirs(rm.base_dir)
    assert len(kept) == 1, kept
    m = FAILED_RE.match(kept[0])
    assert m, f"kept dir name {kept[0]!r} is not ringmux-failed-<16hex>-<unixtime>-<childid>"
    assert m.group(1) == key_hash_dir(crashed)
    assert t0 - 5 <= int(m.group(2)) <= int(time.time()) + 5
    path = os.path.join(str(rm.base_dir), kept[0])
    assert count_files(path) == 120, "the kept dir lost its files"
    wait_until(lambda: path in rm.stderr_text(100000), 3.0, what="stderr to name the kept dir")

    # the key starts afresh in an empty dir
    info = rm.info(crashed)
    assert info["pid"] != pid
    assert rm.get("/listdir", crashed).json() == []

    # a closed child's dir is still removed, not kept
    d = rm.child_dir(closed)
    assert rm.close_key(closed).text == "closed"
    assert not os.path.exists(d)
    assert _failed_dirs(rm.base_dir) == kept
    rm.wait_metric("ringmux_child_exits_total", lambda v: v == 1, cause="crashed")

    # kept dirs survive shutdown, and a new instance on the same base dir
    # does not take them for a dead instance
    assert rm.stop() == 0
    assert os.path.isdir(path) and count_files(path) == 120
    rm2 = ringmux_factory(cmd=RAW_CMD, args=ADMIN, start=False)
    rm2.base_dir = rm.base_dir
    rm2.stderr_path = rm.base_dir.parent / f"{rm.base_dir.name}.second.stderr.log"
    rm2.start()
    rm2.info("anything")
    time.sleep(0.5)  # give a (wrong) sweep a chance to act; not a threshold
    assert os.path.isdir(path) and count_files(path) == 120, "a new instance removed a kept failed dir"
    assert rm2.metric("ringmux_stale_instances_removed_total") == 0
    assert rm2.stop() == 0


def test_keep_failed_dirs_keeps_never_ready_child_dir(ringmux_factory):
    rm = ringmux_factory(
        cmd=RAW_CMD + ["--touch", "early.txt", "--never-accept"],
        args=["--keep-failed-dirs", "--ready-timeout", "1s", *ADMIN],
    )
    key = f"kf-never-{uuid.uuid4().hex}"
    assert rm.get("/info", key).status_code == 504
    wait_until(lambda: _failed_dirs(rm.base_dir), 5.0, what="a ringmux-failed-* dir")
    kept = _failed_dirs(rm.base_dir)
    assert len(kept) == 1, kept
    m = FAILED_RE.match(kept[0])
    assert m and m.group(1) == key_hash_dir(key), kept
    path = os.path.join(str(rm.base_dir), kept[0])
    assert dir_entries(path) == ["early.txt"]
    assert not os.path.exists(rm.child_dir(key))
    wait_until(lambda: path in rm.stderr_text(100000), 3.0, what="stderr to name the kept dir")
    rm.wait_metric("ringmux_child_exits_total", lambda v: v == 1, cause="ready_timeout")
    assert rm.stop() == 0
    assert os.path.isdir(path)


# --------------------------------------------------------------------------
# cleanup priority (the trash and its pacing: test_trash.py)
# --------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_cleanup_io_workers_run_at_nice_19(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=ADMIN)
    threads = proc_threads(rm.pid)
    control = [tid for tid, comm in threads.items() if comm == "ringmux-control"]
    assert len(control) == 1, f"expected one ringmux-control thread: {threads}"
    want = f"iou-wrk-{control[0]}"
    key = f"nice-{uuid.uuid4().hex}"
    rm.info(key)
    _mkfiles(rm, key, BIG_N, BIG_DIRS)

    last_nice = {}  # tid -> last observed nice
    stop = threading.Event()

    def sample():
        for _ in range(100000):
            if stop.is_set():
                return
            for tid, comm in proc_threads(rm.pid).items():
                if comm == want:
                    n = thread_nice(rm.pid, tid)
                    if n is not None:
                        last_nice[tid] = n
            time.sleep(0.003)

    s = threading.Thread(target=sample, daemon=True)
    s.start()
    with httpx.Client(timeout=LONG) as c:
        r = c.post(rm.path_url("/vf/close", key))
    assert r.text == "closed"
    time.sleep(2.0)  # io-wq workers linger after work: keep sampling them
    stop.set()
    s.join(5)
    others = {tid: comm for tid, comm in proc_threads(rm.pid).items() if comm.startswith("iou-wrk-")}
    assert last_nice, (
        f"no {want} thread seen during/after a {BIG_N}-file cleanup; iou-wrk threads now: {others}"
    )
    wrong = {tid: n for tid, n in last_nice.items() if n != 19}
    assert wrong == {}, f"cleanup io-wq workers not at nice 19 (tid -> nice): {wrong}; all: {last_nice}"
    # the data-plane and control threads themselves are not reniced
    for tid, comm in proc_threads(rm.pid).items():
        if comm in ("ringmux-control",) or comm.startswith("ringmux-w"):
            assert thread_nice(rm.pid, tid) == 0, (tid, comm)


# --------------------------------------------------------------------------
# shutdown and SIGKILL
# --------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_sigterm_with_100_children_and_big_dirs(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--workers", "2", *ADMIN])
    keys = [f"many-{i}-{uuid.uuid4().hex}" for i in range(100)]

    def start(k):
        with rm.client() as c:
            r = c.get(rm.path_url("/info", k))
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()["pid"]

    with ThreadPoolExecutor(16) as ex:
        pids = list(ex.map(start, keys))
    assert len(set(pids)) == 100
    with ThreadPoolExecutor(3) as ex:
        list(ex.map(lambda k: _mkfiles(rm, k, 5000, 10), keys[:3]))
    assert len(rm.child_pids()) == 100
    assert rm.metric("ringmux_live_children") == 100
    inst = rm.instance_dir
    assert len(child_dirs(inst)) == 100
    t0 = time.monotonic()
    assert rm.stop(within=30.0) == 0  # exit 0, children gone, no zombies, dir gone
    assert time.monotonic() - t0 < 30.0
    assert not any(pid_alive(p) for p in pids)
    assert procs_with_cwd_under(inst) == []


@pytest.mark.timeout(120)
def test_sigkill_leaves_dir_that_next_instance_sweeps_but_live_ones_are_untouched(ringmux_factory):
    live = ringmux_factory(cmd=RAW_CMD, args=ADMIN)
    base = live.base_dir

    def on_base(suffix):
        r = ringmux_factory(cmd=RAW_CMD, args=ADMIN, start=False)
        r.base_dir = base
        r.stderr_path = base.parent / f"{base.name}.{suffix}.stderr.log"
        return r.start()

    dead = on_base("dead")
    live_keys = [f"live-{i}-{uuid.uuid4().hex}" for i in range(2)]
    live_pids = {k: live.info(k)["pid"] for k in live_keys}
    for k in live_keys:
        _mkfiles(live, k, 300, 3)
    dead_pids = [dead.info(f"dead-{i}")["pid"] for i in range(3)]
    _mkfiles(dead, "dead-0", 2000, 8)
    dead_inst = dead.instance_dir
    assert os.path.isdir(dead_inst) and len(child_dirs(dead_inst)) == 3

    dead.proc.send_signal(signal.SIGKILL)
    dead.proc.wait(10)
    wait_until(lambda: not any(pid_alive(p) for p in dead_pids), 5.0, what="PDEATHSIG to kill the children")
    assert os.path.isdir(dead_inst), "a SIGKILLed ringmux cannot have removed its dir"

    new = on_base("new")
    wait_until(lambda: not os.path.exists(dead_inst), 10.0, what=f"new instance to remove {dead_inst}")
    assert new.wait_metric("ringmux_stale_instances_removed_total", lambda v: v == 1, timeout=5.0) == 1
    assert new.metric("ringmux_cleanup_errors_total") == 0

    # the live instance's dirs, files and children are untouched; it keeps serving
    assert os.path.isdir(live.instance_dir)
    for k in live_keys:
        assert count_files(live.child_dir(k)) == 300, k
        assert live.info(k)["pid"] == live_pids[k]
    assert live.info(f"live-new-{uuid.uuid4().hex}")["cwd"].startswith(live.instance_dir)
    assert os.path.isdir(new.instance_dir)
    assert new.info("x")["cwd"] == new.child_dir("x")

    # and neither of them sweeps the other on a later start: a third instance
    third = on_base("third")
    third.info("y")
    time.sleep(0.5)  # give a (wrong) sweep a chance to act; not a threshold
    assert os.path.isdir(live.instance_dir) and os.path.isdir(new.instance_dir)
    assert third.metric("ringmux_stale_instances_removed_total") == 0
    for k in live_keys:
        assert count_files(live.child_dir(k)) == 300, k
    for r in (third, new, live):
        assert r.stop() == 0
