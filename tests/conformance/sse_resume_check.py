"""Extra check (not part of the official suite): SSE resumption and session end over HTTP.

The suite's `server-sse-polling` scenario is meant to test "server closes the POST SSE
stream mid-call, client resumes with GET + Last-Event-ID", but in
@modelcontextprotocol/conformance 0.1.16 it sends `MCP-Protocol-Version: 2025-03-26` on
that POST, and the Python SDK only closes streams (and sends priming events) for
clients at >= 2025-11-25 (older clients cannot resume), so that path never runs. This
check drives it with the right version, on the fixture's `test_reconnection` tool:

  1. POST initialize (2025-11-25)                    -> 200, Mcp-Session-Id
  2. POST notifications/initialized                  -> 202
  3. POST tools/call test_reconnection (SSE)         -> 200 text/event-stream, a priming
     event (id, empty data, retry), then the server closes the stream without the result
  4. GET with Last-Event-ID: <last id seen>          -> 200 text/event-stream replaying
     the rest of the stream, including the JSON-RPC result for id 1
  5. DELETE with the session id                      -> 200
  6. POST ping with the deleted session id           -> 404

Usage: sse_resume_check.py URL    (exit 0 = pass; one line per step on stdout)
"""

from __future__ import annotations

import json
import sys

import httpx

PV = "2025-11-25"


def sse_events(resp: httpx.Response):
    event: dict[str, str] = {}
    for line in resp.iter_lines():
        if line == "":
            if event:
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        event[key] = event[key] + "\n" + value if key == "data" and key in event else value
    if event:
        yield event


def is_result_for(event: dict[str, str], rid: int) -> bool:
    try:
        msg = json.loads(event.get("data") or "null")
    except ValueError:
        return False
    return isinstance(msg, dict) and msg.get("id") == rid and "result" in msg


def main(url: str) -> int:
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": PV,
    }
    failures: list[str] = []

    def step(ok: bool, what: str) -> bool:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)
        return ok

    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        r = client.post(
            url,
            headers=headers,
            json={
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": PV,
                    "capabilities": {},
                    "clientInfo": {"name": "ringmux-sse-resume-check", "version": "1"},
                },
            },
        )
        sid = r.headers.get("mcp-session-id")
        if not step(r.status_code == 200 and bool(sid), f"initialize -> {r.status_code}, session id {'set' if sid else 'missing'}"):
            return 1
        headers["mcp-session-id"] = sid

        r = client.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        step(r.status_code == 202, f"notifications/initialized -> {r.status_code}")

        last_id = None
        primed = got_result_on_post = False
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "test_reconnection", "arguments": {}}}
        with client.stream("POST", url, headers=headers, json=call) as resp:
            ctype = resp.headers.get("content-type", "")
            step(resp.status_code == 200 and ctype.startswith("text/event-stream"), f"tools/call -> {resp.status_code} {ctype}")
            for i, ev in enumerate(sse_events(resp)):
                last_id = ev.get("id", last_id)
                if i == 0 and ev.get("id") and ev.get("data", "") == "" and "retry" in ev:
                    primed = True
                got_result_on_post |= is_result_for(ev, 1)
        step(primed, "POST stream starts with a priming event (id, empty data, retry)")
        step(not got_result_on_post and last_id is not None, f"server closed the POST stream before the result (last event id {last_id})")

        got_result_on_get = False
        if last_id is not None and not got_result_on_post:
            get_headers = {**headers, "accept": "text/event-stream", "last-event-id": last_id}
            with client.stream("GET", url, headers=get_headers) as resp:
                ctype = resp.headers.get("content-type", "")
                step(resp.status_code == 200 and ctype.startswith("text/event-stream"), f"GET Last-Event-ID: {last_id} -> {resp.status_code} {ctype}")
                for ev in sse_events(resp):
                    if is_result_for(ev, 1):
                        got_result_on_get = True
                        break
        step(got_result_on_get, "the tool result is replayed on the GET stream")

        r = client.delete(url, headers=headers)
        step(r.status_code == 200, f"DELETE session -> {r.status_code}")
        r = client.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "ping"})
        step(r.status_code == 404, f"ping on the deleted session -> {r.status_code}")

    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except Exception as exc:  # a transport error is a failed check, not a crash of the script
        print(f"  FAIL {type(exc).__name__}: {exc}")
        sys.exit(1)
