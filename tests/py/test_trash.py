"""The trash (issue #12): a close moves its rollout's directory into
`<instance>/.trash` and answers; the trash is deleted paced while the workers
serve, at full speed when they are idle, past the backlog cap, at shutdown,
and by the next instance after a SIGKILL. Also the CPU placement of the
workers and of the cleanup threads, and the flags' validation.

A deliberately tiny rate (`--cleanup-rate 1 --cleanup-floor 1`) with a
bystander rollout that keeps the workers serving holds a tree in the trash
for as long as a test needs to look at it; nothing here depends on timing
beyond bounded waits."""

import os
import signal
import subprocess
import threading
import uuid

import httpx
import pytest

from conftest import (
    mkfiles as _mkfiles,
    RAW_CMD,
    RINGMUX_BIN,
    TRASH,
    count_files,
    dir_entries,
    proc_threads,
    wait_trash_empty,
    wait_until,
)

ADMIN = ["--admin", "127.0.0.1:0"]
SLOW = ["--cleanup-rate", "1", "--cleanup-floor", "1"]
BIG_N = 20000
BIG_DIRS = 21
LONG = httpx.Timeout(60.0, connect=5.0)



class Bystander:
    """Another rollout calling every 20 ms (so the workers count as serving),
    bounded to 60 s; errors (e.g. during a shutdown) are counted, not raised."""

    def __init__(self, rm):
        self.rm = rm
        self.key = f"bystander-{uuid.uuid4().hex}"
        self.stop_ev = threading.Event()
        self.ok = 0
        self.errors = 0
        self.th = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with httpx.Client(timeout=10.0) as c:
            for _ in range(3000):
                if self.stop_ev.wait(0.02):
                    return
                try:
                    r = c.get(self.rm.path_url("/info", self.key))
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.errors += 1
                except httpx.HTTPError:
                    self.errors += 1

    def __enter__(self):
        self.th.start()
        wait_until(lambda: self.ok >= 3, 10.0, what="the bystander to be served")
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.th.join(15)


def trash_of(rm):
    return os.path.join(rm.instance_dir, TRASH)


def mode(rm):
    m = rm.metrics()
    on = [k for k, v in m.items() if k.startswith("ringmux_trash_mode{") and v == 1]
    assert len(on) == 1, on
    return on[0].split('"')[1]


def cpus_allowed(pid, tid):
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return None


@pytest.mark.timeout(120)
def test_close_answers_before_the_tree_is_deleted_and_the_key_restarts_in_a_fresh_directory(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=[*ADMIN, *SLOW])
    a = f"trash-a-{uuid.uuid4().hex}"
    b = f"trash-b-{uuid.uuid4().hex}"
    pid_a = rm.info(a)["pid"]
    _mkfiles(rm, a, BIG_N, BIG_DIRS)
    d = rm.child_dir(a)
    with Bystander(rm) as by:
        assert rm.close_key(a).text == "closed"
        # Out of the key's way at once, not deleted: the whole tree is in the trash.
        assert not os.path.exists(d)
        held = dir_entries(trash_of(rm))
        assert len(held) == 1, held
        assert count_files(os.path.join(trash_of(rm), held[0])) >= BIG_N - 100
        assert a[:8] not in held[0], "trash entries are named by a counter, not by key"
        # The same key starts again at once, in a fresh empty directory.
        info = rm.info(a)
        assert info["pid"] != pid_a and info["cwd"] == d
        assert rm.get("/listdir", a).json() == []
        assert rm.info(b)["cwd"] == rm.child_dir(b)
        m = rm.metrics()
        assert m["ringmux_trash_trees"] == 1
        assert m["ringmux_trash_backlog_entries"] > 1000
        assert m["ringmux_close_teardown_seconds_count"] >= 1
        assert mode(rm) == "paced"
        assert by.errors == 0
    # Nobody served any more: full speed.
    wait_trash_empty(rm.instance_dir, 30.0)
    wait_until(lambda: rm.metric("ringmux_trash_trees") == 0, 5.0, what="trash trees gauge to reach 0")
    m = rm.metrics()
    assert m["ringmux_trash_removed_entries_total"] >= BIG_N + BIG_DIRS
    assert m["ringmux_cleanup_errors_total"] == 0
    assert mode(rm) == "idle"
    assert rm.stop() == 0


