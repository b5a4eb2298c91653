"""Fork mode (`ringmux serve --fork`): a warm fork server forks one child per
rollout. Real binary, real sockets, the official MCP SDK against the
ringmux_fork helper, and the demo's fork server; every test ends with
`stop()`, which asserts that no process, zombie or directory is left."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest

from conftest import (
    EXIT_WAIT_POLLED,
    CHILDREN, PY, child_dirs, children_of, pid_alive, procs_with_cwd_under, wait_trash_empty,
    wait_until,
)
from mcp_helpers import mcp_session, tool_json

FORK_CHILD = [
    PY, "-m", "ringmux_fork", "fork_child:app", "--app-dir", str(CHILDREN),
    "--setup", "fork_child:setup", "--setup-task", "fork_child:setup_task",
]
BAD = [PY, str(CHILDREN / "bad_fork_server.py")]
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def rpc(method, params=None, id_=1):
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params or {}}


def demo_tool(rm, key, name, args=None, extra="", client=None):
    """Calls a demo tool with a bare JSON-RPC POST; returns (status, result)."""
    body = rpc("tools/call", {"name": name, "arguments": args or {}})
    url = rm.path_url("/mcp", key, extra)
    if client is None:
        with rm.client() as c:
            r = c.post(url, json=body, headers=ACCEPT)
    else:
        r = client.post(url, json=body, headers=ACCEPT)
    if r.status_code != 200:
        return r.status_code, r.text
    res = r.json()["result"]
    return 200, res.get("structuredContent") or res["content"][0]["text"]


def comm(pid) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def pooled_pids(rm) -> list[int]:
    """Pre-forked children of the ringmux_fork helper waiting for a rollout."""
    return [p for p in children_of(rm.pid) if comm(p) == "rmx-pooled"]


def in_background(rm, key) -> tuple[threading.Thread, dict]:
    """A first request for `key` on a thread; its response lands in the dict."""
    got = {}

    def run():
        got["r"] = rm.post("/mcp", key, json=rpc("tools/list"), headers=ACCEPT)

    t = threading.Thread(target=run)
    t.start()
    return t, got


def fork_server_pid(rm) -> int | None:
    """The child of ringmux whose cwd is the fork server's directory (and
    that is not a pre-forked child, which starts there too)."""
    want = os.path.join(rm.instance_dir, "_forkserver")
    for p in children_of(rm.pid):
        try:
            if os.readlink(f"/proc/{p}/cwd") == want and comm(p) != "rmx-pooled":
                return p
        except OSError:
            pass
    return None


def wait_fork_server(rm, other_than=None, timeout=20.0) -> int:
    got = {}

    def ok():
        p = fork_server_pid(rm)
        if p and p != other_than:
            got["pid"] = p
            return True
        return False

    wait_until(ok, timeout, what="the fork server")
    return got["pid"]


async def _sdk_call(url, tool, args):
    async with mcp_session(url) as s:
        return tool_json(await s.call_tool(tool, args))


def sdk_call(rm, key, tool, args=None, extra=""):
    return anyio.run(_sdk_call, rm.path_url("/mcp", key, extra), tool, args or {})


# --------------------------------------------------------------------------
# the ringmux_fork helper with an official-SDK MCPServer
# --------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_sdk_server_isolation_hook_and_warm_state(ringmux_factory):
    rm = ringmux_factory(cmd=FORK_CHILD, args=["--fork", "--workers", "2"])
    keys = [f"iso-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    urls = {k: f"vf_state_url=http%3A%2F%2Ftask%2F{k}" for k in keys}

    # Two rollouts at once: module global + relative file, sleep, read back.
    results = {}

    def run(k):
        results[k] = sdk_call(rm, k, "global_and_file", {"value": f"val-{k}", "sleep_ms": 600},
                              extra=urls[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for k in keys:
        assert results[k] == {"global": f"val-{k}", "file": f"val-{k}"}, results
        assert open(os.path.join(rm.child_dir(k), "state.txt")).read() == f"val-{k}"

    zygote = fork_server_pid(rm)
    assert zygote, "no fork server among ringmux's children"
    who = {k: sdk_call(rm, k, "whoami") for k in keys}
    for k in keys:
        w = who[k]
        assert w["ppid"] == rm.pid, "a forked child must be a child of ringmux (CLONE_PARENT)"
        assert w["imported_by"] == zygote != w["pid"], "the module was imported once, by the fork server"
        assert w["setup"]["setup_pid"] == zygote, "setup() ran once, in the fork server"
        assert w["setup"]["task_pid"] == w["pid"], "setup_task ran in the child"
        assert w["setup"]["query"].endswith(urls[k]) and k in w["setup"]["query"], w
        assert w["cwd"] == rm.child_dir(k)
    assert who[keys[0]]["pid"] != who[keys[1]]["pid"]

    # Warm state: visible to every child; one child's change stays its own.
    a, b = keys
    assert sdk_call(rm, a, "warm_get")["marker"] == "warm"
    assert sdk_call(rm, a, "warm_set", {"key": "marker", "value": "changed-by-a"}) == "ok"
    assert sdk_call(rm, a, "warm_get")["marker"] == "changed-by-a"
    assert sdk_call(rm, b, "warm_get")["marker"] == "warm"
    later = f"later-{uuid.uuid4().hex[:6]}"
    assert sdk_call(rm, later, "warm_get") == {"owner": zygote, "marker": "warm", "setup_ran": True}
    assert rm.close_key(a).text == "closed"
    assert sdk_call(rm, a, "warm_get")["marker"] == "warm", "a new child for a closed key starts warm"
    assert rm.zombies() == []
    rm.stop()


@pytest.mark.timeout(60)
def test_setup_task_failure_is_502_logged_without_the_key_and_retried(ringmux_factory):
    rm = ringmux_factory(cmd=FORK_CHILD, args=["--fork"])
    key = f"hook-{uuid.uuid4().hex}"
    r = rm.post("/mcp", key, "fail_setup=1", json=rpc("tools/list"), headers=ACCEPT)
    assert r.status_code == 502, (r.status_code, r.text)
    wait_until(lambda: "per-rollout setup failed" in rm.stderr_text(), 10,
               what="the hook's error in ringmux's log")
    log = rm.stderr_text(200_000)
    assert "setup_task refused this rollout" in log, log[-3000:]
    assert key not in log, "the rollout key leaked into the log"
    # The next request for the key tries again (and this time the hook passes).
    assert sdk_call(rm, key, "whoami")["setup"]["query"].startswith("vf_state_secret=")
    rm.stop()


@pytest.mark.timeout(60)
def test_threads_in_the_fork_server_are_refused_with_a_clear_error(ringmux_factory):
    cmd = [PY, "-m", "ringmux_fork", "threaded_app:app", "--app-dir", str(CHILDREN)]
    rm = ringmux_factory(cmd=cmd, args=["--fork"])
    r = rm.post("/mcp", "t1", json=rpc("tools/list"), headers=ACCEPT)
    assert r.status_code in (502, 503), (r.status_code, r.text)
    wait_until(lambda: "single-threaded" in rm.stderr_text(), 10, what="the threads error")
    assert "import-time-worker" in rm.stderr_text(200_000)
    rm.stop()


def test_helper_outside_ringmux_says_what_it_is():
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGMUX_")}
    p = subprocess.run([PY, "-m", "ringmux_fork", "fork_child:app"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "ringmux serve --fork" in p.stderr, p.stderr


# --------------------------------------------------------------------------
# the demo's fork server: failures, reaping, churn
# --------------------------------------------------------------------------
def test_demo_fork_mode_hook_sees_its_query(ringmux_factory):
    rm = ringmux_factory(demo=True, args=["--fork"])
    st, who = demo_tool(rm, "dq", "whoami", extra="vf_state_url=http://t/1")
    assert st == 200, who
    assert who["setup_query"] == "vf_state_secret=dq&vf_state_url=http://t/1"
    assert who["ppid"] == rm.pid and who["fork_server_pid"] == fork_server_pid(rm)
    assert demo_tool(rm, "dq", "scratch_read")[1].startswith("warm:")
    rm.stop()


# RINGMUX_EXIT_WAIT=poll: the exits of the fork server and of forked children
# seen as a kernel before 6.7 sees them (POLL_ADD on the pidfd).
EXIT_WAITS = pytest.mark.parametrize("exit_wait", ["waitid", "poll"])


@pytest.mark.timeout(60)
@EXIT_WAITS
def test_fork_server_crash_is_restarted_and_live_children_keep_serving(ringmux_factory, exit_wait):
    rm = ringmux_factory(
        demo=True, args=["--fork", "--admin", "127.0.0.1:0"], env={"RINGMUX_EXIT_WAIT": exit_wait}
    )
    first = wait_fork_server(rm)
    assert demo_tool(rm, "live", "scratch_write", {"value": "kept"})[0] == 200
    child = demo_tool(rm, "live", "whoami")[1]["pid"]
    os.kill(first, signal.SIGKILL)
    second = wait_fork_server(rm, other_than=first)
    assert second != first and pid_alive(child)
    assert demo_tool(rm, "live", "scratch_read") == (200, "kept"), "a live child kept serving"
    st, who = demo_tool(rm, "after", "whoami")
    assert st == 200 and who["fork_server_pid"] == second
    assert rm.metric("ringmux_fork_server_starts_total") == 2
    assert rm.metric("ringmux_fork_server_exits_total") == 1
    assert rm.metric("ringmux_fork_server_ready") == 1
    assert "fork server died" in rm.stderr_text(100_000)
    assert rm.zombies() == []
    assert (EXIT_WAIT_POLLED in rm.stderr_text(10**7)) == (exit_wait == "poll")
    rm.stop()


@pytest.mark.timeout(60)
@EXIT_WAITS
def test_forked_child_crash_is_reaped_and_the_key_starts_afresh(ringmux_factory, exit_wait):
    rm = ringmux_factory(
        demo=True, args=["--fork", "--admin", "127.0.0.1:0"], env={"RINGMUX_EXIT_WAIT": exit_wait}
    )
    pid = demo_tool(rm, "crash", "whoami")[1]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(rm.child_dir("crash")), 10, what="the crashed child's dir to go")
    assert rm.zombies() == [] and not pid_alive(pid)
    assert rm.metric("ringmux_child_exits_total", cause="crashed") == 1
    st, who = demo_tool(rm, "crash", "whoami")
    assert st == 200 and who["pid"] != pid
    assert (EXIT_WAIT_POLLED in rm.stderr_text(10**7)) == (exit_wait == "poll")
    assert rm.stop() == 0


@pytest.mark.timeout(60)
def test_sigkill_of_ringmux_takes_the_fork_server_and_every_child(ringmux_factory):
    rm = ringmux_factory(demo=True, args=["--fork"])
    pids = [demo_tool(rm, f"k{i}", "whoami")[1]["pid"] for i in range(3)]
    zygote = fork_server_pid(rm)
    assert zygote and all(pid_alive(p) for p in pids)
    rm.proc.send_signal(signal.SIGKILL)
    rm.proc.wait(10)
    wait_until(lambda: not any(pid_alive(p) for p in [*pids, zygote]), 10,
               what="the fork server and its children to die with ringmux")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode,statuses,log", [
    ("garbage", {503}, "broke the protocol"),
    ("fatal", {503}, "no module named my_tools"),
    ("never_ready", {503, 504}, "did not report ready in time"),
    ("os_fork", {502}, "not a child of ringmux"),
    ("die_on_spawn", {502}, "fork server died"),
    ("silent", {504}, "did not answer a spawn request in time"),
])
def test_a_broken_fork_server_gets_clear_errors_and_is_restarted(ringmux_factory, tmp_path, mode, statuses, log):
    starts = tmp_path / "starts"
    rm = ringmux_factory(
        cmd=[*BAD, mode],
        args=["--fork", "--fork-server-timeout", "1s", "--fork-timeout", "1s", "--ready-timeout", "3s"],
        env={"BAD_FORK_SERVER_PIDS": str(starts)},
    )
    if mode not in ("never_ready",):
        time.sleep(0.3)
    t0 = time.monotonic()
    r = rm.post("/mcp", f"bad-{mode}", json=rpc("tools/list"), headers=ACCEPT)
    took = time.monotonic() - t0
    assert r.status_code in statuses, (mode, r.status_code, r.text)
    assert took < 5, f"{mode}: the client waited {took:.1f} s"
    wait_until(lambda: log in rm.stderr_text(100_000), 10, what=f"{log!r} in the log")
    # It is restarted with backoff (several starts, not a busy loop).
    wait_until(lambda: starts.exists() and len(starts.read_text().split()) >= 2, 15,
               what="a restart")
    assert len(starts.read_text().split()) < 40, "restarts must back off"
    # Other keys are unaffected by the broken server beyond 5xx; ringmux lives.
    assert rm.alive()
    # A fork server killed a moment ago is a zombie until the control loop
    # has seen its exit and killed its group (then it is reaped): allow that
    # moment, never more.
    wait_until(lambda: rm.zombies() == [], 2, what=f"no zombies (now {rm.zombies()})")
    rm.stop()


@pytest.mark.timeout(180)
def test_churn_200_rollouts_10_percent_crashing_leaves_nothing(ringmux_factory):
    rm = ringmux_factory(demo=True, args=["--fork", "--workers", "2"])
    run = uuid.uuid4().hex[:6]
    # warm up once so the baseline fd count includes steady-state fds
    assert demo_tool(rm, f"warm-{run}", "whoami")[0] == 200
    rm.close_key(f"warm-{run}")
    time.sleep(0.3)
    fd0 = rm.fd_count()
    local = threading.local()
    clients = []

    def one(i):
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
            clients.append(c)
        key = f"churn-{run}-{i}"
        st, who = demo_tool(rm, key, "whoami", client=c)
        assert st == 200, (key, st, who)
        assert demo_tool(rm, key, "scratch_write", {"value": key}, client=c) == (200, "stored")
        assert demo_tool(rm, key, "scratch_read", client=c) == (200, key)
        if i % 10 == 3:
            os.kill(who["pid"], signal.SIGKILL)
            d = rm.child_dir(key)
            wait_until(lambda: not pid_alive(who["pid"]) and not os.path.exists(d), 10,
                       what="the crashed child to be reaped")
        r = c.post(rm.path_url("/vf/close", key))
        assert (r.status_code, r.text) == (200, "closed")
        assert not pid_alive(who["pid"])
        return who["pid"]

    with ThreadPoolExecutor(20) as ex:
        pids = list(ex.map(one, range(200)))
    for c in clients:
        c.close()
    assert len(set(pids)) == 200
    zygote = fork_server_pid(rm)
    assert [p for p in children_of(rm.pid) if p != zygote] == []
    assert rm.zombies() == []
    assert child_dirs(rm.instance_dir) == ["_forkserver"]
    wait_trash_empty(rm.instance_dir)
    assert [p for p in procs_with_cwd_under(rm.instance_dir) if p != zygote] == []
    wait_until(lambda: rm.fd_count() <= fd0, 5, what=f"fd count back to {fd0} (now {rm.fd_count()})")
    rm.stop()


@pytest.mark.timeout(60)
def test_close_while_the_fork_server_has_not_answered_waits_then_cleans(ringmux_factory):
    """A close for a key whose spawn is still with the fork server is answered
    once that spawn has ended (here: the fork server never answers, so at
    --fork-timeout), and its directory is gone by then."""
    rm = ringmux_factory(cmd=[*BAD, "silent"], args=["--fork", "--fork-timeout", "1s"])
    time.sleep(0.3)
    t, got = in_background(rm, "pending")
    time.sleep(0.2)
    t0 = time.monotonic()
    assert rm.close_key("pending").text == "closed"
    assert 0.3 < time.monotonic() - t0 < 5
    t.join(10)
    assert got["r"].status_code == 504
    assert not os.path.exists(rm.child_dir("pending"))
    rm.stop()


@pytest.mark.timeout(60)
def test_sigterm_with_a_spawn_in_flight_answers_and_leaves_nothing(ringmux_factory):
    rm = ringmux_factory(cmd=[*BAD, "silent"], args=["--fork", "--fork-timeout", "30s"])
    time.sleep(0.3)
    t, got = in_background(rm, "inflight")
    wait_until(lambda: os.path.exists(rm.child_dir("inflight")), 5, what="the spawn to be asked for")
    rm.stop()  # asserts exit 0, no process, no directory
    t.join(10)
    assert got["r"].status_code == 503, got["r"].text


@pytest.mark.timeout(60)
def test_max_children_counts_spawns_the_fork_server_has_not_answered(ringmux_factory):
    rm = ringmux_factory(cmd=[*BAD, "silent"], args=["--fork", "--fork-timeout", "3s", "--max-children", "1"])
    time.sleep(0.3)
    t, got = in_background(rm, "one")
    wait_until(lambda: os.path.exists(rm.child_dir("one")), 5, what="the first spawn to be asked for")
    r = rm.post("/mcp", "two", json=rpc("tools/list"), headers=ACCEPT)
    assert r.status_code == 503 and "capacity" in r.text, (r.status_code, r.text)
    t.join(10)
    rm.stop()


@pytest.mark.timeout(60)
def test_a_pooled_child_that_dies_is_reaped_and_replaced(ringmux_factory):
    """The helper keeps --pool N children pre-forked (children of ringmux);
    one that dies before it is handed a rollout is handed back to ringmux
    (`orphan`) and reaped, never a zombie, and the pool is refilled."""
    rm = ringmux_factory(cmd=[*FORK_CHILD, "--pool", "2"], args=["--fork", "--admin", "127.0.0.1:0"])
    wait_until(lambda: len(pooled_pids(rm)) == 2, 20, what="two pre-forked children")
    victim = pooled_pids(rm)[0]
    os.kill(victim, signal.SIGKILL)
    rm.wait_metric("ringmux_orphans_reaped_total", lambda v: v >= 1, timeout=10)
    wait_until(lambda: not pid_alive(victim) and victim not in children_of(rm.pid, zombies=True), 10,
               what="the dead pooled child to be reaped")
    wait_until(lambda: len(pooled_pids(rm)) == 2, 10, what="the pool to be refilled")
    assert rm.zombies() == []
    # A rollout takes a pooled child: its pid was in the pool a moment ago.
    before = set(pooled_pids(rm))
    who = sdk_call(rm, "pooled", "whoami")
    assert who["pid"] in before and who["ppid"] == rm.pid and who["cwd"] == rm.child_dir("pooled")
    assert comm(who["pid"]) != "rmx-pooled"
    rm.stop()


# --------------------------------------------------------------------------
# the same failures with the Python helper (official SDK server, pool of 2)
# --------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_sdk_fork_server_crash_restart_and_sigkill_of_ringmux(ringmux_factory):
    rm = ringmux_factory(cmd=FORK_CHILD, args=["--fork", "--admin", "127.0.0.1:0"])
    first = wait_fork_server(rm)
    assert sdk_call(rm, "live", "warm_set", {"key": "marker", "value": "mine"}) == "ok"
    child = sdk_call(rm, "live", "whoami")["pid"]
    wait_until(lambda: len(pooled_pids(rm)) == 2, 20, what="the pool")
    pool_before = pooled_pids(rm)
    os.kill(first, signal.SIGKILL)
    second = wait_fork_server(rm, other_than=first)
    # The dead fork server's pooled children were reaped, the live rollout serves on.
    wait_until(lambda: not any(p in children_of(rm.pid) for p in pool_before), 10,
               what="the old pool to be gone")
    assert pid_alive(child) and sdk_call(rm, "live", "warm_get")["marker"] == "mine"
    who = sdk_call(rm, "after", "whoami")
    assert who["imported_by"] == second
    assert rm.zombies() == []
    wait_until(lambda: len(pooled_pids(rm)) == 2, 20, what="the new pool")
    everyone = [child, who["pid"], second, *pooled_pids(rm)]
    rm.proc.send_signal(signal.SIGKILL)
    rm.proc.wait(10)
    wait_until(lambda: not any(pid_alive(p) for p in everyone), 10,
               what="the fork server, its pool and every child to die with ringmux")


@pytest.mark.timeout(240)
def test_sdk_churn_200_rollouts_10_percent_crashing_leaves_nothing(ringmux_factory):
    rm = ringmux_factory(cmd=FORK_CHILD, args=["--fork", "--workers", "2"])
    run = uuid.uuid4().hex[:6]
    sdk_call(rm, f"warm-{run}", "whoami")
    rm.close_key(f"warm-{run}")
    time.sleep(0.5)
    fd0 = rm.fd_count()

    async def rollout(i, limit):
        key = f"sdk-churn-{run}-{i}"
        async with limit:
            async with mcp_session(rm.path_url("/mcp", key)) as s:
                pid = tool_json(await s.call_tool("whoami", {}))["pid"]
                got = tool_json(await s.call_tool("global_and_file", {"value": key, "sleep_ms": 1}))
                assert got == {"global": key, "file": key}
                if i % 10 == 3:
                    os.kill(pid, signal.SIGKILL)
            async with httpx.AsyncClient(timeout=30) as c:
                r = await c.post(rm.path_url("/vf/close", key))
            assert (r.status_code, r.text) == (200, "closed")
            assert not pid_alive(pid)
            return pid

    async def all_of_them():
        limit = anyio.Semaphore(10)
        out = []

        async def one(i):
            out.append(await rollout(i, limit))

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        return out

    pids = anyio.run(all_of_them)
    assert len(set(pids)) == 200
    zygote = fork_server_pid(rm)
    left = [p for p in children_of(rm.pid) if p != zygote and p not in pooled_pids(rm)]
    assert left == [], f"rollout children left: {left}"
    assert rm.zombies() == []
    assert child_dirs(rm.instance_dir) == ["_forkserver"]
    wait_trash_empty(rm.instance_dir)
    wait_until(lambda: rm.fd_count() <= fd0, 5, what=f"fd count back to {fd0} (now {rm.fd_count()})")
    rm.stop()


@pytest.mark.timeout(60)
def test_an_unreported_dead_child_of_ringmux_is_reaped(ringmux_factory):
    """A fork server that forks a child of ringmux and never reports it (here
    the child exits at once): ringmux's once-a-second sweep reaps the zombie."""
    rm = ringmux_factory(cmd=[*BAD, "leak"], args=["--fork", "--admin", "127.0.0.1:0"])
    time.sleep(0.3)
    r = rm.post("/mcp", "lost", json=rpc("tools/list"), headers=ACCEPT)
    assert r.status_code == 502 and "lost the child on purpose" in r.text, r.text
    rm.wait_metric("ringmux_orphans_reaped_total", lambda v: v >= 1, timeout=5)
    assert rm.zombies() == []
    rm.stop()
