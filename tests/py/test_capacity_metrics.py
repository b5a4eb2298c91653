"""The --admin metrics endpoint and --max-children."""

import os
import signal
import time
import uuid

import httpx

from conftest import RAW_CMD, pid_alive, raw_http, status_of, wait_until

ADMIN = ["--admin", "127.0.0.1:0"]

EXPECTED_PLAIN = [
    "ringmux_spawns_total",
    "ringmux_spawn_failures_total",
    "ringmux_at_capacity_total",
    "ringmux_stale_instances_removed_total",
    "ringmux_live_children",
    "ringmux_cleanups_in_flight",
    "ringmux_cleanup_errors_total",
    "ringmux_cleanup_entries_total",
    "ringmux_cleanup_duration_seconds_sum",
    "ringmux_cleanup_duration_seconds_count",
    "ringmux_cleanup_duration_max_seconds",
    "ringmux_control_loop_lag_max_seconds",
    "ringmux_trash_trees",
    "ringmux_trash_backlog_entries",
    "ringmux_trash_removed_entries_total",
    "ringmux_trash_drain_rate",
    "ringmux_trash_pace_rate",
    "ringmux_trash_over_cap_total",
    "ringmux_close_teardown_seconds_sum",
    "ringmux_close_teardown_seconds_count",
    'ringmux_trash_mode{mode="idle"}',
    'ringmux_trash_mode{mode="paced"}',
]
CAUSES = ["closed", "crashed", "ready_timeout", "shutdown"]
PER_WORKER = [
    "ringmux_requests_total",
    "ringmux_close_requests_total",
    "ringmux_requests_in_progress",
    "ringmux_proxy_errors_total",
    "ringmux_client_connections",
    "ringmux_worker_loop_lag_max_seconds",
    "ringmux_worker_loop_lag_recent_max_seconds",
    "ringmux_worker_allocations_total",
]


def _sum_workers(m, name):
    return sum(v for k, v in m.items() if k.startswith(name + '{worker="'))


