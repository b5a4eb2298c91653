"""Churn soak: many short rollouts opened and closed concurrently, some of them
crashing on purpose; afterwards nothing may be left behind (processes,
zombies, directories, file descriptors)."""

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import RAW_CMD, child_dirs, pid_alive, procs_with_cwd_under, wait_trash_empty, wait_until

ROLLOUTS = 500
CONCURRENCY = 20
CRASH_EVERY = 10  # ~10% crash on purpose before their close
FD_MARGIN = 0  # after settling, not one fd more than after the warm-up


def _rollout(rm, clients, i, run_id):
    """One rollout: a few requests, maybe a crash, then close. Returns (crashed, pid)."""
    c = clients.get()
    key = f"churn-{run_id}-{i}"
    r = c.get(rm.path_url("/info", key))
    assert r.status_code == 200, (key, r.status_code, r.text[:200])
    pid = r.json()["pid"]
    val = f"v{i}".encode()
    r = c.put(rm.path_url("/state", key), content=val)
    assert (r.status_code, r.text) == (200, "ok"), (key, r.status_code, r.text[:200])
    r = c.get(rm.path_url("/state", key))
    assert (r.status_code, r.content) == (200, val), (key, r.status_code, r.content[:200])
    crashed = i % CRASH_EVERY == 3
    if crashed:
        r = c.post(rm.path_url("/exit", key))
        assert (r.status_code, r.text) == (200, "bye"), (key, r.status_code, r.text[:200])
        # wait (bounded) until ringmux noticed the death: the dir goes away after the reap
        d = rm.child_dir(key)
        wait_until(lambda: not pid_alive(pid) and not os.path.exists(d), 10.0,
                   what=f"crashed child {pid} to be reaped and its dir removed")
    r = c.post(rm.path_url("/vf/close", key))
    assert (r.status_code, r.text) == (200, "closed"), (key, r.status_code, r.text[:200])
    assert not pid_alive(pid), f"child {pid} of {key} alive after close answered"
    return crashed, pid


class _Clients:
    """One keep-alive httpx client per pool thread."""

    def __init__(self):
        self.local = threading.local()
        self.all = []
        self.lock = threading.Lock()

    def get(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
            self.local.c = c
            with self.lock:
                self.all.append(c)
        return c

    def close(self):
        for c in self.all:
            c.close()


def _run(rm, n, run_id):
    clients = _Clients()
    try:
        with ThreadPoolExecutor(CONCURRENCY) as ex:
            futs = [ex.submit(_rollout, rm, clients, i, run_id) for i in range(n)]
            results = [f.result(timeout=120) for f in futs]
    finally:
        clients.close()
    return results


def _settled_fds(rm, target=None, timeout=5.0):
    """Poll the fd count; returns the last value once it is stable (or within target)."""
    samples = []

    def ok():
        samples.append(rm.fd_count())
        if target is not None:
            return samples[-1] <= target
        return len(samples) >= 5 and len(set(samples[-5:])) == 1

    try:
        wait_until(ok, timeout, interval=0.05, what="fd count to settle")
    except AssertionError:
        pass
    return samples[-1], samples


@pytest.mark.timeout(240)
def test_churn_500_rollouts_leaves_nothing_behind(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--workers", "2", "--admin", "127.0.0.1:0"])
    run_id = uuid.uuid4().hex[:8]

    # warm-up: the same shape at full concurrency, so lazily created
    # per-worker resources exist before the baseline is taken
    _run(rm, CONCURRENCY * 2, f"warm{run_id}")
    wait_until(lambda: rm.child_pids() == [] and rm.zombies() == [], 5.0, what="warm-up children gone")
    base_fds, base_samples = _settled_fds(rm)
    m0 = rm.metrics()

    t0 = time.monotonic()
    results = _run(rm, ROLLOUTS, run_id)
    elapsed = time.monotonic() - t0
    n_crashed = sum(1 for c, _ in results if c)
    pids = [p for _, p in results]
    assert len(set(pids)) == ROLLOUTS
    assert n_crashed == ROLLOUTS // CRASH_EVERY

    # no child processes, no zombies, no child dirs
    wait_until(lambda: rm.child_pids() == [] and rm.zombies() == [], 5.0,
               what=f"no children/zombies (children={rm.child_pids()}, zombies={rm.zombies()})")
    assert not any(pid_alive(p) for p in pids)
    assert child_dirs(rm.instance_dir) == [], f"leftover child dirs: {child_dirs(rm.instance_dir)[:20]}"
    wait_trash_empty(rm.instance_dir)
    assert procs_with_cwd_under(rm.instance_dir) == []

    # fds back near the post-warm-up baseline
    end_fds, samples = _settled_fds(rm, target=base_fds + FD_MARGIN)
    fd_list = sorted(os.listdir(f"/proc/{rm.pid}/fd"), key=int)
    assert end_fds <= base_fds + FD_MARGIN, (
        f"ringmux fds grew from {base_fds} (warm-up samples {base_samples[-5:]}) to {end_fds} "
        f"after {ROLLOUTS} rollouts (last samples {samples[-5:]}); fds: "
        f"{[(f, _readlink(rm.pid, f)) for f in fd_list][-40:]}"
    )

    m = rm.metrics()
    d = {k: m[k] - m0.get(k, 0) for k in m}
    assert d["ringmux_spawns_total"] == ROLLOUTS
    assert d['ringmux_child_exits_total{cause="crashed"}'] == n_crashed
    assert d['ringmux_child_exits_total{cause="closed"}'] == ROLLOUTS - n_crashed
    assert m["ringmux_live_children"] == 0
    wait_until(lambda: rm.metric("ringmux_cleanups_in_flight") == 0, 10.0, what="the trash to be deleted")
    assert m["ringmux_cleanup_errors_total"] == 0
    assert m["ringmux_spawn_failures_total"] == 0
    assert sum(v for k, v in m.items() if k.startswith("ringmux_proxy_errors_total{")) == 0
    wait_until(lambda: sum(v for k, v in rm.metrics().items()
                           if k.startswith("ringmux_client_connections{")) == 0,
               5.0, what="client connection gauges back to 0")
    print(f"churn: {ROLLOUTS} rollouts ({n_crashed} crashed) in {elapsed:.1f} s; "
          f"fds {base_fds} -> {end_fds}")
    assert rm.alive()
    assert rm.stop() == 0


def _readlink(pid, fd):
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return "?"
