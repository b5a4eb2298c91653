"""Routing by rollout key, isolation between keys, and what a child is given."""

import hashlib
import http.client
import os
import stat
import threading
import uuid

from conftest import key_hash_dir, procs_with_cwd_under


def test_two_keys_get_two_children_with_separate_state(raw_ringmux):
    rm = raw_ringmux
    a, b = f"key-a-{uuid.uuid4().hex}", f"key-b-{uuid.uuid4().hex}"
    pa, pb = rm.info(a)["pid"], rm.info(b)["pid"]
    assert pa != pb
    assert pa in rm.child_pids() and pb in rm.child_pids()
    assert rm.put("/state", a, content=b"value-of-a").status_code == 200
    assert rm.get("/state", b).text == ""
    assert rm.put("/state", b, content=b"value-of-b").status_code == 200
    assert rm.get("/state", a).text == "value-of-a"
    assert rm.get("/state", b).text == "value-of-b"
    # same key again -> same child
    assert rm.info(a)["pid"] == pa


def test_no_key_goes_to_default_child(raw_ringmux):
    rm = raw_ringmux
    info = rm.info(None)
    assert info["cwd"] == os.path.join(rm.instance_dir, "_default")
    assert rm.info(None)["pid"] == info["pid"]
    # other query params without the key param still route to the default child
    r = rm.get("/info", None, extra="other=1")
    assert r.json()["pid"] == info["pid"]


def test_child_cwd_is_sha256_dir_and_key_is_percent_decoded(raw_ringmux):
    rm = raw_ringmux
    key = "a b/c?d&e=f%-" + uuid.uuid4().hex
    info = rm.info(key)  # path_url percent-encodes the key
    want = os.path.join(rm.instance_dir, hashlib.sha256(key.encode()).hexdigest()[:16])
    assert info["cwd"] == want
    assert rm.child_dir(key) == want
    assert os.path.isdir(want)


def test_first_value_of_key_param_routes(raw_ringmux):
    rm = raw_ringmux
    k1, k2 = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    p1 = rm.info(k1)["pid"]
    r = rm.get("/info", k1, extra=f"vf_state_secret={k2}")
    assert r.json()["pid"] == p1
    assert r.json()["cwd"] == rm.child_dir(k1)
    assert not os.path.exists(rm.child_dir(k2))


def test_full_query_string_forwarded_unchanged(raw_ringmux):
    rm = raw_ringmux
    key = f"q-{uuid.uuid4().hex}"
    query = f"a=1&vf_state_secret={key}&b=%20x%2F&vf_state_secret=zzz&empty=&flag"
    conn = http.client.HTTPConnection("127.0.0.1", rm.port, timeout=10)
    try:
        conn.request("GET", f"/headers?{query}")
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, body
    finally:
        conn.close()
    import json

    got = json.loads(body)
    assert got["query"] == query
    assert got["path"] == "/headers"
    assert got["method"] == "GET"
    # the key in the middle of the query string (after 'a=1') still routes
    assert rm.info(key)["cwd"] == rm.child_dir(key)


