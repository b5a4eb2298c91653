#!/usr/bin/env python3
"""Stdlib-only HTTP/1.1 test child for ringmux.

Serves on the already-listening socket it inherits as fd 3 (the ringmux child
contract). Threaded, keep-alive. Endpoints:

  GET  /state              -> the process-global value (text)
  PUT|POST /state          -> body becomes the process-global value; answers "ok"
  GET  /info               -> JSON {pid, ppid, cwd, fds, listen_fds, child_addr, argv}
  GET  /headers            -> JSON {method, path, query, headers: [[name, value], ...]}
  GET  /sse?n=&interval_ms= -> chunked text/event-stream, one event per interval
  POST /mkfiles?n=&dirs=   -> create n one-byte files in nested dirs under cwd
  POST|PUT /echo           -> JSON {len, sha256} of the request body (chunked or not)
  GET  /blob?size=         -> size deterministic bytes (application/octet-stream)
  GET  /listdir            -> JSON list of all relative paths under cwd
  POST /exit               -> answers 'bye', then the process exits (crash simulation)
  GET  /sleep?ms=&marker=  -> (creates file <marker> in cwd if given) sleeps ms, answers 'slept'
  POST /die                -> the process exits at once, without answering
  GET  /conn               -> JSON {conn_id, request_no, pid}: which accepted connection
                              (numbered 1, 2, ... per process) served this request, and
                              the how-manieth request on that connection it is; also
                              sent as the response header X-Conn-Id
  GET  /sse_track?n=&interval_ms=&tag=
                           -> like /sse (header X-Conn-Id too), but watches its connection:
                              when the peer closes (EOF seen between events) or a write
                              fails, it stops and records {tag, conn_id, sent, outcome,
                              t_end} (sent = events fully written; outcome = complete |
                              eof | write-failed) in memory and as a JSON line appended
                              to ./sse_track.log
  GET  /sse_log            -> JSON list of those records
  POST /respond            -> answers with what the JSON body asks for:
                              {"status": 200, "headers": [[name, value], ...], "body": "..."}
                              (headers sent in that order, byte for byte; Content-Length
                              is added)
  anything else            -> 404

GET /headers also returns "raw_head": the request line and header lines exactly as
received on the socket (latin-1 decoded, CRLFs kept).

Modes (argv):
  --delay-start SECONDS   sleep before accepting (ready-timeout tests)
  --exit-now              exit(3) at once without accepting (failing-child tests)
  --never-accept          sleep forever without accepting
  --close-listener        close fd 3 at once, then sleep forever (connects are refused)
  --spawn-log PATH        append one line "<pid>\n" at every start (before any mode)
  --touch NAME            create the file NAME (one byte) in cwd at start (before any mode)
"""

import hashlib
import json
import os
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STATE = {"value": b""}
STATE_LOCK = threading.Lock()
STARTUP_FDS: list = []
# AF_UNIX or AF_INET: what ringmux handed over as fd 3 (--child-socket).
FD3_FAMILY = ""
CONN_COUNTER = [0]
CONN_LOCK = threading.Lock()
SSE_LOG: list = []
SSE_LOG_LOCK = threading.Lock()
STARTUP_FD_TARGETS: dict = {}


def snapshot_fds() -> None:
    """Record the fds the process was started with (before we open anything)."""
    names = os.listdir("/proc/self/fd")
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listdir handle itself, already closed
        STARTUP_FDS.append(int(name))
        STARTUP_FD_TARGETS[name] = target
    STARTUP_FDS.sort()


