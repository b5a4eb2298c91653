"""Per-child limits (--child-pids-max, --child-cpu-max) enforced for real.

This machine mounts cgroup v1 beside v2 (hybrid): every controller is bound
to a v1 hierarchy, so v2 offers none. A v1 hierarchy that holds only its
root cgroup can be unmounted, which hands its controller to v2; this module
does that for `pids` and `cpu` for its duration and mounts them back on v1
afterwards, so the rest of the suite sees the machine as it was. `memory`
cannot be freed here (the sandbox's own process manager has cgroups in the
v1 memory hierarchy), so --child-memory-max and the `oom` exit cause are not
exercised on this machine (see README, "Containment").

Where even `pids` or `cpu` cannot be freed (their v1 hierarchy is busy:
held by something outside the test, as on the sandboxes since 2026-12-02),
the module skips with that reason and leaves the machine as it found it;
nothing here is faked. The refusal of a limit whose controller is missing is
tested in test_cgroups.py either way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import RINGMUX_BIN, wait_until
from test_cgroups import MOUNT, demo, escape_cmd, escapees, tag  # noqa: F401  (tag: the fixture)

V1 = "/sys/fs/cgroup"
FREED = ("pids", "cpu")


def v1_hierarchies() -> dict[str, tuple[int, int]]:
    """subsys -> (hierarchy id, number of cgroups) from /proc/cgroups."""
    out = {}
    with open("/proc/cgroups") as f:
        for line in f:
            if not line.startswith("#"):
                name, hier, num, _enabled = line.split()
                out[name] = (int(hier), int(num))
    return out


def v2_controllers(path: str = MOUNT) -> list[str]:
    with open(os.path.join(path, "cgroup.controllers")) as f:
        return f.read().split()


def remount_v1(controllers) -> None:
    """Mount v1 hierarchies back (the kernel releases a controller from v2
    asynchronously: retry)."""
    for c in controllers:
        for _ in range(100):
            if subprocess.run(["mount", "-t", "cgroup", "-o", c, "cgroup", os.path.join(V1, c)],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


def why_not_free(c: str) -> str | None:
    """Why the v1 hierarchy of `c` cannot be handed to cgroup v2, or None."""
    hier, num = v1_hierarchies()[c]
    if hier == 0:
        return None
    if num != 1:
        return (f"its v1 hierarchy holds {num} cgroups that a process outside this test "
                "created, so it cannot be unmounted")
    return ""


@pytest.fixture(scope="module", autouse=True)
def free_controllers():
    assert MOUNT is not None and os.geteuid() == 0, "needs cgroup v2 and root"
    unmounted = []
    for c in FREED:
        if c in v2_controllers():
            continue
        reason = why_not_free(c)
        if reason is None:
            pytest.fail(f"the {c} controller is on neither cgroup v1 nor v2 here")
        if not reason:
            um = subprocess.run(["umount", os.path.join(V1, c)], capture_output=True, text=True)
            if um.returncode == 0:
                unmounted.append(c)
                continue
            reason = (f"umount {os.path.join(V1, c)} says {um.stderr.strip()!r}: something outside "
                      "this test holds the hierarchy (no process visible here has it in its "
                      "fds, cwd or maps)")
        # Leave the machine as it was, then say plainly what could not run.
        remount_v1(unmounted)
        pytest.skip(f"cannot hand the {c} controller to cgroup v2 on this machine: {reason}. "
                    "--child-pids-max/--child-cpu-max enforcement is not exercised here; "
                    "that a limit without its controller is refused is tested in test_cgroups.py "
                    "(see README, Containment)")
    wait_until(lambda: all(c in v2_controllers() for c in FREED), 5,
               what="pids and cpu to appear on cgroup v2")
    before = set(os.listdir(MOUNT))
    yield
    # Give them back: no v2 cgroup may still use them (an instance a failed
    # test SIGKILLed leaves its cgroups for the next instance: remove them).
    for name in set(os.listdir(MOUNT)) - before:
        if os.path.isdir(os.path.join(MOUNT, name)):
            remove_cgroup_tree(os.path.join(MOUNT, name))
    with open(os.path.join(MOUNT, "cgroup.subtree_control"), "w") as f:
        f.write(" ".join(f"-{c}" for c in FREED))
    remount_v1(unmounted)
    assert not any(c in v2_controllers() for c in unmounted)


def remove_cgroup_tree(top: str) -> None:
    """Kill everything in `top` and remove it, deepest first."""
    try:
        with open(f"{top}/cgroup.kill", "w") as f:
            f.write("1")
    except OSError:
        pass
    deadline = time.monotonic() + 10
    while os.path.exists(top) and time.monotonic() < deadline:
        for d, _, _ in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
            try:
                os.rmdir(d)
            except OSError:
                pass
        time.sleep(0.05)
    assert not os.path.exists(top), f"could not remove the test's cgroup {top}"


def child_cgroups(rm) -> list[str]:
    own = read(f"/proc/{rm.pid}/cgroup").split("0::", 1)[1].split()[0]
    parent = os.path.dirname(own) if own.endswith(".supervisor") else own
    inst = os.path.join(MOUNT, parent.lstrip("/"), os.path.basename(rm.instance_dir))
    return [os.path.join(inst, d) for d in os.listdir(inst) if os.path.isdir(os.path.join(inst, d))]


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def kv(path: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in read(path).splitlines())}


def forker(tag: int, n: int, keep: int, report: str) -> list[str]:
    """A child that tries to start n sleepers, writes how many it got, keeps
    `keep` of them (so the demo child's own threads have room under the
    limit: threads count as pids), then becomes the demo child."""
    script = (
        "import os, signal\n"
        "pids = []\n"
        f"for i in range({n}):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"
        "        continue\n"
        "    if pid == 0:\n"
        f"        os.execvp('sleep', ['sleep', '{tag}1'])\n"
        "    pids.append(pid)\n"
        f"open({report!r}, 'w').write(str(len(pids)))\n"
        f"for pid in pids[{keep}:]:\n"
        "    os.kill(pid, signal.SIGKILL)\n"
        "    os.waitpid(pid, 0)\n"
        f"os.execv({str(RINGMUX_BIN)!r}, [{str(RINGMUX_BIN)!r}, 'demo-child'])\n"
    )
    return [sys.executable, "-c", script]


def service_cgroup(name: str) -> str:
    """A cgroup below the root with the pids controller offered to it, as a
    service manager's delegated cgroup is (removed by remove_cgroup_tree)."""
    svc = os.path.join(MOUNT, name)
    os.mkdir(svc)
    with open(os.path.join(MOUNT, "cgroup.subtree_control"), "w") as f:
        f.write("+pids")
    return svc