@pytest.mark.timeout(120)
def test_a_long_tool_call_keeps_the_deletion_paced(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=[*ADMIN, *SLOW])
    a = f"long-a-{uuid.uuid4().hex}"
    b = f"long-b-{uuid.uuid4().hex}"
    rm.info(a)
    rm.info(b)
    _mkfiles(rm, a, BIG_N, BIG_DIRS)
    got = {}

    def call():
        with httpx.Client(timeout=LONG) as c:
            got["r"] = c.get(rm.path_url("/sleep", b, "ms=3000"))

    t = threading.Thread(target=call, daemon=True)
    t.start()
    wait_until(lambda: sum(v for k, v in rm.metrics().items() if k.startswith("ringmux_requests_in_progress{")) >= 1,
               5.0, what="the long call to be seen in progress")
    assert rm.close_key(a).text == "closed"
    # No new request arrives, but one is being answered: still serving.
    wait_until(lambda: rm.metric("ringmux_trash_trees") == 1, 5.0, what="the tree in the trash")
    assert mode(rm) == "paced"
    assert len(dir_entries(trash_of(rm))) == 1
    t.join(30)
    assert got["r"].status_code == 200 and got["r"].text == "slept"
    wait_trash_empty(rm.instance_dir, 30.0)
    assert mode(rm) == "idle"
    assert rm.stop() == 0


@pytest.mark.timeout(120)
def test_a_backlog_over_its_cap_is_deleted_at_full_speed_and_says_so(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=[*ADMIN, "--cleanup-rate", "100", "--cleanup-floor", "100",
                                            "--cleanup-backlog-max", "1000"])
    a = f"cap-{uuid.uuid4().hex}"
    rm.info(a)
    _mkfiles(rm, a, BIG_N, BIG_DIRS)
    with Bystander(rm) as by:
        assert rm.close_key(a).text == "closed"
        # At 100 entries/s this tree would take 200 s; over the cap it goes at
        # full speed down to half the cap, while the bystander is served.
        wait_until(lambda: rm.metric("ringmux_trash_over_cap_total") == 1, 10.0, what="the cap to be passed")
        wait_until(lambda: rm.metric("ringmux_trash_backlog_entries") <= 500, 30.0,
                   what="the over-cap backlog to be deleted at full speed")
        wait_until(lambda: mode(rm) == "paced", 10.0, what="pacing to resume under half the cap")
        assert by.errors == 0
    wait_trash_empty(rm.instance_dir, 30.0)
    err = rm.stderr_text(200000)
    assert "trash backlog over --cleanup-backlog-max" in err, err[-2000:]
    assert "pacing resumes" in err
    assert rm.metric("ringmux_trash_over_cap_total") == 1
    assert rm.stop() == 0


@pytest.mark.timeout(120)
def test_shutdown_deletes_the_trash_at_full_speed(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=[*ADMIN, *SLOW])
    a = f"down-{uuid.uuid4().hex}"
    rm.info(a)
    _mkfiles(rm, a, BIG_N, BIG_DIRS)
    inst = rm.instance_dir
    with Bystander(rm):
        assert rm.close_key(a).text == "closed"
        assert len(dir_entries(trash_of(rm))) == 1
        # SIGTERM while the trash holds 20,000 files paced at 1/s: exit 0 with
        # the instance directory (trash included) gone.
        assert rm.stop(within=30.0) == 0
    assert not os.path.exists(inst)


