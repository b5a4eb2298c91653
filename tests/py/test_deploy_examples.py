"""The shipped deployment examples are valid: `deploy/ringmux.service` passes
`systemd-analyze verify` (with its two paths pointed at files that exist
here), and its ExecStart is a command line ringmux accepts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

from conftest import REPO, RINGMUX_BIN

UNIT = REPO / "deploy" / "ringmux.service"


def local_unit(tmp_path):
    text = UNIT.read_text()
    text = text.replace("/usr/local/bin/ringmux", str(RINGMUX_BIN))
    text = text.replace("/opt/tools/venv/bin/python", sys.executable)
    out = tmp_path / "ringmux.service"
    out.write_text(text)
    return out, text


def test_the_systemd_unit_verifies(tmp_path):
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is needed to check deploy/ringmux.service (Debian: systemd)"
    unit, _ = local_unit(tmp_path)
    p = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values, printing a warning:
    # a clean unit prints nothing.
    assert p.returncode == 0 and (p.stdout + p.stderr).strip() == "", p.stdout + p.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("Delegate=yes", "Delegatx=yes"))
    p = subprocess.run([tool, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'Delegatx'" in p.stdout + p.stderr, "verify missed a typo: the check is blind"


def test_the_units_command_line_is_one_ringmux_accepts(tmp_path):
    _, text = local_unit(tmp_path)
    joined = text.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert "Delegate=yes" in text and "--cgroup" in argv
    # The fork helper serves only as a fork server: exec'd per key it exits.
    assert ("ringmux_fork" not in argv) or ("--fork" in argv[: argv.index("--")]), argv
    # --help after the options: clap parses them all, then prints help.
    serve = argv[: argv.index("--")]
    p = subprocess.run(serve + ["--help"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr


K8S = REPO / "deploy" / "kubernetes"


def test_the_kubernetes_example_is_consistent():
    """deploy/kubernetes: not run on a cluster (none here), so what can be
    checked is: the manifests parse, the container's command line is one
    ringmux accepts, the probes hit ringmux's health paths on its admin
    port, the preStop hook drains (SIGUSR1) and waits, the grace period
    covers --drain-timeout, and Envoy hashes on the key parameter and
    retries 503 on another host."""
    import yaml

    docs = list(yaml.safe_load_all((K8S / "ringmux.yaml").read_text()))
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    svc = next(d for d in docs if d["kind"] == "Service")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    argv = c["command"]
    assert argv[0].endswith("ringmux") and argv[1] == "serve"
    serve = [str(RINGMUX_BIN)] + argv[1:argv.index("--")]
    p = subprocess.run(serve + ["--help"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    # The helper serves only as a fork server: exec'd per key it exits.
    assert ("ringmux_fork" not in argv) or ("--fork" in serve), argv
    assert argv[argv.index("--admin") + 1].startswith("127.0.0.1:"), "the admin listener has no authentication"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["mcp"] == int(argv[argv.index("--listen") + 1].rsplit(":", 1)[1])
    # Probed where the workers answer (the proxy port, no key).
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "mcp"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "mcp"}
    hook = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    assert "kill -USR1 1" in hook and "kill -0 1" in hook, hook
    drain = argv[argv.index("--drain-timeout") + 1]
    assert drain.endswith("m")
    assert pod["terminationGracePeriodSeconds"] > int(drain[:-1]) * 60
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True

    envoy = yaml.safe_load((K8S / "envoy.yaml").read_text())
    hcm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["hash_policy"] == [{"query_parameter": {"name": "vf_state_secret"}}]
    # It retries on ringmux's own refusals only: each header value is a
    # kind ringmux sends with a 503 (src/error.rs), never a bare status.
    policy = route["retry_policy"]
    assert "retriable_status_codes" not in policy and "retriable-headers" in policy["retry_on"], policy
    kinds = {m["string_match"]["exact"] for m in policy["retriable_headers"] if m["name"] == "ringmux-error"}
    assert kinds == {"draining", "at-capacity", "shutting-down", "fork-server-unavailable"}, kinds
    error_rs = (REPO / "src" / "error.rs").read_text()
    for k in kinds:
        variant = re.search(r"ProxyError::(\w+)(?:\(_\))? => \"" + re.escape(k) + r"\"", error_rs)
        assert variant, f"ringmux sends no ringmux-error: {k}"
        assert re.search(r"ProxyError::" + variant.group(1) + r"\b[^,;=]*=> 503", error_rs), (k, variant.group(1))
    assert route["retry_policy"]["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    (cluster,) = envoy["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "RING_HASH"
    addr = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert addr["address"].startswith(svc["metadata"]["name"] + ".") and addr["port_value"] == ports["mcp"]
