"""The shipped balancer configs (deploy/nginx-ringmux.conf,
deploy/haproxy-ringmux.cfg) in front of three ringmux instances on
loopback, as a fleet runs one instance per node: every request of a key,
and its close, reach one instance; a draining instance's live rollouts stay
while its new keys go to another instance; a killed instance's keys start
fresh elsewhere. The configs are used as shipped, with only the addresses
(and, for nginx, the main-file boilerplate around the include) filled in.
Which instance answered is read from the demo's `whoami` (its parent pid)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import uuid

import httpx
import pytest

from conftest import HTTP_TIMEOUT, REPO, pid_alive, wait_until

DEPLOY = REPO / "deploy"
HDRS = {"accept": "application/json, text/event-stream"}


def tool(name, args=None):
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": args or {}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    assert path, f"{binary} is needed (scripts/setup-test-env.sh installs it)"
    return path


def with_addresses(text: str, ports: list[int], front: int) -> str:
    """The shipped config with the test's ports for 8001..8003 and 8080."""
    for want, port in zip((8001, 8002, 8003), ports):
        assert f"127.0.0.1:{want}" in text
        text = text.replace(f"127.0.0.1:{want}", f"127.0.0.1:{port}")
    assert "127.0.0.1:8080" in text
    return text.replace("127.0.0.1:8080", f"127.0.0.1:{front}")