def assert_stop_left_nothing(svc: str, instance: str) -> None:
    assert not os.path.exists(f"{svc}/{instance}"), "a stopped instance left its cgroup"
    assert not os.path.exists(f"{svc}/{instance}.supervisor"), "a stopped instance left its leaf"
    assert read(f"{svc}/cgroup.subtree_control").split() == [], "a stop left controllers enabled"


def test_pids_max_caps_what_a_rollout_can_start(ringmux_factory, tmp_path, tag):
    report = str(tmp_path / "forked")
    rm = ringmux_factory(cmd=forker(tag, 20, 2, report),
                         args=["--cgroup", "required", "--child-pids-max", "16"])
    r = demo(rm, "pids-key")
    assert r.status_code == 200, r.text
    # The child itself is one of the 16: 15 sleepers, the other 5 forks refused.
    assert read(report) == "15"
    assert len(escapees(tag)) == 2
    [cg] = child_cgroups(rm)
    assert read(f"{cg}/pids.max").strip() == "16"
    assert kv(f"{cg}/pids.events")["max"] == 5
    assert rm.close_key("pids-key").text == "closed"
    assert escapees(tag) == [], "a sleeper outlived its rollout's close"
    assert not os.path.exists(cg)
    rm.stop()


def test_cpu_max_throttles_a_rollout(ringmux_factory, tag):
    spin = ["sh", "-c", f"timeout 3 sh -c 'while :; do :; done' & exec {RINGMUX_BIN} demo-child"]
    rm = ringmux_factory(cmd=spin, args=["--cgroup", "required", "--child-cpu-max", "0.1"])
    assert demo(rm, "cpu-key").status_code == 200
    [cg] = child_cgroups(rm)
    assert read(f"{cg}/cpu.max").split() == ["10000", "100000"]
    wait_until(lambda: kv(f"{cg}/cpu.stat")["nr_throttled"] >= 3, 10,
               what="the spinning child to be throttled")
    stat = kv(f"{cg}/cpu.stat")
    assert stat["throttled_usec"] > 0
    assert rm.close_key("cpu-key").text == "closed"
    assert not os.path.exists(cg)
    rm.stop()


