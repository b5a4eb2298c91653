"""MCP transport facts a proxy must respect (of the Streamable HTTP transport: sessions, SSE, resumption), through the real
binary, with real sockets and the official MCP Python SDK (issue #5, items 3-6).

- Server-to-client requests (sampling, elicitation) are answered by a new POST with
  the same rollout key; it must reach the very child that asked, with no cross-talk
  between rollouts running at the same time.
- Several SSE streams of one rollout flow at once, each event as it is produced.
- Closing an SSE response is cancellation: the child sees the disconnect at once and
  the cancelled upstream connection is never reused.
- End-to-end headers pass byte for byte, in order, both ways.
- Isolation as the seed's users check it: a module global, written by two rollouts at
  once, is isolated through ringmux and demonstrably not on one shared server.

MCP children: children/mcp_transport_child.py (see its docstring). Raw HTTP children:
children/raw_child.py (/conn, /sse_track, /sse_log, /respond, /headers raw_head).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import struct
import time
import uuid

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp import types as mt
from mcp.client.streamable_http import streamable_http_client

from conftest import RAW_CMD, uvicorn_fd3_cmd, module_ringmux, raw_http, status_of, wait_http_ok, wait_until
from mcp_helpers import MCP_OP_TIMEOUT, tool_json

TRANSPORT_CMD = uvicorn_fd3_cmd("mcp_transport_child:app")


@pytest.fixture(scope="module")
def transport_ringmux(tmp_path_factory, request):
    """One ringmux whose children are mcp_transport_child (stateful SSE MCPServer);
    stopped at the end with the no-leak checks (no child, no directory left)."""
    rm = module_ringmux(tmp_path_factory, request, cmd=TRANSPORT_CMD, args=["--workers", "2"])
    yield rm
    rm.stop()


@pytest.fixture(scope="module")
def raw_rm(tmp_path_factory, request):
    """One ringmux running raw_child.py (2 workers), stopped with the no-leak checks."""
    rm = module_ringmux(tmp_path_factory, request, cmd=RAW_CMD, args=["--workers", "2"])
    yield rm
    rm.stop()


def _mcp_url(base: str, key: str | None) -> str:
    return f"{base}/mcp" + (f"?vf_state_secret={key}" if key is not None else "")


def _new_key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# ==========================================================================
# 3. Server-to-client traffic
# ==========================================================================
def test_sampling_and_elicitation_answers_reach_the_asking_child_two_rollouts_at_once(transport_ringmux):
    """Two rollouts at once; each child asks its client for sampling and then for
    elicitation on the tool call's SSE stream. Both questions of both rollouts are
    outstanding at the same moment (the callbacks wait for each other), each client
    answers with its own values, and each child gets back exactly its own client's
    answer (a new POST with the same key reached the child that asked)."""
    rm = transport_ringmux
    keys = [_new_key("s2c-A"), _new_key("s2c-B")]
    spec = {
        k: {
            "prompt": f"prompt for {k}: what is 6 x 7?",
            "answer": f"sampled answer {uuid.uuid4().hex} (for {k[:5]})",
            "model": f"model-{uuid.uuid4().hex[:8]}",
            "question": f"question for {k}",
            "form": {"name": f"Name {uuid.uuid4().hex[:6]} / {k[:5]}", "number": 1000 + i},
        }
        for i, k in enumerate(keys)
    }
    seen_prompts: dict[str, list] = {k: [] for k in keys}
    seen_questions: dict[str, list] = {k: [] for k in keys}
    results: dict[str, dict] = {}

    async def main():
        asked_sampling = {k: anyio.Event() for k in keys}
        asked_elicit = {k: anyio.Event() for k in keys}

        async def rollout(key, other):
            async def sampling_cb(context, params):
                msg = params.messages[0]
                seen_prompts[key].append(msg.content.text)
                asked_sampling[key].set()
                # answer only once the other rollout's child is asking too
                with anyio.fail_after(15):
                    await asked_sampling[other].wait()
                return mt.CreateMessageResult(
                    role="assistant",
                    content=mt.TextContent(type="text", text=spec[key]["answer"]),
                    model=spec[key]["model"],
                    stop_reason="endTurn",
                )

            async def elicitation_cb(context, params):
                seen_questions[key].append(params.message)
                asked_elicit[key].set()
                with anyio.fail_after(15):
                    await asked_elicit[other].wait()
                return mt.ElicitResult(action="accept", content=dict(spec[key]["form"]))

            async with streamable_http_client(_mcp_url(rm.url, key)) as (read, write):
                async with ClientSession(
                    read,
                    write,
                    read_timeout_seconds=MCP_OP_TIMEOUT,
                    sampling_callback=sampling_cb,
                    elicitation_callback=elicitation_cb,
                ) as s:
                    await s.initialize()
                    who = tool_json(await s.call_tool("whoami", {}))
                    sampled = tool_json(await s.call_tool("ask_sampling", {"prompt": spec[key]["prompt"]}))
                    elicited = tool_json(await s.call_tool("ask_elicitation", {"question": spec[key]["question"]}))
                    results[key] = {"who": who, "sampled": sampled, "elicited": elicited}

        with anyio.fail_after(45):
            async with anyio.create_task_group() as tg:
                tg.start_soon(rollout, keys[0], keys[1])
                tg.start_soon(rollout, keys[1], keys[0])

    anyio.run(main)

    pids = {k: results[k]["who"]["pid"] for k in keys}
    assert pids[keys[0]] != pids[keys[1]], pids
    for k in keys:
        assert results[k]["who"]["cwd"] == rm.child_dir(k)
        assert pids[k] in rm.child_pids()
        # the client was asked exactly its own child's question ...
        assert seen_prompts[k] == [spec[k]["prompt"]]
        assert seen_questions[k] == [spec[k]["question"]]
        # ... and that child received exactly this client's answer
        assert results[k]["sampled"] == {
            "prompt": spec[k]["prompt"],
            "text": spec[k]["answer"],
            "model": spec[k]["model"],
            "stop_reason": "endTurn",
            "pid": pids[k],
        }
        assert results[k]["elicited"] == {
            "question": spec[k]["question"],
            "action": "accept",
            "data": spec[k]["form"],
            "pid": pids[k],
        }


@pytest.mark.parametrize("sessions", ["one_session", "two_sessions_same_key"])
def test_concurrent_sse_streams_of_one_rollout_flow_independently(transport_ringmux, sessions):
    """Two tool calls of one rollout stream progress notifications on their own SSE
    responses at the same time, in lockstep: the child produces tick i+1 of a call only
    after the client has received tick i of BOTH calls (and acknowledged it with a third
    request). So every event must reach the client as it is produced, on both streams
    at once; buffering one stream, or serving the rollout's streams one after the
    other, makes the child give up waiting and the call fail."""
    rm = transport_ringmux
    key = _new_key(f"lock-{sessions}")
    n = 4
    tag = uuid.uuid4().hex[:8]
    names = {"A": f"A-{tag}", "B": f"B-{tag}"}
    events: list[tuple[str, int | None]] = []  # arrival order: (call, tick) / (call, None) = its result
    out: dict[str, dict] = {}

    async def main():
        send, recv = anyio.create_memory_object_stream[tuple[str, int]](100)

        def on_progress(call):
            async def cb(progress, total, message):
                name, i = message.rsplit(":", 1)
                assert name == names[call], (call, message)
                events.append((call, int(i)))
                send.send_nowait((call, int(i)))

            return cb

        async def acker(s):
            got: dict[int, set] = {}
            async with recv:
                async for call, i in recv:
                    got.setdefault(i, set()).add(call)
                    if got[i] == {"A", "B"}:  # both streams delivered tick i: release both
                        for c in ("A", "B"):
                            assert tool_json(await s.call_tool("ack", {"name": names[c], "i": i})) == "ok"
                        if i == n - 1:
                            return

        async def call(s, c):
            res = await s.call_tool(
                "lockstep",
                {"name": names[c], "n": n, "ack_timeout_s": 10.0},
                progress_callback=on_progress(c),
            )
            out[c] = tool_json(res)
            events.append((c, None))

        with anyio.fail_after(45):
            async with streamable_http_client(_mcp_url(rm.url, key)) as (r1, w1):
                async with ClientSession(r1, w1, read_timeout_seconds=30) as s1:
                    await s1.initialize()
                    if sessions == "one_session":
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(acker, s1)
                            tg.start_soon(call, s1, "A")
                            tg.start_soon(call, s1, "B")
                    else:
                        async with streamable_http_client(_mcp_url(rm.url, key)) as (r2, w2):
                            async with ClientSession(r2, w2, read_timeout_seconds=30) as s2:
                                await s2.initialize()
                                async with anyio.create_task_group() as tg:
                                    tg.start_soon(acker, s1)
                                    tg.start_soon(call, s1, "A")
                                    tg.start_soon(call, s2, "B")

    anyio.run(main)

    assert out["A"]["ticks"] == n and out["B"]["ticks"] == n
    assert out["A"]["pid"] == out["B"]["pid"], "one rollout key must be one child"
    ticks = [e for e in events if e[1] is not None]
    assert sorted(ticks) == sorted((c, i) for c in "AB" for i in range(n)), events
    # interleaved round by round: every tick i of both calls before any tick i+1
    rounds = [i for _, i in ticks]
    assert rounds == sorted(rounds), events
    # each call's notifications all arrived before the OTHER call's tool finished
    done = {c: events.index((c, None)) for c in "AB"}
    for c, other in (("A", "B"), ("B", "A")):
        last_tick = max(events.index((c, i)) for i in range(n))
        assert last_tick < done[other], events


# ==========================================================================
# 4. Cancellation: closing an SSE response closes the upstream request
# ==========================================================================
def _read_until(sock: socket.socket, pred, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while not pred(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout} s; got {buf[:500]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed early; got {buf[:500]!r}")
        buf += chunk
    return buf


def _sse_track_records(rm, key, tag):
    path = os.path.join(rm.child_dir(key), "sse_track.log")
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    return [r for r in (json.loads(x) for x in lines if x.strip()) if r["tag"] == tag]


def _clean_conn_response(rm, key) -> dict:
    """GET /conn on a fresh client connection; asserts the response is exactly one
    well-formed 200 with a JSON body and nothing else on the wire."""
    req = f"GET /conn?vf_state_secret={key} HTTP/1.1\r\nHost: 127.0.0.1:{rm.port}\r\n\r\n".encode()
    raw = raw_http(rm.port, req, timeout=10)
    assert status_of(raw) == 200, raw[:300]
    head, _, body = raw.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)\r?$", head)
    assert m, head
    assert len(body) == int(m.group(1)), f"extra or missing bytes after the head: {raw!r}"
    assert b"event" not in raw and b"data:" not in raw, raw
    got = json.loads(body)
    hdr = re.search(rb"(?im)^x-conn-id:\s*(\d+)\r?$", head)
    assert hdr and int(hdr.group(1)) == got["conn_id"], head
    return got


@pytest.mark.parametrize("how", ["close", "rst", "shut_wr", "httpx"])
def test_closing_an_sse_stream_cancels_the_upstream_request(raw_rm, how):
    """A client reads 2 events of a 1000-event SSE stream (one every 50 ms, ~50 s in
    all) and goes away (close, reset, half-close, or an httpx stream left early). The
    child sees its connection end within 5 s, having sent far fewer events; the next
    requests for the key are served on other upstream connections, cleanly (no
    leftover SSE bytes), and a new stream works end to end."""
    rm = raw_rm
    key = _new_key(f"cancel-{how}")
    tag = uuid.uuid4().hex
    pid = rm.info(key)["pid"]
    target = f"/sse_track?vf_state_secret={key}&n=1000&interval_ms=50&tag={tag}"
    second_event = f"data: {tag} event 1 ".encode()

    if how == "httpx":
        with rm.client() as c:
            with c.stream("GET", rm.url + target) as r:
                assert r.status_code == 200
                assert r.headers["content-type"] == "text/event-stream"
                cancelled_conn = int(r.headers["x-conn-id"])
                seen = 0
                for line in r.iter_lines():
                    if line.startswith(f"data: {tag} event"):
                        seen += 1
                        if seen == 2:
                            break
                t_close = time.time()
            # leaving the block closes the (not fully read) response's connection
    else:
        s = socket.create_connection(("127.0.0.1", rm.port), timeout=10)
        try:
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{rm.port}\r\n\r\n".encode())
            buf = _read_until(s, lambda b: second_event in b, 10)
            assert status_of(buf) == 200, buf[:300]
            m = re.search(rb"(?im)^x-conn-id:\s*(\d+)\r?$", buf.partition(b"\r\n\r\n")[0])
            assert m, buf[:500]
            cancelled_conn = int(m.group(1))
            t_close = time.time()
            if how == "rst":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif how == "shut_wr":
                s.shutdown(socket.SHUT_WR)
        finally:
            if how != "shut_wr":
                s.close()
    try:
        # The child saw the disconnect, promptly.
        recs = wait_until(
            lambda: _sse_track_records(rm, key, tag), 5.0, interval=0.02, what="the child to see the stream end"
        )
        assert len(recs) == 1, recs
        rec = recs[0]
        assert rec["outcome"] in ("eof", "write-failed"), rec
        assert rec["conn_id"] == cancelled_conn, rec
        assert rec["t_end"] - t_close < 5.0, rec
        assert 2 <= rec["sent"] < 200, rec  # 1000 if the stream had run to its end
        if how == "shut_wr":
            # ringmux treats the half-closed client as gone and closes it too
            # (recv drains what was already sent, then sees EOF; a timeout fails)
            s.settimeout(5.0)
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    finally:
        if how == "shut_wr":
            s.close()

    # Next requests for the key: fresh connections (likely hitting the same worker as
    # the cancelled one) and one keep-alive connection; never the cancelled upstream.
    for _ in range(6):
        got = _clean_conn_response(rm, key)
        assert got["pid"] == pid
        assert got["conn_id"] != cancelled_conn, got
    conn = http.client.HTTPConnection("127.0.0.1", rm.port, timeout=10)
    try:
        for _ in range(4):
            conn.request("GET", f"/conn?vf_state_secret={key}")
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, body
            got = json.loads(body)
            assert got["pid"] == pid and got["conn_id"] != cancelled_conn, got
    finally:
        conn.close()

    # A new stream for the key runs to its end, event by event, with nothing stale in it.
    tag2 = uuid.uuid4().hex
    with rm.client() as c:
        with c.stream("GET", rm.path_url("/sse_track", key, f"n=3&interval_ms=20&tag={tag2}")) as r:
            assert r.status_code == 200
            assert int(r.headers["x-conn-id"]) != cancelled_conn
            data = [line for line in r.iter_lines() if line.startswith("data:")]
    assert [d.split(" conn=")[0] for d in data] == [f"data: {tag2} event {i}" for i in range(3)]
    # (the child records the stream just after writing its last chunk)
    recs2 = wait_until(lambda: _sse_track_records(rm, key, tag2), 5.0, what="the new stream's record")
    assert [r["outcome"] for r in recs2] == ["complete"], recs2
    # the cancelled stream was recorded once, and nothing else is running for it
    assert len(_sse_track_records(rm, key, tag)) == 1
    assert rm.info(key)["pid"] == pid


# ==========================================================================
# 5. End-to-end headers
# ==========================================================================
LONG_VALUE = "".join(chr(33 + (i * 7) % 94) for i in range(4096)).replace(",", ".")


def test_request_headers_reach_child_byte_for_byte_in_order(raw_rm):
    """MCP and other end-to-end request headers, written on a raw socket with odd
    case, internal spaces and a tab, punctuation and a 4 KiB value, arrive at the
    child as the same lines in the same order; only Host is rewritten (in place)."""
    rm = raw_rm
    key = _new_key("hdrs")
    info = rm.info(key)
    sent = [
        ("Mcp-Session-Id", "3F2a9c-Sess_ION.x~y:42"),
        ("MCP-Protocol-Version", "2025-11-25"),
        ("Accept", "application/json, text/event-stream;q=0.9, */*;q=0.1"),
        ("Last-Event-ID", "stream 7 / event 0042"),
        ("mcp-method", "tools/call"),
        ("MCP-NAME", "My Tool  Name\twith tab"),
        ("Authorization", "Bearer a.b-c_d~e+f/g="),
        ("X-Unknown-Thing", 'Value With  Two  Spaces, "quoted, comma"; semi=colon (paren) [br] {c} @#$%^&*!?|\\`\''),
        ("x-lower-case", "MiXeD CaSe VaLuE"),
        ("X-Long-Value", LONG_VALUE),
        ("X-Empty-Not", "0"),
        ("X-Utf8-Bytes", "caf\xc3\xa9 \xe2\x9c\x93"),  # raw UTF-8 bytes (latin-1 view)
    ]
    lines = [f"GET /headers?vf_state_secret={key} HTTP/1.1", f"Host: 127.0.0.1:{rm.port}"]
    lines += [f"{k}: {v}" for k, v in sent]
    raw = raw_http(rm.port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), timeout=10)
    assert status_of(raw) == 200, raw[:300]
    got = json.loads(raw.partition(b"\r\n\r\n")[2])
    raw_head = got["raw_head"]
    assert raw_head.endswith("\r\n\r\n"), raw_head[-200:]
    received = raw_head[: -len("\r\n\r\n")].split("\r\n")
    assert received[0] == f"GET /headers?vf_state_secret={key} HTTP/1.1"
    # Host is replaced in place (it was first) ...
    assert received[1] == f"Host: {rm.expected_child_host(info['child_addr'])}"
    # ... every other line is exactly what we sent, in our order; ringmux may only add
    # framing for the child (there is no body here, so it should add none).
    framing = re.compile(r"(?i)^(content-length|transfer-encoding):")
    assert [x for x in received[2:] if not framing.match(x)] == [f"{k}: {v}" for k, v in sent]
    assert len(LONG_VALUE) == 4096 and f"X-Long-Value: {LONG_VALUE}" in received


def test_response_headers_reach_client_byte_for_byte_in_order(raw_rm):
    """Headers the child sets (Mcp-Session-Id, MCP-Protocol-Version, Cache-Control,
    unknown X- headers, a 4 KiB value) reach a raw-socket client as the same lines in
    the same order, and the body is intact."""
    rm = raw_rm
    key = _new_key("resp-hdrs")
    want = [
        ["Mcp-Session-Id", "Sess-XYZ.abc_123~9f/Qq="],
        ["MCP-Protocol-Version", "2025-06-18"],
        ["Content-Type", "application/json; charset=utf-8"],
        ["Cache-Control", "no-cache, no-store, must-revalidate, max-age=0"],
        ["X-Unknown-Resp", 'Some  Value, with "punctuation"; and=equals\tand tab'],
        ["x-lower-resp", "lower name, UPPER VALUE"],
        ["X-Long-Resp", LONG_VALUE],
    ]
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}})
    spec = json.dumps({"status": 200, "headers": want, "body": body}).encode()
    req = (
        f"POST /respond?vf_state_secret={key} HTTP/1.1\r\nHost: 127.0.0.1:{rm.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(spec)}\r\n\r\n"
    ).encode() + spec
    raw = raw_http(rm.port, req, timeout=10)
    assert status_of(raw) == 200, raw[:300]
    head, _, got_body = raw.partition(b"\r\n\r\n")
    assert got_body == body.encode()
    lines = head.decode("latin-1").split("\r\n")[1:]
    # raw_child's own Server/Date, and framing, are not ours to compare
    ignore = re.compile(r"(?i)^(server|date|content-length|connection|keep-alive):")
    assert [x for x in lines if not ignore.match(x)] == [f"{k}: {v}" for k, v in want]
    assert f"Content-Length: {len(body)}" in lines


def test_sdk_session_id_round_trips_across_many_requests(transport_ringmux):
    """A real SDK session through ringmux: the Mcp-Session-Id the child's MCPServer
    assigned is the one the client saw, and the one every later request (a dozen tool
    calls, the notification, the GET stream, the final DELETE) carried back to that
    child, with the negotiated MCP-Protocol-Version; and every request the client
    made arrived at the child."""
    rm = transport_ringmux
    key = _new_key("sessid")
    client_log: list[dict] = []

    async def on_request(request):
        client_log.append(
            {
                "method": request.method,
                "session_id": request.headers.get("mcp-session-id"),
                "protocol_version": request.headers.get("mcp-protocol-version"),
            }
        )

    async def main():
        http_client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(30.0, read=300.0),
            event_hooks={"request": [on_request]},
        )
        assigned = []

        async def on_response(response):
            sid = response.headers.get("mcp-session-id")
            if sid:
                assigned.append(sid)

        http_client.event_hooks["response"] = [on_response]
        with anyio.fail_after(40):
            async with http_client:
                async with streamable_http_client(_mcp_url(rm.url, key), http_client=http_client) as (read, write):
                    async with ClientSession(read, write, read_timeout_seconds=MCP_OP_TIMEOUT) as s:
                        init = await s.initialize()
                        pids = set()
                        for _ in range(12):
                            pids.add(tool_json(await s.call_tool("whoami", {}))["pid"])
        return init, pids, assigned

    init, pids, assigned = anyio.run(main)
    assert len(pids) == 1
    version = init.protocol_version
    child_log = rm.get("/transport-log", key).json()
    mcp_log = [e for e in child_log if e["path"] == "/mcp"]

    # The child assigned one id, on its answer to the first request (initialize) ...
    first = mcp_log[0]
    assert first["method"] == "POST" and first["session_id"] is None and first["status"] == 200, mcp_log
    sid = first["response_session_id"]
    assert sid and isinstance(sid, str)
    assert all(e["response_session_id"] in (None, sid) for e in mcp_log), mcp_log
    # ... the client saw exactly it ...
    assert assigned and set(assigned) == {sid}, (assigned, sid)
    # ... and every later request carried it back, to this child, with the version.
    assert len(mcp_log) >= 14, mcp_log
    for e in mcp_log[1:]:
        assert e["session_id"] == sid, e
        assert e["protocol_version"] == version, e
        assert e["query"] == f"vf_state_secret={key}", e
        assert e["status"] is not None and 200 <= e["status"] < 300, e
    assert mcp_log[-1]["method"] == "DELETE", mcp_log[-1]
    # Client side: the same requests, the same headers, none lost or duplicated.
    assert client_log[0]["session_id"] is None
    assert all(c["session_id"] == sid for c in client_log[1:]), client_log
    # (the GET stream and the POSTs run concurrently: compare as multisets)
    assert sorted((c["method"], c["session_id"] or "", c["protocol_version"] or "") for c in client_log) == sorted(
        (e["method"], e["session_id"] or "", e["protocol_version"] or "") for e in mcp_log
    ), (client_log, mcp_log)


# ==========================================================================
# 6. Isolation as the seed's users check it
# ==========================================================================
async def _two_overlapping_rollouts(url_a: str, url_b: str, sync_dir) -> dict:
    """Rollout A stores "value-A" in the child's module global and sleeps 0.5 s;
    B starts as soon as A has stored (A's progress notification), while A sleeps,
    and stores "value-B". A reads the global back only after B has stored (B
    touches a file after storing, A waits for that file after its sleep), so the
    two calls overlap the same way on every run."""
    b_stored = os.path.join(sync_dir, f"b-stored-{uuid.uuid4().hex}")
    out = {}
    with anyio.fail_after(40):
        async with streamable_http_client(url_a) as (ra, wa), streamable_http_client(url_b) as (rb, wb):
            async with ClientSession(ra, wa, read_timeout_seconds=20) as sa, ClientSession(
                rb, wb, read_timeout_seconds=20
            ) as sb:
                await sa.initialize()
                await sb.initialize()
                a_stored = anyio.Event()

                async def on_progress_a(progress, total, message):
                    if message == "stored":
                        a_stored.set()

                async def run_a():
                    res = await sa.call_tool(
                        "store_sleep_read",
                        {"value": "value-A", "sleep_s": 0.5, "wait_path": b_stored},
                        progress_callback=on_progress_a,
                    )
                    out["A"] = tool_json(res)
                    out["A_done"] = time.monotonic()

                async def run_b():
                    await a_stored.wait()
                    out["B_start"] = time.monotonic()
                    res = await sb.call_tool(
                        "store_sleep_read", {"value": "value-B", "sleep_s": 0.5, "signal_path": b_stored}
                    )
                    out["B"] = tool_json(res)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(run_a)
                    tg.start_soon(run_b)
    assert out["B_start"] < out["A_done"], "B must have started while A was running"
    return out


@pytest.mark.timeout(120)
def test_module_global_isolated_through_ringmux_but_not_on_one_shared_server(
    transport_ringmux, standalone, tmp_path
):
    """The seed's isolation check, with the official SDK: two rollouts write a module
    global at overlapping times. Through ringmux (two keys) each reads its own value
    back, from two different processes. The very same calls against ONE shared server
    of the same app (uvicorn directly, no ringmux) show the failure ringmux exists to
    prevent: A reads B's value."""
    rm = transport_ringmux
    sync = tmp_path / "sync"
    sync.mkdir()
    ka, kb = _new_key("iso-A"), _new_key("iso-B")
    via = anyio.run(_two_overlapping_rollouts, _mcp_url(rm.url, ka), _mcp_url(rm.url, kb), str(sync))
    assert via["A"]["read"] == "value-A", via
    assert via["B"]["read"] == "value-B", via
    assert via["A"]["pid"] != via["B"]["pid"]
    assert {via["A"]["pid"], via["B"]["pid"]} <= set(rm.child_pids())

    shared = standalone(TRANSPORT_CMD)
    wait_http_ok(shared.url + "/transport-log")
    direct = anyio.run(_two_overlapping_rollouts, _mcp_url(shared.url, None), _mcp_url(shared.url, None), str(sync))
    assert direct["A"]["pid"] == direct["B"]["pid"] == shared.proc.pid
    assert direct["B"]["read"] == "value-B", direct
    assert direct["A"]["read"] == "value-B", f"one shared server should leak B's value into A: {direct}"
    shared.stop()