def blob_bytes(size: int) -> bytes:
    """Deterministic pseudo-random bytes (tests recompute the same sha256)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


class HeadRecorder:
    """Wraps rfile: records the raw bytes of each request head (request line and
    header lines up to the blank line) as read; everything else passes through."""

    def __init__(self, f):
        self._f = f
        self.raw = bytearray()
        self.recording = True

    def start(self):
        self.raw = bytearray()
        self.recording = True

    def readline(self, *args):
        line = self._f.readline(*args)
        if self.recording:
            self.raw += line
            # a blank line ends the head (a bare request line before it never is blank)
            if line in (b"\r\n", b"\n", b"") and len(self.raw) > len(line):
                self.recording = False
        return line

    def read(self, *args):
        return self._f.read(*args)

    def __getattr__(self, name):
        return getattr(self._f, name)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "raw_child/1"

    def log_message(self, fmt, *args):  # keep stderr quiet
        pass

    def setup(self):
        super().setup()
        with CONN_LOCK:
            CONN_COUNTER[0] += 1
            self.conn_id = CONN_COUNTER[0]
        self.request_no = 0
        self.rfile = HeadRecorder(self.rfile)

    def handle_one_request(self):
        self.rfile.start()
        self.request_no += 1
        super().handle_one_request()

    # ---- helpers -------------------------------------------------------
    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            chunks = []
            while True:
                line = self.rfile.readline()
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # trailers until blank line
                    while True:
                        t = self.rfile.readline()
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after chunk
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _json(self, obj) -> None:
        self._send(200, json.dumps(obj).encode(), "application/json")

    def _route(self):
        parts = urlsplit(self.path)
        return parts.path, parts.query, parse_qs(parts.query)

    # ---- methods -------------------------------------------------------
    def do_GET(self):
        path, query, qs = self._route()
        if path == "/state":
            with STATE_LOCK:
                self._send(200, STATE["value"])
        elif path == "/info":
            fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
            # listdir itself opens one fd for the directory; drop fds that
            # no longer exist (the listing's own handle).
            fds = [fd for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")]
            self._json(
                {
                    "pid": os.getpid(),
                    "ppid": os.getppid(),
                    "cwd": os.getcwd(),
                    "fds": fds,
                    "startup_fds": STARTUP_FDS,
                    "startup_fd_targets": STARTUP_FD_TARGETS,
                    "listen_fds": os.environ.get("LISTEN_FDS"),
                    "child_addr": os.environ.get("RINGMUX_CHILD_ADDR"),
                    "fd3_family": FD3_FAMILY,
                    "argv": sys.argv,
                }
            )
        elif path == "/headers":
            self._json(
                {
                    "method": self.command,
                    "path": path,
                    "query": query,
                    "request_line": self.requestline,
                    "headers": [[k, v] for k, v in self.headers.items()],
                    "raw_head": bytes(self.rfile.raw).decode("latin-1"),
                }
            )
        elif path == "/conn":
            body = json.dumps(
                {"conn_id": self.conn_id, "request_no": self.request_no, "pid": os.getpid()}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Conn-Id", str(self.conn_id))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        elif path == "/sse_track":
            self._sse_track(qs)
        elif path == "/sse_log":
            with SSE_LOG_LOCK:
                self._json(list(SSE_LOG))
        elif path == "/sse":
            n = int(qs.get("n", ["5"])[0])
            interval = int(qs.get("interval_ms", ["200"])[0]) / 1000.0
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for i in range(n):
                data = f"id: {i}\ndata: event {i} t={time.time():.6f}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                if i + 1 < n:
                    time.sleep(interval)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        elif path == "/blob":
            size = int(qs.get("size", ["1048576"])[0])
            self._send(200, blob_bytes(size), "application/octet-stream")
        elif path == "/listdir":
            out = []
            for root, dirs, files in os.walk("."):
                for name in dirs + files:
                    out.append(os.path.relpath(os.path.join(root, name), "."))
            self._json(sorted(out))
        elif path == "/sleep":
            marker = qs.get("marker", [""])[0]
            if marker:
                with open(os.path.basename(marker), "wb") as f:
                    f.write(b"x")
            time.sleep(int(qs.get("ms", ["1000"])[0]) / 1000.0)
            self._send(200, b"slept")
        else:
            self._send(404, b"not found")

    def _peer_closed_within(self, timeout: float) -> bool:
        """Wait up to timeout; True as soon as the peer's EOF/reset is seen."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([self.connection], [], [], left)
            if not r:
                return False
            try:
                data = self.connection.recv(1, socket.MSG_PEEK)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except OSError:
                return True
            if not data:
                return True
            # Bytes from the peer during our response (unexpected): ignore them.
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False

    def _sse_track(self, qs):
        n = int(qs.get("n", ["1000"])[0])
        interval = int(qs.get("interval_ms", ["50"])[0]) / 1000.0
        tag = qs.get("tag", [""])[0]
        sent = 0
        outcome = "complete"
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("X-Conn-Id", str(self.conn_id))
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for i in range(n):
                data = f"id: {i}\ndata: {tag} event {i} conn={self.conn_id}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                sent += 1
                if i + 1 < n and self._peer_closed_within(interval):
                    outcome = "eof"
                    break
            if outcome == "complete":
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except OSError:
            outcome = "write-failed"
        rec = {"tag": tag, "conn_id": self.conn_id, "sent": sent, "outcome": outcome, "t_end": time.time()}
        with SSE_LOG_LOCK:
            SSE_LOG.append(rec)
            with open("sse_track.log", "a") as f:
                f.write(json.dumps(rec) + "\n")
        if outcome != "complete":
            self.close_connection = True

    def _respond(self):
        spec = json.loads(self._read_body() or b"{}")
        body = spec.get("body", "").encode()
        self.send_response(int(spec.get("status", 200)))
        for name, value in spec.get("headers", []):
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_PUT(self):
        path, _, _ = self._route()
        self.do_PUT_like(path)

    def do_POST(self):
        path, _, qs = self._route()
        if path == "/exit":
            self._read_body()
            self._exit_soon()
        elif path == "/die":
            self._read_body()
            os._exit(9)
        elif path == "/respond":
            self._respond()
        elif path == "/mkfiles":
            self._read_body()
            n = int(qs.get("n", ["5000"])[0])
            ndirs = int(qs.get("dirs", ["10"])[0])
            made = 0
            for i in range(n):
                d = os.path.join(f"d{i % ndirs}", f"s{(i // ndirs) % 5}")
                if i < ndirs * 5:
                    os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, f"f{i}"), "wb") as f:
                    f.write(b"x")
                made += 1
            self._json({"made": made})
        else:
            self.do_PUT_like(path)

    def do_PUT_like(self, path):
        # PUT, and POST /state and POST /echo: store the body / echo its digest
        body = self._read_body()
        if path == "/state":
            with STATE_LOCK:
                STATE["value"] = body
            self._send(200, b"ok")
        elif path == "/echo":
            self._json({"len": len(body), "sha256": hashlib.sha256(body).hexdigest()})
        else:
            self._send(404, b"not found")

    def _exit_soon(self):
        self._send(200, b"bye")
        threading.Timer(0.05, lambda: os._exit(7)).start()

    def do_DELETE(self):
        self._read_body()
        self._send(200, b"deleted")


class FdServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket):
        # Skip bind/listen: the socket is already bound and listening.
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock


def main(argv):
    snapshot_fds()
    args = list(argv[1:])
    if "--spawn-log" in args:
        path = args[args.index("--spawn-log") + 1]
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
    if "--touch" in args:
        with open(args[args.index("--touch") + 1], "wb") as f:
            f.write(b"x")
    if "--exit-now" in args:
        sys.exit(3)
    if "--close-listener" in args:
        os.close(3)
    if "--never-accept" in args or "--close-listener" in args:
        while True:
            time.sleep(3600)
    if "--delay-start" in args:
        time.sleep(float(args[args.index("--delay-start") + 1]))
    sock = socket.socket(fileno=3)
    global FD3_FAMILY
    FD3_FAMILY = sock.family.name
    server = FdServer(sock)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