def test_a_non_root_cgroup_moves_ringmux_into_a_leaf(ringmux_factory, tmp_path, tag):
    """cgroup v2 gives no controllers to the children of a cgroup that has
    processes in it: ringmux, started in a cgroup of its own (as a systemd
    service with Delegate=yes is), moves itself into `<instance>.supervisor`
    beside the instance's cgroup. After a SIGKILL the next instance starts in
    the same cgroup, whose controllers the dead one enabled (which makes the
    kernel refuse a move into a leaf): it removes the dead instance's cgroup
    and leaf, takes the controllers over and runs."""
    svc = service_cgroup(f"rmx-test-svc-{tag}")
    try:
        def start():
            rm = ringmux_factory(demo=True, args=["--cgroup", "required", "--child-pids-max", "7"],
                                 start=False)
            rm.wrap = ["sh", "-c", f'echo $$ > {svc}/cgroup.procs && exec "$@"', "sh"]
            return rm.start()

        first = start()
        own = read(f"/proc/{first.pid}/cgroup").split("0::", 1)[1].split()[0]
        name = os.path.basename(first.instance_dir)
        assert own == f"/rmx-test-svc-{tag}/{name}.supervisor", own
        assert "pids" in read(f"{svc}/cgroup.subtree_control").split()
        assert demo(first, "leaf-key").status_code == 200
        [cg] = child_cgroups(first)
        assert read(f"{cg}/pids.max").strip() == "7"
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        assert os.path.isdir(f"{svc}/{name}.supervisor")
        second = start()
        assert not os.path.exists(f"{svc}/{name}.supervisor")
        assert not os.path.exists(f"{svc}/{name}")
        assert demo(second, "leaf-key").status_code == 200
        [cg] = child_cgroups(second)
        assert read(f"{cg}/pids.max").strip() == "7"
        name2 = os.path.basename(second.instance_dir)
        second.stop()
        assert_stop_left_nothing(svc, name2)
    finally:
        remove_cgroup_tree(svc)


NS_LAUNCHER = r"""#!/bin/sh
# What a container runtime does, in miniature: put us in a cgroup of our own,
# give us a private cgroup namespace (that cgroup becomes our "/") and a
# private mount namespace whose only cgroup2 mount is a fresh one of that
# namespace, somewhere other than /sys/fs/cgroup.
cg=$1; mnt=$2; shift 2
echo $$ > "$cg/cgroup.procs" || exit 1
exec unshare --cgroup --mount --propagation private sh -c '
  mnt=$1; shift
  umount -l /sys/fs/cgroup/unified || exit 1
  mkdir -p "$mnt" && mount -t cgroup2 cgroup2 "$mnt" || exit 1
  exec "$@"' sh "$mnt" "$@"
"""


def test_a_container_like_cgroup_namespace_is_contained_and_limited(ringmux_factory, tmp_path, tag):
    """As in a container with a writable cgroup2 mount: ringmux sees its
    cgroup as "/" and the hierarchy mounted at a path of the test's choosing.
    It must find both, move itself into a leaf (the namespace's root is not
    the real root: the no-internal-processes rule applies), apply the limit,
    and kill what a rollout left at its close."""
    svc = service_cgroup(f"rmx-test-ns-{tag}")
    launcher = tmp_path / "ns-launch.sh"
    launcher.write_text(NS_LAUNCHER)
    launcher.chmod(0o755)
    inner = str(tmp_path / "cg2")
    try:
        rm = ringmux_factory(cmd=escape_cmd(tag, f"{RINGMUX_BIN} demo-child"),
                             args=["--cgroup", "required", "--child-pids-max", "32"], start=False)
        rm.wrap = [str(launcher), svc, inner]
        rm.start()
        name = os.path.basename(rm.instance_dir)
        # Seen from the host: ringmux sits in the leaf beside its instance cgroup.
        own = read(f"/proc/{rm.pid}/cgroup").split("0::", 1)[1].split()[0]
        assert own == f"/rmx-test-ns-{tag}/{name}.supervisor", own
        assert inner in rm.stderr_text(100000), "the start-up log does not say which cgroup2 mount it uses"
        assert demo(rm, "ns-key").status_code == 200
        wait_until(lambda: len(escapees(tag)) == 3, 10, what="the child's escapees")
        kids = [d for d in os.listdir(f"{svc}/{name}") if os.path.isdir(f"{svc}/{name}/{d}")]
        assert len(kids) == 1, kids
        assert read(f"{svc}/{name}/{kids[0]}/pids.max").strip() == "32"
        assert rm.close_key("ns-key").text == "closed"
        assert escapees(tag) == [], "a process outlived its rollout's close"
        assert not os.path.exists(f"{svc}/{name}/{kids[0]}")
        rm.stop()
        assert_stop_left_nothing(svc, name)
    finally:
        remove_cgroup_tree(svc)
