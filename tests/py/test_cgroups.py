"""One cgroup per rollout (--cgroup): whatever a child starts — a setsid
daemon, a double fork, a setsid shell waiting on its own child — dies with
the rollout on close, crash, ready timeout and shutdown, and a SIGKILLed
instance's leftovers are killed by the next instance. Real binary, real
processes, the real cgroup v2 hierarchy of this machine."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from conftest import PY, RINGMUX_BIN, pid_alive, wait_until


def cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[:1] == ["cgroup2"]:
                return pre.split()[4]
    return None


MOUNT = cgroup2_mount()


@pytest.fixture(autouse=True)
def needs_cgroup2():
    # Not a skip: this suite's machines (and CI) have cgroup v2 and root.
    assert MOUNT is not None and os.geteuid() == 0, (
        "these tests need a cgroup v2 hierarchy that ringmux may write to (root)"
    )


def escape_cmd(tag: int, then: str) -> list[str]:
    """A child that starts three processes that leave its process group."""
    return ["sh", "-c",
            f"setsid sleep {tag}1 & (sleep {tag}2 &); setsid sh -c 'sleep {tag}3; :' & exec {then}"]


def escapees(tag: int) -> list[int]:
    want = {f"sleep\0{tag}{i}\0".encode() for i in (1, 2, 3)}
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if f.read() in want and pid_alive(int(name)):
                        out.append(int(name))
            except OSError:
                pass
    return out


def instance_cgroup(rm) -> str:
    own = open("/proc/self/cgroup").read().split("0::", 1)[1].split()[0]
    return os.path.join(MOUNT, own.lstrip("/"), os.path.basename(rm.instance_dir))


def new_tag() -> int:
    return random.randint(10_000, 99_999)


def demo(rm, key, tool="whoami"):
    with rm.client() as c:
        r = c.post(rm.path_url("/mcp", key), json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                   "params": {"name": tool, "arguments": {}}})
    return r


@pytest.fixture
def tag():
    t = new_tag()
    yield t
    for p in escapees(t):  # never leave a sleep behind, whatever failed
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def test_close_kills_everything_the_rollout_started(ringmux_factory, tag):
    rm = ringmux_factory(cmd=escape_cmd(tag, f"{RINGMUX_BIN} demo-child"),
                         args=["--cgroup", "required", "--admin", "127.0.0.1:0"])
    assert demo(rm, "k").status_code == 200
    wait_until(lambda: len(escapees(tag)) == 3, 5, what="the three escaping processes")
    cg = instance_cgroup(rm)
    kids = [d for d in os.listdir(cg) if os.path.isdir(os.path.join(cg, d))]
    assert len(kids) == 1 and kids[0].startswith(os.path.basename(rm.child_dir("k")))
    assert rm.metric("ringmux_live_cgroups") == 1
    assert rm.close_key("k").text == "closed"
    assert escapees(tag) == [], "a process the rollout started outlived its close"
    assert not os.path.exists(os.path.join(cg, kids[0])), "the child's cgroup is left"
    assert rm.metric("ringmux_live_cgroups") == 0
    rm.stop()
    assert not os.path.exists(cg), "the instance cgroup is left after shutdown"


def test_a_crash_kills_what_the_child_left(ringmux_factory, tag):
    rm = ringmux_factory(cmd=escape_cmd(tag, f"{RINGMUX_BIN} demo-child"), args=["--cgroup", "required"])
    pid = demo(rm, "c").json()["result"]["structuredContent"]["pid"]
    wait_until(lambda: len(escapees(tag)) == 3, 5, what="the escaping processes")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: escapees(tag) == [] and not os.path.exists(rm.child_dir("c")), 10,
               what="the crashed rollout's processes and directory to go")
    assert rm.zombies() == []
    rm.stop()


def test_a_ready_timeout_kills_everything(ringmux_factory, tag):
    rm = ringmux_factory(cmd=escape_cmd(tag, "sleep 1000"), args=["--cgroup", "required", "--ready-timeout", "1s"])
    r = demo(rm, "t")
    assert r.status_code == 504, r.text
    wait_until(lambda: escapees(tag) == [], 10, what="the timed-out rollout's processes to die")
    rm.stop()


def test_sigterm_kills_everything_and_removes_every_cgroup(ringmux_factory, tag):
    rm = ringmux_factory(cmd=escape_cmd(tag, f"{RINGMUX_BIN} demo-child"), args=["--cgroup", "required"])
    for k in ("a", "b"):
        assert demo(rm, k).status_code == 200
    wait_until(lambda: len(escapees(tag)) == 6, 5, what="six escaping processes")
    cg = instance_cgroup(rm)
    rm.stop()
    assert escapees(tag) == []
    assert not os.path.exists(cg)


def test_sigkill_then_restart_leaves_nothing(ringmux_factory, tmp_path, tag):
    rm = ringmux_factory(cmd=escape_cmd(tag, f"{RINGMUX_BIN} demo-child"), args=["--cgroup", "required"])
    assert demo(rm, "k").status_code == 200
    wait_until(lambda: len(escapees(tag)) == 3, 5, what="the escaping processes")
    cg = instance_cgroup(rm)
    rm.proc.send_signal(signal.SIGKILL)
    rm.proc.wait(10)
    time.sleep(0.3)
    # PDEATHSIG takes the child; what left its process group survives ringmux...
    assert len(escapees(tag)) >= 2 and os.path.exists(cg)
    # ...until the next instance, which kills it and removes the cgroup.
    nxt = ringmux_factory(demo=True, args=["--cgroup", "required"])
    wait_until(lambda: escapees(tag) == [] and not os.path.exists(cg), 10,
               what="the next instance to clean up the dead one's cgroup")
    assert "cgroup of a dead ringmux instance" in nxt.stderr_text()
    nxt.stop()


def test_a_live_instances_cgroup_is_never_touched(ringmux_factory, tag):
    a = ringmux_factory(cmd=escape_cmd(tag, f"{RINGMUX_BIN} demo-child"), args=["--cgroup", "required"])
    assert demo(a, "k").status_code == 200
    wait_until(lambda: len(escapees(tag)) == 3, 5, what="the escaping processes")
    b = ringmux_factory(demo=True, args=["--cgroup", "required"])
    time.sleep(0.5)
    assert len(escapees(tag)) == 3, "another instance killed a live instance's rollout"
    assert demo(a, "k").status_code == 200
    b.stop()
    a.stop()


def test_cgroup_off_falls_back_to_process_groups(ringmux_factory, tag):
    """What the fallback does not cover: processes that leave the group."""
    rm = ringmux_factory(cmd=escape_cmd(tag, f"{RINGMUX_BIN} demo-child"), args=["--cgroup", "off"])
    assert demo(rm, "k").status_code == 200
    wait_until(lambda: len(escapees(tag)) == 3, 5, what="the escaping processes")
    assert rm.close_key("k").text == "closed"
    time.sleep(0.2)
    assert len(escapees(tag)) >= 2, "expected the setsid processes to escape without cgroups"
    assert "--cgroup off" in rm.stderr_text()
    for p in escapees(tag):
        os.kill(p, signal.SIGKILL)
    wait_until(lambda: escapees(tag) == [], 5, what="the escaped sleeps to be killed by the test")
    rm.stop()


def proc_cgroup(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read().split("0::", 1)[1].split()[0]


@pytest.mark.parametrize("pool", ["0", "2"])
def test_forked_children_are_contained_too(ringmux_factory, tag, pool):
    """Fork mode with the Python helper, forking at hand-over (born in the
    cgroup, CLONE_INTO_CGROUP) and from the pool (moved in at hand-over)."""
    import anyio

    from conftest import CHILDREN, PY
    from mcp_helpers import mcp_session, tool_json, tool_text

    cmd = [PY, "-m", "ringmux_fork", "fork_child:app", "--app-dir", str(CHILDREN), "--pool", pool]
    rm = ringmux_factory(cmd=cmd, args=["--fork", "--cgroup", "required"])

    async def go():
        async with mcp_session(rm.path_url("/mcp", "f")) as s:
            who = tool_json(await s.call_tool("whoami", {}))
            assert tool_text(await s.call_tool("start_detached", {"tag": tag})) == "started"
            return who["pid"]

    pid = anyio.run(go)
    mine = proc_cgroup(pid)
    assert mine.endswith("/" + os.path.basename(rm.child_dir("f")) + "-" + mine.rsplit("-", 1)[1])
    assert os.path.basename(rm.instance_dir) in mine
    wait_until(lambda: len(escapees(tag)) == 2, 5, what="the detached processes")
    assert all(proc_cgroup(p) == mine for p in escapees(tag))
    assert rm.close_key("f").text == "closed"
    assert escapees(tag) == [], "a forked rollout's detached process outlived its close"
    rm.stop()


def test_the_demo_fork_servers_children_are_born_in_their_cgroup(ringmux_factory):
    rm = ringmux_factory(demo=True, args=["--fork", "--cgroup", "required"])
    pid = demo(rm, "d").json()["result"]["structuredContent"]["pid"]
    assert os.path.basename(rm.child_dir("d")) in proc_cgroup(pid)
    rm.stop()


def test_closed_rollouts_cpu_is_accounted(ringmux_factory):
    """ringmux_rollout_cpu_seconds: the CPU of everything a rollout ran (here
    a busy loop beside the server), read from its cgroup's cpu.stat. The loop
    runs until it has used 0.5 s of CPU (not of wall time: on a loaded
    machine a wall-clock loop gets less), and the close waits for it."""
    tag = f"burn-{random.getrandbits(40)}"
    burn = f'{PY} -c "import time\nwhile time.process_time() < 0.5: pass" {tag} &'
    rm = ringmux_factory(cmd=["sh", "-c", f"{burn} exec {RINGMUX_BIN} demo-child"],
                         args=["--cgroup", "required", "--admin", "127.0.0.1:0"])
    assert demo(rm, "busy").status_code == 200

    def burning():
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    # The loop itself (ringmux's own argv holds the tag too).
                    if f.read().split(b"\0")[-2:-1] == [tag.encode()]:
                        return True
            except OSError:
                pass
        return False

    wait_until(lambda: not burning(), 60, what="the busy loop to use its 0.5 s of CPU")
    assert rm.close_key("busy").text == "closed"
    assert rm.metric("ringmux_rollout_cpu_seconds_count") == 1
    assert 0.5 <= rm.metric("ringmux_rollout_cpu_seconds_sum") < 5
    rm.stop()


@pytest.mark.parametrize("flag,value,controller", [
    ("--child-memory-max", "512M", "memory"),
    ("--child-pids-max", "64", "pids"),
    ("--child-cpu-max", "0.5", "cpu"),
])
def test_a_limit_whose_controller_is_missing_is_refused(tmp_path, flag, value, controller):
    """This machine's cgroup v2 has no controllers (they are bound to v1):
    a limit ringmux cannot enforce is a clear error, not a silent no-op."""
    import subprocess

    with open(os.path.join(MOUNT, "cgroup.controllers")) as f:
        assert controller not in f.read().split(), "this test expects the controller to be missing"
    before = set(os.listdir(MOUNT))
    p = subprocess.run([str(RINGMUX_BIN), "serve", "--listen", "127.0.0.1:0", "--base-dir", str(tmp_path),
                        "--demo", flag, value], capture_output=True, text=True, timeout=20)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert f"{flag} needs the cgroup v2 {controller} controller" in p.stderr, p.stderr
    assert set(os.listdir(MOUNT)) - before == set(), "the refused instance left a cgroup"
    p = subprocess.run([str(RINGMUX_BIN), "serve", "--demo", "--cgroup", "off", flag, value],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 2 and "need cgroups" in p.stderr, (p.returncode, p.stderr)


def test_the_fork_servers_own_helpers_die_with_it(ringmux_factory, tag):
    """The fork server runs in a cgroup of its own: a daemon its setup
    started (setsid, out of its process group) dies when it stops."""
    from conftest import CHILDREN, PY

    cmd = [PY, "-m", "ringmux_fork", "fork_child:app", "--app-dir", str(CHILDREN),
           "--setup", "fork_child:setup"]
    rm = ringmux_factory(cmd=cmd, args=["--fork", "--cgroup", "required"],
                         env={"FORK_CHILD_SETUP_DAEMON": str(tag)})
    wait_until(lambda: len(escapees(tag)) == 1, 20, what="the fork server's daemon")
    assert "_forkserver-1" in proc_cgroup(escapees(tag)[0])
    rm.stop()
    assert escapees(tag) == [], "the fork server's daemon outlived ringmux's shutdown"
