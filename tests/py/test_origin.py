"""DNS-rebinding protection on ringmux's own listener (issue #5): a request
whose Origin is not allowed, or whose Host is not a loopback name while ringmux
listens on loopback, gets 403 before any child is started or closed;
`--allow-origin` (repeatable) sets the allowed origins."""

import os

import httpx

from conftest import RAW_CMD, children_of

EVIL = "http://evil.example.com"


def raw(rm, path, key, headers):
    """One request with exactly these Host/Origin headers (httpx would set Host)."""
    with httpx.Client(timeout=10) as c:
        req = c.build_request("GET", rm.path_url(path, key), headers=headers)
        return c.send(req)


def test_foreign_origin_or_host_refused_before_a_child_starts(ringmux_factory):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--admin", "127.0.0.1:0"])
    port_host = f"127.0.0.1:{rm.port}"
    # The conformance suite's DNS-rebinding probe: attacker's name in both.
    r = raw(rm, "/info", "k1", {"Host": "evil.example.com", "Origin": EVIL})
    assert r.status_code == 403, r.text
    assert r.headers.get("ringmux-error") == "forbidden", r.headers
    assert "Origin" in r.text
    # Host alone (a rebinding page that sends no Origin, e.g. a simple GET).
    r = raw(rm, "/info", "k1", {"Host": f"evil.example.com:{rm.port}"})
    assert r.status_code == 403, r.text
    assert "Host" in r.text
    # A foreign origin with a loopback Host.
    r = raw(rm, "/info", "k1", {"Host": port_host, "Origin": EVIL})
    assert r.status_code == 403
    r = raw(rm, "/info", "k1", {"Host": port_host, "Origin": "null"})
    assert r.status_code == 403
    # An absolute-form target names the host the request is really for.
    import socket

    with socket.create_connection(("127.0.0.1", rm.port), timeout=10) as sock:
        sock.sendall(
            f"GET http://evil.example.com/info?vf_state_secret=k1 HTTP/1.1\r\nHost: {port_host}\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 403")
    # Nothing was started for the refused requests.
    assert children_of(rm.pid) == []
    assert not os.path.exists(rm.child_dir("k1"))
    metrics = httpx.get(rm.metrics_url, timeout=10).text
    # The admin listener follows the same rules.
    assert httpx.get(rm.metrics_url, headers={"Host": "evil.example.com"}, timeout=10).status_code == 403
    assert httpx.get(rm.metrics_url, headers={"Origin": EVIL}, timeout=10).status_code == 403
    refused = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ringmux_refused_requests_total")
    )
    assert refused == 5

    # Allowed: no Origin (SDK clients), loopback origins, loopback host names.
    for headers in (
        {"Host": port_host},
        {"Host": f"localhost:{rm.port}", "Origin": "http://localhost:3000"},
        {"Host": f"[::1]:{rm.port}", "Origin": "https://127.0.0.1"},
    ):
        r = raw(rm, "/info", "k1", headers)
        assert r.status_code == 200, (headers, r.status_code, r.text)
    pid = r.json()["pid"]

    # A refused close does not close the rollout.
    with httpx.Client(timeout=10) as c:
        r = c.post(rm.path_url("/vf/close", "k1"), headers={"Origin": EVIL})
    assert r.status_code == 403
    assert rm.info("k1")["pid"] == pid
    rm.stop()


def test_cross_site_browser_requests_without_origin_refused(ringmux_factory):
    """A page's <img src="http://127.0.0.1:PORT/...?vf_state_secret=K"> carries
    no Origin, but browsers mark it Sec-Fetch-Site: cross-site: it must neither
    start a child nor close a rollout."""
    rm = ringmux_factory(cmd=RAW_CMD)
    host = f"127.0.0.1:{rm.port}"
    pid = rm.info("victim")["pid"]
    for site in ("cross-site", "same-site"):
        r = raw(rm, "/info", "new-key", {"Host": host, "Sec-Fetch-Site": site})
        assert r.status_code == 403, r.text
        r = raw(rm, "/vf/close", "victim", {"Host": host, "Sec-Fetch-Site": site})
        assert r.status_code == 403, r.text
    assert not os.path.exists(rm.child_dir("new-key"))
    assert rm.info("victim")["pid"] == pid
    # Same-origin or user-typed navigations, and cross-site with an allowed Origin, pass.
    for headers in (
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost:3000"},
    ):
        r = raw(rm, "/info", "victim", {"Host": host, **headers})
        assert r.status_code == 200, (headers, r.text)
    # Two Origin headers: refused whatever they say.
    with httpx.Client(timeout=10) as c:
        req = c.build_request(
            "GET", rm.path_url("/info", "victim"),
            headers=[("Host", host), ("Origin", "http://localhost"), ("Origin", "http://localhost")],
        )
        assert c.send(req).status_code == 403
    rm.stop()


def test_allow_origin_flag(ringmux_factory):
    rm = ringmux_factory(
        cmd=RAW_CMD,
        args=["--allow-origin", "http://app.example:8080", "--allow-origin", "https://ui.example"],
    )
    ok = raw(rm, "/info", "k", {"Host": f"127.0.0.1:{rm.port}", "Origin": "http://app.example:8080"})
    assert ok.status_code == 200, ok.text
    ok = raw(rm, "/info", "k", {"Host": "ui.example", "Origin": "https://UI.example/"})
    assert ok.status_code == 200, ok.text
    # The list replaces the loopback default, and ports and schemes count.
    for origin in ("http://localhost:3000", "http://app.example:8081", "http://ui.example", EVIL):
        r = raw(rm, "/info", "k", {"Host": f"127.0.0.1:{rm.port}", "Origin": origin})
        assert r.status_code == 403, origin
    r = raw(rm, "/info", "k", {"Host": "other.example"})
    assert r.status_code == 403
    rm.stop()


def test_wildcard_and_bad_values(ringmux_factory, tmp_path):
    rm = ringmux_factory(cmd=RAW_CMD, args=["--allow-origin", "*"])
    r = raw(rm, "/info", "k", {"Host": f"127.0.0.1:{rm.port}", "Origin": EVIL})
    assert r.status_code == 200
    # `*` opens Origin, not Host: a rebinding page's own name is still refused.
    r = raw(rm, "/info", "k", {"Host": "evil.example.com", "Origin": EVIL})
    assert r.status_code == 403
    rm.stop()

    import subprocess

    from conftest import RINGMUX_BIN

    out = subprocess.run(
        [str(RINGMUX_BIN), "serve", "--listen", "127.0.0.1:0", "--base-dir", str(tmp_path),
         "--allow-origin", "localhost:3000", "--demo"],
        capture_output=True, text=True, timeout=20,
    )
    assert out.returncode == 2
    assert "--allow-origin" in out.stderr and "scheme://host" in out.stderr
