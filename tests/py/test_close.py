"""Closing a rollout: kill + reap + delete, then a fresh child on reuse."""

import os
import threading
import time
import uuid

from conftest import pid_alive, proc_stat


def _count_files(path):
    n = 0
    for _, _, files in os.walk(path):
        n += len(files)
    return n


def test_close_kills_reaps_and_deletes_before_answering(raw_ringmux):
    rm = raw_ringmux
    key = f"close-{uuid.uuid4().hex}"
    other = f"bystander-{uuid.uuid4().hex}"
    other_pid = rm.info(other)["pid"]
    pid = rm.info(key)["pid"]
    r = rm.post("/mkfiles", key, extra="n=5000&dirs=10")
    assert r.status_code == 200 and r.json()["made"] == 5000
    d = rm.child_dir(key)
    assert _count_files(d) == 5000

    r = rm.close_key(key)
    # Checked right after the answer: no grace period.
    gone_dir = not os.path.exists(d)
    st = proc_stat(pid)
    assert r.status_code == 200
    assert r.text == "closed"
    assert gone_dir, f"{d} still exists when close answered"
    assert st is None, f"child {pid} still exists when close answered (state {st and st[0]})"
    assert pid not in rm.zombies()
    assert pid not in rm.child_pids()
    # nobody else noticed
    assert rm.info(other)["pid"] == other_pid


def test_close_unknown_key_answers_closed(raw_ringmux):
    rm = raw_ringmux
    for method in ("POST", "GET", "DELETE"):
        r = rm.close_key(f"never-seen-{uuid.uuid4().hex}", method=method)
        assert (r.status_code, r.text) == (200, "closed"), method


def test_close_ignores_body_and_accepts_any_method(raw_ringmux):
    rm = raw_ringmux
    key = f"getclose-{uuid.uuid4().hex}"
    pid = rm.info(key)["pid"]
    with rm.client() as c:
        r = c.request("PUT", rm.path_url("/vf/close", key), content=b"x" * 10000)
    assert (r.status_code, r.text) == (200, "closed")
    assert not pid_alive(pid)
    assert not os.path.exists(rm.child_dir(key))


def test_request_after_close_gets_fresh_child_in_empty_dir(raw_ringmux):
    rm = raw_ringmux
    key = f"reuse-{uuid.uuid4().hex}"
    pid1 = rm.info(key)["pid"]
    rm.put("/state", key, content=b"old-state")
    assert rm.post("/mkfiles", key, extra="n=50&dirs=5").json()["made"] == 50
    assert rm.close_key(key).text == "closed"
    info = rm.info(key)
    assert info["pid"] != pid1
    assert info["cwd"] == rm.child_dir(key)
    assert os.path.isdir(rm.child_dir(key))
    assert rm.get("/listdir", key).json() == []
    assert rm.get("/state", key).text == ""
    assert _count_files(rm.child_dir(key)) == 0


def test_concurrent_closes_both_wait_for_cleanup(raw_ringmux):
    rm = raw_ringmux
    key = f"dblclose-{uuid.uuid4().hex}"
    pid = rm.info(key)["pid"]
    # a big directory so cleanup takes a while
    assert rm.post("/mkfiles", key, extra="n=20000&dirs=20").json()["made"] == 20000
    d = rm.child_dir(key)
    barrier = threading.Barrier(2, timeout=10)
    results = {}

    def closer(i):
        barrier.wait()
        if i == 1:
            time.sleep(0.005)  # land while the first close is in progress
        r = rm.close_key(key)
        results[i] = (r.status_code, r.text, os.path.exists(d), pid_alive(pid))

    threads = [threading.Thread(target=closer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.get(0) == (200, "closed", False, False), results
    assert results.get(1) == (200, "closed", False, False), results


def test_close_default_child(raw_ringmux):
    rm = raw_ringmux
    pid = rm.info(None)["pid"]
    r = rm.close_key(None)
    assert (r.status_code, r.text) == (200, "closed")
    assert not pid_alive(pid)
    assert not os.path.exists(rm.child_dir(None))
    assert rm.info(None)["pid"] != pid


def test_many_open_close_cycles_leak_nothing(raw_ringmux):
    rm = raw_ringmux
    before = set(rm.child_pids())
    for i in range(15):
        key = f"churn-{i}-{uuid.uuid4().hex}"
        assert rm.get("/info", key).status_code == 200
        assert rm.close_key(key).text == "closed"
    assert set(rm.child_pids()) == before
    assert rm.zombies() == []
    names = set(os.listdir(rm.instance_dir))
    churn = [n for n in names if n not in {os.path.basename(rm.child_dir(None))}]
    # only directories of keys that other tests in this module left open remain
    assert len(churn) <= len(before)