class Balancer:
    def __init__(self, kind: str, ports: list[int], work):
        self.kind, self.port = kind, free_port()
        work.mkdir(parents=True, exist_ok=True)
        if kind == "nginx":
            inc = work / "ringmux.conf"
            inc.write_text(with_addresses((DEPLOY / "nginx-ringmux.conf").read_text(), ports, self.port))
            main = work / "nginx.conf"
            main.write_text(
                f"daemon off;\nworker_processes 2;\npid {work}/nginx.pid;\nerror_log {work}/error.log warn;\n"
                "events { worker_connections 1024; }\n"
                f"http {{\n access_log off;\n client_body_temp_path {work}/body;\n proxy_temp_path {work}/proxy;\n"
                f" fastcgi_temp_path {work}/fcgi;\n uwsgi_temp_path {work}/uwsgi;\n scgi_temp_path {work}/scgi;\n"
                f" include {inc};\n}}\n")
            argv = [find("nginx"), "-c", str(main), "-p", str(work)]
        else:
            cfg = work / "haproxy.cfg"
            cfg.write_text("global\n    maxconn 1024\n\n" +
                           with_addresses((DEPLOY / "haproxy-ringmux.cfg").read_text(), ports, self.port))
            argv = [find("haproxy"), "-db", "-f", str(cfg)]
        self.log = open(work / f"{kind}.out", "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, start_new_session=True)
        wait_until(self._up, 15, what=f"{kind} to listen")

    def _up(self):
        assert self.proc.poll() is None, f"{self.kind} exited {self.proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def url(self, path, key):
        return f"http://127.0.0.1:{self.port}{path}?vf_state_secret={key}"

    def call(self, key, name, args=None):
        r = httpx.post(self.url("/mcp", key), json=tool(name, args), headers=HDRS, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        return r.json()["result"]

    def owner(self, key) -> int:
        """The ringmux instance (pid) whose child answered for `key`."""
        return self.call(key, "whoami")["structuredContent"]["ppid"]

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(params=["nginx", "haproxy"])
def fleet(request, ringmux_factory, tmp_path):
    rms = [ringmux_factory(demo=True, args=["--admin", "127.0.0.1:0"]) for _ in range(3)]
    lb = Balancer(request.param, [rm.port for rm in rms], tmp_path / request.param)
    yield lb, {rm.pid: rm for rm in rms}
    lb.stop()


def spread(lb, n, prefix):
    """`n` new keys and the instance each landed on."""
    return {k: lb.owner(k) for k in (f"{prefix}-{uuid.uuid4().hex[:8]}" for _ in range(n))}


def test_every_request_of_a_key_and_its_close_reach_one_instance(fleet):
    lb, rms = fleet
    owners = spread(lb, 24, "s")
    assert len(set(owners.values())) >= 2, f"24 keys all on one instance: {owners}"
    for k, pid in owners.items():
        lb.call(k, "scratch_write", {"value": k})
    for k, pid in owners.items():
        assert lb.call(k, "scratch_read")["content"][0]["text"] == k
        assert lb.owner(k) == pid
    # Each instance holds exactly the children of its keys.
    for pid, rm in rms.items():
        assert len(rm.child_pids()) == sum(1 for o in owners.values() if o == pid), pid
    # A close through the balancer reaches the owner: its child goes.
    k, pid = next(iter(owners.items()))
    child = lb.call(k, "whoami")["structuredContent"]["pid"]
    r = httpx.post(lb.url("/vf/close", k), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.text == "closed", (r.status_code, r.text)
    wait_until(lambda: not pid_alive(child), 10, what="the closed rollout's child to go")
    assert not os.path.exists(rms[pid].child_dir(k))


def test_a_draining_instance_keeps_its_rollouts_and_its_new_keys_go_elsewhere(fleet):
    lb, rms = fleet
    owners = spread(lb, 24, "d")
    counts = {pid: [k for k, o in owners.items() if o == pid] for pid in rms}
    draining = max(counts, key=lambda p: len(counts[p]))
    mine = counts[draining]
    for k in mine:
        lb.call(k, "scratch_write", {"value": k})
    os.kill(draining, signal.SIGUSR1)
    wait_until(lambda: httpx.get(f"{rms[draining].url}/readyz", timeout=HTTP_TIMEOUT).status_code == 503, 10,
               what="the instance to drain")
    # Its live rollouts stay where they are, state intact.
    for k in mine:
        assert lb.owner(k) == draining
        assert lb.call(k, "scratch_read")["content"][0]["text"] == k
    # New keys all succeed, none on the draining instance, each one sticky.
    fresh = spread(lb, 24, "n")
    assert draining not in fresh.values(), fresh
    for k, pid in fresh.items():
        assert lb.owner(k) == pid
    # When its last rollout is closed through the balancer, it exits 0.
    for k in mine:
        assert httpx.post(lb.url("/vf/close", k), timeout=HTTP_TIMEOUT).status_code == 200
    rm = rms[draining]
    assert rm.proc.wait(timeout=30) == 0, rm.stderr_text()
    rm._stopped = True
    assert not os.path.exists(rm.instance_dir)


def test_a_killed_instances_keys_start_fresh_on_another(fleet):
    lb, rms = fleet
    owners = spread(lb, 24, "k")
    counts = {pid: [k for k, o in owners.items() if o == pid] for pid in rms}
    victim = max(counts, key=lambda p: len(counts[p]))
    for k in counts[victim]:
        lb.call(k, "scratch_write", {"value": "lost"})
    children = rms[victim].child_pids()
    rms[victim].proc.kill()
    rms[victim].proc.wait(timeout=10)
    wait_until(lambda: not any(pid_alive(c) for c in children), 10, what="its children to die with it")
    for k in counts[victim]:
        new = lb.owner(k)
        assert new != victim and new in rms, (k, new)
        # The state lived in the dead instance's child: it starts empty.
        assert lb.call(k, "scratch_read")["content"][0]["text"] == ""
        assert lb.owner(k) == new
    # The others' keys did not move.
    for k, pid in owners.items():
        if pid != victim:
            assert lb.owner(k) == pid


def test_the_configs_say_what_to_set_for_host():
    nginx = (DEPLOY / "nginx-ringmux.conf").read_text()
    assert re.search(r"^\s*proxy_set_header Host \$http_host;", nginx, re.M), "nginx must pass the client's Host"
    assert re.search(r"^\s*hash \$arg_vf_state_secret consistent;", nginx, re.M)
    haproxy = (DEPLOY / "haproxy-ringmux.cfg").read_text()
    assert re.search(r"^\s*balance url_param vf_state_secret", haproxy, re.M)
    assert re.search(r"^\s*hash-type consistent", haproxy, re.M)