@pytest.mark.timeout(120)
def test_a_sigkilled_instances_trash_is_drained_by_the_next(ringmux_factory):
    dead = ringmux_factory(cmd=RAW_CMD, args=[*ADMIN, *SLOW])
    base = dead.base_dir
    a = f"kill-{uuid.uuid4().hex}"
    dead.info(a)
    _mkfiles(dead, a, BIG_N, BIG_DIRS)
    with Bystander(dead):
        assert dead.close_key(a).text == "closed"
        held = dir_entries(trash_of(dead))
        assert len(held) == 1
        dead.proc.send_signal(signal.SIGKILL)
        dead.proc.wait(10)
    dead_inst = dead.instance_dir
    assert count_files(os.path.join(dead_inst, TRASH, held[0])) > 0, "the SIGKILL left a full trash"

    new = ringmux_factory(cmd=RAW_CMD, args=ADMIN, start=False)
    new.base_dir = base
    new.stderr_path = base.parent / f"{base.name}.new.stderr.log"
    new.start()
    wait_until(lambda: not os.path.exists(dead_inst), 30.0, what=f"the next instance to remove {dead_inst}")
    assert new.metric("ringmux_stale_instances_removed_total") == 1
    wait_trash_empty(new.instance_dir, 30.0)
    assert new.metric("ringmux_trash_removed_entries_total") >= BIG_N
    assert new.metric("ringmux_cleanup_errors_total") == 0
    assert new.stop() == 0


@pytest.mark.timeout(60)
def test_worker_cpus_pin_the_data_plane(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--workers", "2", "--worker-cpus", "0"])
    workers = [tid for tid, comm in proc_threads(rm.pid).items() if comm.startswith("ringmux-w")]
    assert len(workers) == 2
    assert {cpus_allowed(rm.pid, t) for t in workers} == {"0"}
    assert rm.info("k")["pid"] > 0
    assert rm.stop() == 0
    # `auto` with fewer than 3 CPUs leaves them unpinned (there is no CPU to
    # spare; the pacing protects the data plane instead).
    n = len(os.sched_getaffinity(0))
    rm = ringmux_factory(cmd=RAW_CMD, args=["--workers", "2"])
    allowed = {cpus_allowed(rm.pid, t) for t, c in proc_threads(rm.pid).items() if c.startswith("ringmux-w")}
    if n < 3:
        assert allowed == {cpus_allowed(rm.pid, rm.pid)}, allowed
    else:
        assert allowed != {cpus_allowed(rm.pid, rm.pid)}, allowed
    assert rm.stop() == 0


@pytest.mark.timeout(120)
def test_cleanup_threads_keep_to_the_cleanup_cpu_while_paced_and_spread_when_idle(ringmux_factory):
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, "this test needs two CPUs"
    last = str(cpus[-1])
    rm = ringmux_factory(cmd=RAW_CMD, args=[*ADMIN, *SLOW])
    control = [tid for tid, comm in proc_threads(rm.pid).items() if comm == "ringmux-control"]
    want = f"iou-wrk-{control[0]}"
    a = f"cpu-{uuid.uuid4().hex}"
    rm.info(a)
    _mkfiles(rm, a, BIG_N, BIG_DIRS)

    def places():
        return {cpus_allowed(rm.pid, t) for t, c in proc_threads(rm.pid).items() if c == want}

    with Bystander(rm):
        assert rm.close_key(a).text == "closed"
        wait_until(lambda: places() != set(), 10.0, what="a cleanup thread to exist")
        wait_until(lambda: places() == {last}, 5.0, what=f"cleanup threads on CPU {last} (now {places()})")
    wait_until(lambda: mode(rm) == "idle", 5.0, what="idle")
    # Idle: spread over every CPU (or gone already, having finished).
    wait_until(lambda: last not in places() or places() == set(), 5.0,
               what=f"cleanup threads unpinned (now {places()})")
    wait_trash_empty(rm.instance_dir, 30.0)
    assert rm.stop() == 0


@pytest.mark.parametrize("flags,needle", [
    (["--cleanup-floor", "0"], "--cleanup-rate and --cleanup-floor"),
    (["--cleanup-rate", "10", "--cleanup-floor", "20"], "--cleanup-rate and --cleanup-floor"),
    (["--worker-cpus", "x"], "--worker-cpus must be"),
    (["--cleanup-pace", "fast"], "adaptive"),
])
def test_bad_cleanup_flags_are_refused_clearly(tmp_path, flags, needle):
    p = subprocess.run([str(RINGMUX_BIN), "serve", "--base-dir", str(tmp_path), *flags, "--demo"],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert needle in p.stderr, p.stderr