def test_admin_line_and_every_series_present(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--workers", "2", *ADMIN])
    lines = rm.stdout_lines
    admin_idx = [i for i, l in enumerate(lines) if l.startswith("ringmux: metrics on http://")]
    listen_idx = [i for i, l in enumerate(lines) if l.startswith("ringmux: listening on ")]
    assert admin_idx and listen_idx and admin_idx[0] < listen_idx[0], lines
    assert rm.metrics_url and rm.metrics_url.startswith("http://127.0.0.1:")
    assert not rm.metrics_url.startswith(f"http://127.0.0.1:{rm.port}/"), "admin shares the proxy port"

    r = httpx.get(rm.metrics_url, timeout=5)
    assert r.status_code == 200
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    m = rm.metrics()
    missing = [n for n in EXPECTED_PLAIN if n not in m]
    missing += [f'ringmux_child_exits_total{{cause="{c}"}}' for c in CAUSES
                if f'ringmux_child_exits_total{{cause="{c}"}}' not in m]
    for w in (0, 1):
        missing += [f'{n}{{worker="{w}"}}' for n in PER_WORKER if f'{n}{{worker="{w}"}}' not in m]
    buckets = sorted(
        (float(k.split('le="')[1].rstrip('"}')), v)
        for k, v in m.items()
        if k.startswith("ringmux_cleanup_duration_seconds_bucket{")
    )
    assert buckets, "no cleanup histogram buckets"
    assert buckets[-1][0] == float("inf")
    assert missing == [], f"missing series: {missing}\n{rm.metrics_text()}"
    assert m["ringmux_spawns_total"] == 0
    assert m["ringmux_live_children"] == 0
    assert m["ringmux_spawn_failures_total"] == 0
    assert not any(k.endswith('{worker="2"}') for k in m), "more worker series than --workers 2"


def test_metrics_follow_activity(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--workers", "2", *ADMIN])
    before = rm.metrics()
    keys = [f"m-{i}-{uuid.uuid4().hex}" for i in range(3)]
    nreq = 0
    for k in keys:
        rm.info(k)
        assert rm.put("/state", k, content=b"v").status_code == 200
        nreq += 2
    rm.post("/mkfiles", keys[0], extra="n=300&dirs=3")
    nreq += 1
    m = rm.metrics()
    assert m["ringmux_spawns_total"] == 3
    assert m["ringmux_live_children"] == 3
    assert _sum_workers(m, "ringmux_requests_total") - _sum_workers(before, "ringmux_requests_total") >= nreq

    r = rm.close_key(keys[0])
    assert (r.status_code, r.text) == (200, "closed")
    # The close answered once the directory was in the trash; its deletion
    # follows (paced).
    wait_until(lambda: rm.metric("ringmux_cleanups_in_flight") == 0
               and rm.metric("ringmux_cleanup_duration_seconds_count") >= 1, 10.0,
               what="the closed rollout's directory to be deleted")
    m = rm.metrics()
    assert m["ringmux_close_teardown_seconds_count"] == 1
    assert m['ringmux_child_exits_total{cause="closed"}'] == 1
    assert m["ringmux_live_children"] == 2
    assert m["ringmux_cleanup_duration_seconds_count"] >= 1
    assert m['ringmux_cleanup_duration_seconds_bucket{le="+Inf"}'] == m["ringmux_cleanup_duration_seconds_count"]
    # 300 files + 3 + 15 subdirectories + the child directory itself
    assert m["ringmux_cleanup_entries_total"] >= 300 + 18
    assert m["ringmux_cleanup_errors_total"] == 0
    assert m["ringmux_cleanups_in_flight"] == 0
    assert m["ringmux_cleanup_duration_max_seconds"] > 0
    buckets = [v for k, v in m.items() if k.startswith("ringmux_cleanup_duration_seconds_bucket{")]
    les = [k for k in m if k.startswith("ringmux_cleanup_duration_seconds_bucket{")]
    ordered = sorted(zip((float(k.split('le="')[1].rstrip('"}')) for k in les), buckets))
    vals = [v for _, v in ordered]
    assert vals == sorted(vals), f"histogram buckets not cumulative: {ordered}"

    # a ringmux-generated error counts as a proxy error
    errs0 = _sum_workers(m, "ringmux_proxy_errors_total")
    bad = raw_http(rm.port, b"NOT AN HTTP REQUEST\r\n\r\n")
    assert 400 <= status_of(bad) < 600, bad[:200]
    wait_until(lambda: _sum_workers(rm.metrics(), "ringmux_proxy_errors_total") > errs0, 3.0,
               what="proxy_errors_total to count the error response")
    # The lag gauges: stopping the whole process for 300 ms makes every
    # worker's heartbeat that late; the recent maximum shows it once and is
    # reset by that scrape, the all-time maximum keeps it.
    rm.metrics()  # start a fresh "recent" window
    os.kill(rm.pid, signal.SIGSTOP)
    time.sleep(0.3)
    os.kill(rm.pid, signal.SIGCONT)
    recent = 'ringmux_worker_loop_lag_recent_max_seconds{{worker="{}"}}'
    alltime = 'ringmux_worker_loop_lag_max_seconds{{worker="{}"}}'
    time.sleep(0.3)  # the heartbeats due during the stop fire at once after it
    m = rm.metrics()
    assert all(m[recent.format(w)] >= 0.2 for w in (0, 1)), m
    assert all(m[alltime.format(w)] >= 0.2 for w in (0, 1)), m
    # That scrape reset the recent window: the stop is gone from it.
    m = rm.metrics()
    assert all(m[recent.format(w)] < 0.2 for w in (0, 1)), m
    assert all(m[alltime.format(w)] >= 0.2 for w in (0, 1)), m
    assert rm.stop() == 0


def test_max_children_refuses_new_keys_with_503(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--max-children", "3", *ADMIN])
    keys = [f"cap-{i}-{uuid.uuid4().hex}" for i in range(3)]
    pids = {k: rm.info(k)["pid"] for k in keys}
    assert len(set(pids.values())) == 3
    assert rm.metric("ringmux_at_capacity_total") == 0

    extra = f"cap-extra-{uuid.uuid4().hex}"
    for n in (1, 2):
        r = rm.get("/info", extra)
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.headers.get("ringmux-error") == "at-capacity", r.headers
        ra = r.headers.get("retry-after")
        assert ra is not None, f"503 without Retry-After: {dict(r.headers)}"
        assert ra.strip().isdigit(), f"Retry-After not delta-seconds: {ra!r}"
        assert len(r.content) < 1024
        assert rm.metric("ringmux_at_capacity_total") == n
    assert not os.path.exists(rm.child_dir(extra)), "a directory was made for a refused key"
    m = rm.metrics()
    assert m["ringmux_spawns_total"] == 3
    assert m["ringmux_live_children"] == 3
    assert len(rm.child_pids()) == 3

    # existing keys are unaffected and not counted as refused
    for k in keys:
        assert rm.info(k)["pid"] == pids[k]
        assert rm.put("/state", k, content=k.encode()).status_code == 200
        assert rm.get("/state", k).content == k.encode()
    assert rm.metric("ringmux_at_capacity_total") == 2

    # closing one frees a slot
    assert rm.close_key(keys[0]).status_code == 200
    r = rm.get("/info", extra)
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json()["cwd"] == rm.child_dir(extra)
    # and we are at capacity again
    r = rm.get("/info", f"cap-more-{uuid.uuid4().hex}")
    assert r.status_code == 503
    assert rm.metric("ringmux_at_capacity_total") == 3
    assert rm.stop() == 0


def test_crashed_child_frees_its_capacity_slot(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--max-children", "2", *ADMIN])
    a, b, c = (f"slot-{x}-{uuid.uuid4().hex}" for x in "abc")
    pa = rm.info(a)["pid"]
    rm.info(b)
    assert rm.get("/info", c).status_code == 503
    assert rm.post("/exit", a).text == "bye"
    wait_until(lambda: not pid_alive(pa), 5.0, what="child to exit")
    rm.wait_metric("ringmux_live_children", lambda v: v == 1, timeout=5.0)
    r = rm.get("/info", c)
    assert r.status_code == 200, (r.status_code, r.text)
    assert rm.metric("ringmux_child_exits_total", cause="crashed") == 1
    assert rm.stop() == 0