def _headers_seen(rm, key, headers):
    conn = http.client.HTTPConnection("127.0.0.1", rm.port, timeout=10)
    try:
        conn.putrequest("GET", f"/headers?vf_state_secret={key}", skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, body
    finally:
        conn.close()
    import json

    return json.loads(body)["headers"]


def assert_child_addr_form(rm, info):
    """RINGMUX_CHILD_ADDR and fd 3 match the instance's --child-socket."""
    if rm.child_socket() == "unix":
        assert info["fd3_family"] == "AF_UNIX", info
        assert info["child_addr"].startswith("@ringmux-"), info["child_addr"]
        assert info["child_addr"].rsplit("/", 1)[1].isdigit(), info["child_addr"]
    else:
        assert info["fd3_family"] == "AF_INET", info
        assert info["child_addr"].startswith("127.0.0.1:"), info["child_addr"]
        assert int(info["child_addr"].rsplit(":", 1)[1]) > 0


def test_host_header_rewritten_to_child_address(raw_ringmux):
    rm = raw_ringmux
    key = f"host-{uuid.uuid4().hex}"
    info = rm.info(key)
    # A loopback name the client used (a foreign name would be refused: test_origin.py).
    seen = _headers_seen(rm, key, [("Host", "localhost:1234")])
    hosts = [v for k, v in seen if k.lower() == "host"]
    assert hosts == [rm.expected_child_host(info["child_addr"])]
    assert_child_addr_form(rm, info)


def test_hop_by_hop_headers_dropped_end_to_end_kept(raw_ringmux):
    rm = raw_ringmux
    key = f"hop-{uuid.uuid4().hex}"
    seen = _headers_seen(
        rm,
        key,
        [
            ("Host", f"127.0.0.1:{rm.port}"),
            ("Connection", "x-foo"),
            ("X-Foo", "must-not-arrive"),
            ("Keep-Alive", "timeout=5"),
            ("Upgrade", "h2c"),
            ("TE", "trailers"),
            ("Trailer", "X-Trail"),
            ("Proxy-Authorization", "Basic c2VjcmV0"),
            ("Proxy-Connection", "keep-alive"),
            ("Mcp-Session-Id", "sess-123"),
            ("MCP-Protocol-Version", "2025-06-18"),
            ("Last-Event-ID", "ev-7"),
            ("Authorization", "Bearer tok"),
            ("X-Other", "other-value"),
        ],
    )
    names = {k.lower(): v for k, v in seen}
    for gone in ("x-foo", "keep-alive", "upgrade", "te", "trailer", "proxy-authorization", "proxy-connection"):
        assert gone not in names, f"hop-by-hop header {gone!r} was forwarded: {seen}"
    conn_vals = names.get("connection", "").lower()
    assert "x-foo" not in conn_vals
    assert names.get("mcp-session-id") == "sess-123"
    assert names.get("mcp-protocol-version") == "2025-06-18"
    assert names.get("last-event-id") == "ev-7"
    assert names.get("authorization") == "Bearer tok"
    assert names.get("x-other") == "other-value"


def test_child_process_contract(raw_ringmux):
    rm = raw_ringmux
    key = f"proc-{uuid.uuid4().hex}"
    info = rm.info(key)
    assert info["ppid"] == rm.pid
    assert info["pid"] in rm.child_pids()
    assert info["startup_fds"] == [0, 1, 2, 3], info["startup_fd_targets"]
    assert info["startup_fd_targets"]["0"] == "/dev/null"
    assert info["startup_fd_targets"]["3"].startswith("socket:")
    assert info["listen_fds"] == "1"
    assert_child_addr_form(rm, info)


def test_directory_modes_are_private(raw_ringmux):
    rm = raw_ringmux
    key = f"mode-{uuid.uuid4().hex}"
    rm.info(key)
    inst = os.stat(rm.instance_dir)
    assert stat.S_IMODE(inst.st_mode) == 0o700
    assert os.path.dirname(rm.instance_dir) == str(rm.base_dir)
    child = os.stat(rm.child_dir(key))
    assert stat.S_IMODE(child.st_mode) == 0o700


def test_key_never_visible(raw_ringmux):
    rm = raw_ringmux
    key = f"TOPSECRET{uuid.uuid4().hex}"
    info = rm.info(key)
    pid = info["pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert key.encode() not in f.read()
    with open(f"/proc/{pid}/environ", "rb") as f:
        assert key.encode() not in f.read()
    with open(f"/proc/{rm.pid}/cmdline", "rb") as f:
        assert key.encode() not in f.read()
    for root, dirs, files in os.walk(rm.instance_dir):
        for name in dirs + files:
            assert key not in os.path.join(root, name)
    assert key not in rm.stderr_text(limit=10_000_000)
    assert not any(key in line for line in rm.stdout_lines)


def test_ten_concurrent_first_requests_start_one_child(raw_ringmux):
    rm = raw_ringmux
    key = f"herd-{uuid.uuid4().hex}"
    before = set(rm.child_pids())
    barrier = threading.Barrier(10, timeout=10)
    results = [None] * 10

    def worker(i):
        barrier.wait()
        try:
            r = rm.get("/info", key)
            results[i] = (r.status_code, r.json()["pid"] if r.status_code == 200 else r.text)
        except Exception as e:  # recorded, asserted below
            results[i] = ("exc", repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert all(r is not None and r[0] == 200 for r in results), results
    pids = {r[1] for r in results}
    assert len(pids) == 1, results
    new = set(rm.child_pids()) - before
    assert new == pids
    assert procs_with_cwd_under(rm.child_dir(key)) == list(pids)
    assert key_hash_dir(key) == os.path.basename(rm.child_dir(key))


def test_crashed_child_is_replaced(raw_ringmux):
    rm = raw_ringmux
    key = f"crash-{uuid.uuid4().hex}"
    old = rm.info(key)["pid"]
    rm.put("/state", key, content=b"before-crash")
    assert rm.post("/exit", key).text == "bye"
    from conftest import proc_stat, wait_until

    # ringmux must reap it (no zombie) ...
    wait_until(lambda: proc_stat(old) is None, 5.0, what=f"crashed child {old} to be reaped")
    # ... and the next request for the key gets a fresh, working child.
    r = rm.get("/info", key)
    assert r.status_code == 200, r.text
    assert r.json()["pid"] != old
    assert rm.get("/state", key).text == ""


def test_custom_key_param_and_close_path(ringmux_factory):
    from conftest import RAW_CMD, pid_alive

    rm = ringmux_factory(cmd=RAW_CMD, args=["--key-param", "rk", "--close-path", "/done"])
    with rm.client() as c:
        a = c.get(f"{rm.url}/info?rk=alpha").json()
        # the default parameter name is now just another query parameter
        d = c.get(f"{rm.url}/info?vf_state_secret=alpha").json()
        assert a["cwd"] == os.path.join(rm.instance_dir, key_hash_dir("alpha"))
        assert d["cwd"] == os.path.join(rm.instance_dir, "_default")
        assert a["pid"] != d["pid"]
        r = c.post(f"{rm.url}/done?rk=alpha")
        assert (r.status_code, r.text) == (200, "closed")
        assert not pid_alive(a["pid"])
        assert not os.path.exists(a["cwd"])
        # the old close path is now proxied to the child like any other path
        r = c.post(f"{rm.url}/vf/close?rk=beta")
        assert r.status_code == 404 and r.text == "not found"
