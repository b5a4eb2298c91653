//! The built-in demo MCP child.
//!
//! `ringmux serve --demo` spawns `ringmux demo-child` once per rollout and hands
//! it a bound, listening TCP socket; [`serve`] then runs a small but real MCP
//! server (Streamable HTTP transport, plain JSON responses) on it. Its tool state
//! lives in the process, so every rollout sees only its own state — the point of
//! the demo.
//!
//! The HTTP side is deliberately simple: one thread per connection, blocking
//! I/O, HTTP/1.1 keep-alive and pipelining, `Content-Length` or chunked request
//! bodies, `Expect: 100-continue`.
//!
//! Routes:
//! - `POST /mcp` — one JSON-RPC 2.0 message (batches are rejected with -32600).
//! - `GET /mcp` → 405 (`Allow: POST`), `DELETE /mcp` → 200.
//! - `GET /healthz` → 200 `ok`.
//! - `GET /sse?n=N&interval_ms=M` — a chunked `text/event-stream` of N events.
//! - `GET /blob?bytes=N` — N bytes of `application/octet-stream` (for large-body
//!   benchmarks; capped at 16 MiB).
//! - anything else → 404.
//!
//! Error conventions for `tools/call`: an unknown tool name, or missing/ill-typed
//! `name`/`arguments`, is a JSON-RPC error -32602; a known tool given bad
//! arguments (or failing while running) returns a normal result with
//! `isError: true`, so the model can read the message and retry.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Idle connections (and stalled peers) are dropped after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest request head (request line + headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 64;
/// Longest chunk-size or trailer line in a chunked body.
const MAX_LINE: usize = 8 * 1024;
/// Most trailer fields after a chunked body.
const MAX_TRAILERS: usize = 64;

const SUPPORTED_PROTOCOL_VERSIONS: [&str; 4] =
    ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
const DEFAULT_PROTOCOL_VERSION: &str = "2025-06-18";

const MAX_WRITE_FILES: u64 = 100_000;
const MAX_WRITE_DIRS: u64 = 256;
const MAX_SSE_EVENTS: u64 = 100_000;
const MAX_SSE_INTERVAL_MS: u64 = 60_000;
const DEFAULT_SSE_EVENTS: u64 = 5;
const DEFAULT_SSE_INTERVAL_MS: u64 = 100;
const DEFAULT_BLOB: usize = 64 * 1024;
const MAX_BLOB: usize = 16 * 1024 * 1024;

const INSTRUCTIONS: &str = "ringmux demo MCP server. Every rollout gets its own server process, \
so state is private to the rollout: a value stored with scratch_write is returned by \
scratch_read only within the same rollout. Tools: scratch_write, scratch_read, echo, whoami, \
write_files.";

/// The per-process (= per-rollout) scratch slot.
static SCRATCH: Mutex<String> = Mutex::new(String::new());

/// Serve the demo MCP server on `listener` until the process is killed. Thread per connection, blocking I/O, HTTP/1.1 keep-alive.
///
/// Returns only if `accept` fails in a way that retrying cannot fix (for example the
/// descriptor is not a listening socket). Transient failures (aborted connections,
/// descriptor or memory exhaustion) are retried after a short pause.
pub fn serve(listener: TcpListener) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => {
                let spawned =
                    std::thread::Builder::new()
                        .name("demo-conn".into())
                        .spawn(move || {
                            if let Err(e) = handle_connection(stream) {
                                if !is_disconnect(&e) {
                                    tracing::warn!("demo child: connection error: {e}");
                                }
                            }
                        });
                if let Err(e) = spawned {
                    tracing::warn!("demo child: cannot spawn connection thread: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Err(e) => match e.raw_os_error() {
                Some(
                    libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EFAULT | libc::EOPNOTSUPP,
                ) => return Err(e),
                _ if e.kind() == ErrorKind::Interrupted => {}
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    tracing::warn!("demo child: accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                // ECONNABORTED, EPROTO, network errors of the pending connection, ...
                _ => {}
            },
        }
    }
}

/// Errors that just mean the peer went away or idled out; not worth logging.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
            | ErrorKind::WouldBlock
            | ErrorKind::TimedOut
    )
}

// ---------------------------------------------------------------------------
// HTTP/1.1 server side
// ---------------------------------------------------------------------------

/// A parsed request with its complete body.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    query: String,
    /// HTTP minor version (0 or 1).
    minor: u8,
    keep_alive: bool,
    body: Vec<u8>,
}

/// What reading the next request produced.
enum Incoming {
    Request(Request),
    /// Clean EOF, idle timeout, or peer vanished mid-request: just close.
    Closed,
    /// The request is unacceptable: answer with this status and close.
    Reject(u16),
}

#[derive(Debug)]
enum BodyError {
    Io(io::Error),
    Eof,
    Malformed,
    TooLarge,
}

impl From<io::Error> for BodyError {
    fn from(e: io::Error) -> Self {
        BodyError::Io(e)
    }
}

/// A blocking stream plus the bytes read from it but not yet consumed.
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Conn<S> {
    fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(8 * 1024),
        }
    }

    /// Reads once more from the stream into `buf`; returns the byte count (0 = EOF).
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes sure at least `n` bytes are buffered.
    fn need(&mut self, n: usize) -> Result<(), BodyError> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(BodyError::Eof);
            }
        }
        Ok(())
    }

    /// Takes one line (without its CRLF or bare LF) off the buffer.
    fn read_line(&mut self) -> Result<Vec<u8>, BodyError> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + pos;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            scanned = self.buf.len();
            if scanned > MAX_LINE {
                return Err(BodyError::Malformed);
            }
            if self.fill()? == 0 {
                return Err(BodyError::Eof);
            }
        }
    }

    /// Decodes a chunked body (the head must already be consumed).
    fn read_chunked(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_field = line.split(|&b| b == b';').next().unwrap_or_default();
            let size_field = trim_ows(size_field);
            if size_field.is_empty() || size_field.len() > 15 {
                return Err(BodyError::Malformed);
            }
            let size_str = std::str::from_utf8(size_field).map_err(|_| BodyError::Malformed)?;
            if !size_str.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BodyError::Malformed);
            }
            let size = usize::from_str_radix(size_str, 16).map_err(|_| BodyError::Malformed)?;
            if size == 0 {
                for _ in 0..=MAX_TRAILERS {
                    if self.read_line()?.is_empty() {
                        return Ok(body);
                    }
                }
                return Err(BodyError::Malformed);
            }
            if body.len().saturating_add(size) > limit {
                return Err(BodyError::TooLarge);
            }
            self.need(size + 2)?;
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(BodyError::Malformed);
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// Reads exactly `len` body bytes.
    fn read_fixed(&mut self, len: usize) -> Result<Vec<u8>, BodyError> {
        self.need(len)?;
        Ok(self.buf.drain(..len).collect())
    }
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The request head, copied out of the parse buffer.
struct Head {
    method: String,
    target: String,
    minor: u8,
    content_length: Option<usize>,
    /// `Some(true)` when the final transfer coding is chunked, `Some(false)` for
    /// any other transfer coding, `None` without `Transfer-Encoding`.
    chunked: Option<bool>,
    conn_close: bool,
    conn_keep_alive: bool,
    expect_continue: bool,
}

/// Parses the complete head at the start of `buf`. `Ok(None)` = incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(431),
        Err(_) => return Err(400),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(400);
    };
    let mut head = Head {
        method: method.to_owned(),
        target: target.to_owned(),
        minor,
        content_length: None,
        chunked: None,
        conn_close: false,
        conn_keep_alive: false,
        expect_continue: false,
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| 400u16)?.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(400);
            }
            let len: usize = value.parse().map_err(|_| 400u16)?;
            match head.content_length {
                Some(prev) if prev != len => return Err(400),
                _ => head.content_length = Some(len),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            head.chunked = Some(last.eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.conn_close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    head.conn_keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            if value.eq_ignore_ascii_case("100-continue") {
                head.expect_continue = true;
            } else {
                return Err(417);
            }
        }
    }
    Ok(Some((head, consumed)))
}

impl Conn<TcpStream> {
    /// Reads the next request (head and complete body) off the connection.
    fn read_request(&mut self) -> io::Result<Incoming> {
        let (head, consumed) = loop {
            if !self.buf.is_empty() {
                match parse_head(&self.buf) {
                    Ok(Some(done)) => break done,
                    Ok(None) if self.buf.len() > MAX_HEAD => return Ok(Incoming::Reject(431)),
                    Ok(None) => {}
                    Err(status) => return Ok(Incoming::Reject(status)),
                }
            }
            match self.fill() {
                Ok(0) => return Ok(Incoming::Closed),
                Ok(_) => {}
                Err(e) if is_disconnect(&e) => return Ok(Incoming::Closed),
                Err(e) => return Err(e),
            }
        };
        self.buf.drain(..consumed);

        let mut keep_alive = if head.minor >= 1 {
            !head.conn_close
        } else {
            head.conn_keep_alive && !head.conn_close
        };
        let framing = match (head.chunked, head.content_length) {
            (Some(false), _) => return Ok(Incoming::Reject(501)),
            (Some(true), _) if head.minor == 0 => return Ok(Incoming::Reject(400)),
            (Some(true), cl) => {
                // Transfer-Encoding wins over Content-Length, but such a message
                // is suspicious (RFC 9112 §6.1): close after answering it.
                if cl.is_some() {
                    keep_alive = false;
                }
                None
            }
            (None, cl) => Some(cl.unwrap_or(0)),
        };
        if matches!(framing, Some(len) if len > MAX_BODY) {
            return Ok(Incoming::Reject(413));
        }
        let has_body = framing != Some(0);
        if head.expect_continue && head.minor >= 1 && has_body {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = match framing {
            Some(len) => self.read_fixed(len),
            None => self.read_chunked(MAX_BODY),
        };
        let body = match body {
            Ok(body) => body,
            Err(BodyError::Malformed) => return Ok(Incoming::Reject(400)),
            Err(BodyError::TooLarge) => return Ok(Incoming::Reject(413)),
            Err(BodyError::Eof) => return Ok(Incoming::Closed),
            Err(BodyError::Io(e)) if is_disconnect(&e) => return Ok(Incoming::Closed),
            Err(BodyError::Io(e)) => return Err(e),
        };

        let (path, query) = match head.target.split_once('?') {
            Some((p, q)) => (p.to_owned(), q.to_owned()),
            None => (head.target, String::new()),
        };
        Ok(Incoming::Request(Request {
            method: head.method,
            path,
            query,
            minor: head.minor,
            keep_alive,
            body,
        }))
    }
}

/// A complete (non-streaming) response.
struct Response {
    status: u16,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16) -> Self {
        Response {
            status,
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn text(status: u16, body: &str) -> Self {
        Response {
            content_type: Some("text/plain; charset=utf-8"),
            body: body.as_bytes().to_vec(),
            ..Response::new(status)
        }
    }

    fn json(status: u16, body: &Value) -> Self {
        Response {
            content_type: Some("application/json"),
            body: body.to_string().into_bytes(),
            ..Response::new(status)
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// The connection header to send: `close`, `keep-alive` (HTTP/1.0 only), or none.
fn connection_header(out: &mut String, keep_alive: bool, minor: u8) {
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    } else if minor == 0 {
        out.push_str("Connection: keep-alive\r\n");
    }
}

fn write_response(
    stream: &mut impl Write,
    resp: &Response,
    keep_alive: bool,
    minor: u8,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    if let Some(ct) = resp.content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    for (name, value) in &resp.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    connection_header(&mut head, keep_alive, minor);
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&resp.body);
    stream.write_all(&out)?;
    stream.flush()
}

/// What a route wants sent back.
enum Reply {
    Full(Response),
    Sse { events: u64, interval: Duration },
}

fn handle_connection(stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux; make sure.
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    loop {
        let req = match conn.read_request()? {
            Incoming::Request(req) => req,
            Incoming::Closed => return Ok(()),
            Incoming::Reject(status) => {
                let resp = Response::text(status, reason(status));
                return write_response(&mut conn.stream, &resp, false, 1);
            }
        };
        let keep_open = match route(&req) {
            Reply::Full(resp) => {
                write_response(&mut conn.stream, &resp, req.keep_alive, req.minor)?;
                req.keep_alive
            }
            Reply::Sse { events, interval } => stream_sse(
                &mut conn.stream,
                events,
                interval,
                req.keep_alive,
                req.minor,
            )?,
        };
        if !keep_open {
            return Ok(());
        }
    }
}

fn route(req: &Request) -> Reply {
    let method = req.method.as_str();
    let resp = match req.path.as_str() {
        "/mcp" => match method {
            "POST" => handle_mcp(&req.body),
            "DELETE" => Response::new(200),
            _ => Response::text(405, "method not allowed").header("Allow", "POST"),
        },
        "/healthz" => match method {
            "GET" => Response::text(200, "ok"),
            _ => Response::text(405, "method not allowed").header("Allow", "GET"),
        },
        "/sse" => match method {
            "GET" => match parse_sse_query(&req.query) {
                Some((events, interval)) => return Reply::Sse { events, interval },
                None => Response::text(400, "bad query: expected n=<int>&interval_ms=<int>"),
            },
            _ => Response::text(405, "method not allowed").header("Allow", "GET"),
        },
        "/blob" => match method {
            "GET" => match parse_blob_query(&req.query) {
                Some(bytes) => Response {
                    content_type: Some("application/octet-stream"),
                    body: vec![b'x'; bytes],
                    ..Response::new(200)
                },
                None => Response::text(400, "bad query: expected bytes=<int>"),
            },
            _ => Response::text(405, "method not allowed").header("Allow", "GET"),
        },
        _ => Response::text(404, "not found"),
    };
    Reply::Full(resp)
}

/// `bytes` (default 65536, capped at [`MAX_BLOB`]); a non-integer is `None` (→ 400).
fn parse_blob_query(query: &str) -> Option<usize> {
    let mut bytes = DEFAULT_BLOB;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "bytes" {
            bytes = value.parse::<usize>().ok()?.min(MAX_BLOB);
        }
    }
    Some(bytes)
}

// ---------------------------------------------------------------------------
// /sse
// ---------------------------------------------------------------------------

/// `n` (default 5, capped at 100000) and `interval_ms` (default 100, capped at
/// 60000). Unknown keys are ignored; a non-integer value is `None` (→ 400).
fn parse_sse_query(query: &str) -> Option<(u64, Duration)> {
    let mut events = DEFAULT_SSE_EVENTS;
    let mut interval_ms = DEFAULT_SSE_INTERVAL_MS;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "n" => events = value.parse::<u64>().ok()?.min(MAX_SSE_EVENTS),
            "interval_ms" => interval_ms = value.parse::<u64>().ok()?.min(MAX_SSE_INTERVAL_MS),
            _ => {}
        }
    }
    Some((events, Duration::from_millis(interval_ms)))
}

/// Streams `events` SSE events, one per chunk, each flushed on its own.
/// Returns whether the connection may be reused.
fn stream_sse(
    stream: &mut impl Write,
    events: u64,
    interval: Duration,
    keep_alive: bool,
    minor: u8,
) -> io::Result<bool> {
    // HTTP/1.0 peers cannot take chunked bodies: send raw and close to delimit.
    let chunked = minor >= 1;
    let keep_alive = keep_alive && chunked;
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n",
    );
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    connection_header(&mut head, keep_alive, minor);
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    for i in 0..events {
        if i > 0 {
            std::thread::sleep(interval);
        }
        let event = format!("data: {{\"i\": {i}}}\n\n");
        let frame = if chunked {
            format!("{:x}\r\n{event}\r\n", event.len())
        } else {
            event
        };
        stream.write_all(frame.as_bytes())?;
        stream.flush()?;
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n")?;
        stream.flush()?;
    }
    Ok(keep_alive)
}

// ---------------------------------------------------------------------------
// MCP / JSON-RPC
// ---------------------------------------------------------------------------

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

fn rpc_error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn valid_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

/// Handles one `POST /mcp` body.
fn handle_mcp(body: &[u8]) -> Response {
    let Ok(msg) = serde_json::from_slice::<Value>(body) else {
        return Response::json(400, &rpc_error(Value::Null, PARSE_ERROR, "Parse error"));
    };
    let obj = match msg {
        Value::Object(obj) => obj,
        Value::Array(_) => {
            return Response::json(
                400,
                &rpc_error(
                    Value::Null,
                    INVALID_REQUEST,
                    "Batch requests are not supported",
                ),
            )
        }
        _ => {
            return Response::json(
                400,
                &rpc_error(Value::Null, INVALID_REQUEST, "Invalid Request"),
            )
        }
    };
    let id = obj.get("id").filter(|id| valid_id(id)).cloned();
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Response::json(
            400,
            &rpc_error(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "Invalid Request: jsonrpc must be \"2.0\"",
            ),
        );
    }
    match (obj.get("method"), obj.get("id")) {
        // Notification: accepted, nothing to say.
        (Some(Value::String(_)), None) => Response::new(202),
        (Some(Value::String(method)), Some(_)) if id.is_some() => {
            let id = id.unwrap_or(Value::Null);
            let (reply, session) = dispatch(method, obj.get("params"));
            let body = match reply {
                Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                Err((code, message)) => rpc_error(id, code, &message),
            };
            let resp = Response::json(200, &body);
            match session {
                Some(sid) => resp.header("Mcp-Session-Id", sid),
                None => resp,
            }
        }
        // A response to a server request (we never send any; accept it anyway).
        (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => {
            Response::new(202)
        }
        _ => Response::json(
            400,
            &rpc_error(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "Invalid Request",
            ),
        ),
    }
}

type RpcResult = Result<Value, (i64, String)>;

/// Runs one request; the second value is a new session id (initialize only).
fn dispatch(method: &str, params: Option<&Value>) -> (RpcResult, Option<String>) {
    match method {
        "initialize" => {
            let requested = params
                .and_then(|p| p.get("protocolVersion"))
                .and_then(Value::as_str);
            let version = match requested {
                Some(v) if SUPPORTED_PROTOCOL_VERSIONS.contains(&v) => v,
                _ => DEFAULT_PROTOCOL_VERSION,
            };
            let result = json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "ringmux-demo", "version": env!("CARGO_PKG_VERSION")},
                "instructions": INSTRUCTIONS,
            });
            (Ok(result), Some(new_session_id()))
        }
        "ping" => (Ok(json!({})), None),
        "tools/list" => (Ok(json!({"tools": tool_definitions()})), None),
        "tools/call" => (call_tool(params), None),
        _ => (
            Err((METHOD_NOT_FOUND, format!("Method not found: {method}"))),
            None,
        ),
    }
}

/// 128 random-looking bits as hex: SHA-256 of time, pid, thread and a counter.
fn new_session_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(nanos.to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    let digest = hasher.finalize();
    hex::encode(&digest[..16])
}

fn tool_definitions() -> Value {
    json!([
        {
            "name": "scratch_write",
            "description": "Store a string in this rollout's scratch slot (replaces any previous value).",
            "inputSchema": {
                "type": "object",
                "properties": {"value": {"type": "string", "description": "Value to store."}},
                "required": ["value"]
            }
        },
        {
            "name": "scratch_read",
            "description": "Return the value in this rollout's scratch slot (empty string if nothing was stored).",
            "inputSchema": {"type": "object", "properties": {}}
        },
        {
            "name": "echo",
            "description": "Return the given text unchanged.",
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string", "description": "Text to echo."}},
                "required": ["text"]
            }
        },
        {
            "name": "whoami",
            "description": "Return this server process's pid, parent pid and working directory as JSON (forked children: also the fork server's pid and the query their per-rollout setup got).",
            "inputSchema": {"type": "object", "properties": {}}
        },
        {
            "name": "write_files",
            "description": "Create `count` one-byte files spread round-robin over `dirs` nested \
                            subdirectories (d0, d0/d1, ...) of the working directory; returns the \
                            number of files created.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "count": {
                        "type": "integer", "minimum": 0, "maximum": MAX_WRITE_FILES,
                        "description": "Number of files to create."
                    },
                    "dirs": {
                        "type": "integer", "minimum": 1, "maximum": MAX_WRITE_DIRS, "default": 1,
                        "description": "Nesting depth: number of nested directories to spread the files over."
                    }
                },
                "required": ["count"]
            }
        }
    ])
}

/// A successful tool run: the text content plus optional structured content.
struct ToolOutput {
    text: String,
    structured: Option<Value>,
}

impl ToolOutput {
    fn text(text: impl Into<String>) -> Self {
        ToolOutput {
            text: text.into(),
            structured: None,
        }
    }
}

fn call_tool(params: Option<&Value>) -> RpcResult {
    let Some(params) = params.and_then(Value::as_object) else {
        return Err((INVALID_PARAMS, "tools/call needs a params object".into()));
    };
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err((INVALID_PARAMS, "tools/call needs a string `name`".into()));
    };
    let empty = Map::new();
    let args = match params.get("arguments") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(args)) => args,
        Some(_) => return Err((INVALID_PARAMS, "`arguments` must be an object".into())),
    };
    let outcome = match name {
        "scratch_write" => tool_scratch_write(args),
        "scratch_read" => Ok(tool_scratch_read()),
        "echo" => string_arg(args, "text").map(ToolOutput::text),
        "whoami" => tool_whoami(),
        "write_files" => tool_write_files(args, Path::new(".")),
        _ => return Err((INVALID_PARAMS, format!("Unknown tool: {name}"))),
    };
    Ok(match outcome {
        Ok(out) => {
            let mut result = json!({
                "content": [{"type": "text", "text": out.text}],
                "isError": false,
            });
            if let (Some(structured), Some(obj)) = (out.structured, result.as_object_mut()) {
                obj.insert("structuredContent".into(), structured);
            }
            result
        }
        Err(message) => json!({
            "content": [{"type": "text", "text": message}],
            "isError": true,
        }),
    })
}

fn string_arg(args: &Map<String, Value>, key: &str) -> Result<String, String> {
    match args.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("argument `{key}` must be a string")),
        None => Err(format!("missing required argument `{key}`")),
    }
}

/// A non-negative integer argument in `min..=max` (integral floats are accepted).
fn int_arg(
    args: &Map<String, Value>,
    key: &str,
    default: Option<u64>,
    min: u64,
    max: u64,
) -> Result<u64, String> {
    let value = match args.get(key) {
        None | Some(Value::Null) => {
            default.ok_or_else(|| format!("missing required argument `{key}`"))?
        }
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                    .map(|f| f as u64)
            })
            .ok_or_else(|| format!("argument `{key}` must be a non-negative integer"))?,
    };
    if value < min || value > max {
        return Err(format!(
            "argument `{key}` must be between {min} and {max}, got {value}"
        ));
    }
    Ok(value)
}

/// Sets the scratch slot before serving (the fork server's warm state, which
/// every forked child starts from).
pub fn seed_scratch(value: String) {
    *scratch() = value;
}

fn scratch() -> std::sync::MutexGuard<'static, String> {
    SCRATCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tool_scratch_write(args: &Map<String, Value>) -> Result<ToolOutput, String> {
    let value = string_arg(args, "value")?;
    *scratch() = value;
    Ok(ToolOutput::text("stored"))
}

fn tool_scratch_read() -> ToolOutput {
    ToolOutput::text(scratch().clone())
}

fn tool_whoami() -> Result<ToolOutput, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read working directory: {e}"))?;
    let mut info = json!({
        "pid": std::process::id(),
        "ppid": std::os::unix::process::parent_id(),
        "cwd": cwd.to_string_lossy(),
    });
    if let (Some(r), Some(obj)) = (crate::zygote::demo::rollout(), info.as_object_mut()) {
        obj.insert("fork_server_pid".into(), json!(r.fork_server_pid));
        obj.insert("setup_query".into(), json!(r.setup_query));
    }
    Ok(ToolOutput {
        text: info.to_string(),
        structured: Some(info),
    })
}

fn tool_write_files(args: &Map<String, Value>, root: &Path) -> Result<ToolOutput, String> {
    let count = int_arg(args, "count", None, 0, MAX_WRITE_FILES)?;
    let dirs = int_arg(args, "dirs", Some(1), 1, MAX_WRITE_DIRS)?;
    let created = write_files_in(root, count, dirs).map_err(|e| format!("write_files: {e}"))?;
    Ok(ToolOutput {
        text: created.to_string(),
        structured: Some(json!({"created": created})),
    })
}

/// Creates `count` one-byte files named `f<j>` under `root`, spread round-robin
/// over the nested directories `d0`, `d0/d1`, …, `d0/…/d<dirs-1>` (only as many
/// levels as there are files). Existing files of the same name are overwritten.
/// Returns the number of files written.
fn write_files_in(root: &Path, count: u64, dirs: u64) -> io::Result<u64> {
    let levels = dirs.max(1).min(count);
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut dir = root.to_path_buf();
    for level in 0..levels {
        dir.push(format!("d{level}"));
        paths.push(dir.clone());
    }
    if let Some(deepest) = paths.last() {
        std::fs::create_dir_all(deepest)?;
    }
    let mut written = 0;
    for j in 0..count {
        let Some(dir) = paths.get((j % levels) as usize) else {
            break;
        };
        std::fs::write(dir.join(format!("f{j}")), b"x")?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Instant;

    fn start_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        std::thread::spawn(move || serve(listener));
        addr
    }

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("response body is JSON")
        }
    }

    struct Client {
        conn: Conn<TcpStream>,
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Self {
            let stream = TcpStream::connect(addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            Client {
                conn: Conn::new(stream),
            }
        }

        fn send(&mut self, raw: &[u8]) {
            self.conn.stream.write_all(raw).expect("write");
        }

        /// Reads the response head; returns status and headers.
        fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                if let httparse::Status::Complete(n) = resp.parse(&self.conn.buf).expect("parse") {
                    let status = resp.code.expect("code");
                    let hs = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    self.conn.buf.drain(..n);
                    return (status, hs);
                }
                assert!(self.conn.fill().expect("read") > 0, "EOF in response head");
            }
        }

        fn read_response(&mut self) -> Resp {
            let (status, headers) = self.read_head();
            let mut resp = Resp {
                status,
                headers,
                body: Vec::new(),
            };
            if resp
                .header("transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
            {
                resp.body = self.conn.read_chunked(usize::MAX).expect("chunked body");
            } else {
                let len: usize = resp
                    .header("content-length")
                    .expect("content-length")
                    .parse()
                    .expect("numeric content-length");
                resp.body = self.conn.read_fixed(len).expect("body");
            }
            resp
        }

        fn post_mcp(&mut self, body: &Value) -> Resp {
            let body = body.to_string();
            let req = format!(
                "POST /mcp?x=1 HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            self.send(req.as_bytes());
            self.read_response()
        }

        fn get(&mut self, path: &str) -> Resp {
            self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            self.read_response()
        }

        fn call_tool(&mut self, id: u64, name: &str, args: Value) -> Value {
            let resp = self.post_mcp(&json!({
                "jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": name, "arguments": args}
            }));
            assert_eq!(resp.status, 200);
            let v = resp.json();
            assert_eq!(v["id"], json!(id));
            v
        }

        fn assert_closed(&mut self) {
            let mut byte = [0u8; 1];
            assert_eq!(self.conn.stream.read(&mut byte).expect("read"), 0);
        }
    }

    fn tool_text(v: &Value) -> &str {
        v["result"]["content"][0]["text"].as_str().expect("text")
    }

    #[test]
    fn demo_mcp_session_on_one_connection() {
        let addr = start_server();
        let mut c = Client::connect(addr);

        let resp = c.post_mcp(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "0"}}
        }));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let sid = resp
            .header("mcp-session-id")
            .expect("session id")
            .to_owned();
        assert!(sid.len() >= 16 && sid.bytes().all(|b| b.is_ascii_hexdigit()));
        let v = resp.json();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], 1);
        assert_eq!(v["result"]["protocolVersion"], "2025-03-26");
        assert_eq!(v["result"]["serverInfo"]["name"], "ringmux-demo");
        assert_eq!(v["result"]["capabilities"]["tools"]["listChanged"], false);

        // Unknown requested version falls back to our default.
        let resp = c.post_mcp(&json!({
            "jsonrpc": "2.0", "id": "init-2", "method": "initialize",
            "params": {"protocolVersion": "1999-01-01"}
        }));
        assert_eq!(resp.json()["result"]["protocolVersion"], "2025-06-18");
        assert_ne!(resp.header("mcp-session-id"), Some(sid.as_str()));

        let resp = c.post_mcp(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        assert_eq!(resp.status, 202);
        assert!(resp.body.is_empty());

        // A client-sent JSON-RPC response is also just accepted.
        let resp = c.post_mcp(&json!({"jsonrpc": "2.0", "id": 7, "result": {}}));
        assert_eq!(resp.status, 202);

        let resp = c.post_mcp(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}));
        assert_eq!(resp.json()["result"], json!({}));

        let resp = c.post_mcp(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}));
        let v = resp.json();
        let tools = v["result"]["tools"].as_array().expect("tools");
        let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
        assert_eq!(
            names,
            [
                "scratch_write",
                "scratch_read",
                "echo",
                "whoami",
                "write_files"
            ]
        );
        assert!(tools.iter().all(|t| t["inputSchema"]["type"] == "object"));

        let v = c.call_tool(4, "scratch_write", json!({"value": "hello rollout"}));
        assert_eq!(tool_text(&v), "stored");
        assert_eq!(v["result"]["isError"], false);
        let v = c.call_tool(5, "scratch_read", json!({}));
        assert_eq!(tool_text(&v), "hello rollout");

        let v = c.call_tool(6, "echo", json!({"text": "ping pong"}));
        assert_eq!(tool_text(&v), "ping pong");

        let v = c.call_tool(7, "whoami", json!({}));
        let who: Value = serde_json::from_str(tool_text(&v)).expect("whoami JSON");
        assert_eq!(who["pid"], std::process::id());
        assert!(who["cwd"].is_string());

        // Bad arguments to a known tool: tool-level error.
        let v = c.call_tool(8, "echo", json!({}));
        assert_eq!(v["result"]["isError"], true);
        let v = c.call_tool(9, "write_files", json!({"count": 100_001}));
        assert_eq!(v["result"]["isError"], true);

        // Unknown tool: JSON-RPC invalid params.
        let v = c.call_tool(10, "nope", json!({}));
        assert_eq!(v["error"]["code"], -32602);

        let resp = c.post_mcp(&json!({"jsonrpc": "2.0", "id": 11, "method": "resources/list"}));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["error"]["code"], -32601);
        assert_eq!(resp.json()["id"], 11);

        let resp = c.post_mcp(&json!([{"jsonrpc": "2.0", "id": 12, "method": "ping"}]));
        assert_eq!(resp.status, 400);
        assert_eq!(resp.json()["error"]["code"], -32600);

        // Other routes, same connection.
        let resp = c.get("/healthz");
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok"[..]));
        let resp = c.get("/mcp");
        assert_eq!(resp.status, 405);
        assert_eq!(resp.header("allow"), Some("POST"));
        c.send(b"DELETE /mcp HTTP/1.1\r\nHost: t\r\nMcp-Session-Id: abc\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
        assert_eq!(c.get("/nope").status, 404);

        // Connection: close is honoured.
        c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let resp = c.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("connection"), Some("close"));
        c.assert_closed();
    }

    #[test]
    fn demo_chunked_request_body_and_pipelining() {
        let addr = start_server();
        let mut c = Client::connect(addr);
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "echo", "arguments": {"text": "chunky"}}})
        .to_string();
        let (a, b) = body.split_at(10);
        let req = format!(
            "POST /mcp HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nX-Trailer: y\r\n\r\n\
             GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            a.len(),
            b.len()
        );
        // Dribble the bytes to exercise partial reads.
        for piece in req.as_bytes().chunks(7) {
            c.send(piece);
            std::thread::sleep(Duration::from_millis(1));
        }
        let resp = c.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(tool_text(&resp.json()), "chunky");
        assert_eq!(c.read_response().status, 200);

        // Expect: 100-continue gets an interim response before the body is sent.
        let body = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}).to_string();
        c.send(
            format!(
                "POST /mcp HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        let (status, _) = c.read_head();
        assert_eq!(status, 100);
        c.send(body.as_bytes());
        let resp = c.read_response();
        assert_eq!(resp.json()["result"], json!({}));
    }

    #[test]
    fn demo_invalid_json_and_malformed_http() {
        let addr = start_server();
        let mut c = Client::connect(addr);
        c.send(b"POST /mcp HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\n{not json");
        let resp = c.read_response();
        assert_eq!(resp.status, 400);
        let v = resp.json();
        assert_eq!(v["error"]["code"], -32700);
        assert_eq!(v["id"], Value::Null);
        // Still usable: invalid JSON is not an HTTP framing error.
        assert_eq!(c.get("/healthz").status, 200);

        let mut c = Client::connect(addr);
        c.send(b"GARBAGE\x01 / HTTP/9.9\r\n\r\n");
        assert_eq!(c.read_response().status, 400);
        c.assert_closed();

        let mut c = Client::connect(addr);
        c.send(b"POST /mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert_eq!(c.read_response().status, 400);
        c.assert_closed();
    }

    #[test]
    fn demo_blob_returns_the_asked_size() {
        let addr = start_server();
        let mut c = Client::connect(addr);
        c.send(b"GET /blob?bytes=70000 HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 70000);
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        c.send(b"GET /blob HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.read_response().body.len(), 65536);
        c.send(b"GET /blob?bytes=lots HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.read_response().status, 400);
    }

    #[test]
    fn demo_sse_streams_unbuffered() {
        let addr = start_server();
        let mut c = Client::connect(addr);
        let (n, interval_ms) = (5u64, 150u64);
        c.send(
            format!("GET /sse?n={n}&interval_ms={interval_ms} HTTP/1.1\r\nHost: t\r\n\r\n")
                .as_bytes(),
        );
        let (status, headers) = c.read_head();
        assert_eq!(status, 200);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
        assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
        assert_eq!(header("transfer-encoding").as_deref(), Some("chunked"));

        let mut arrivals = Vec::new();
        loop {
            let size_line = c.conn.read_line().expect("chunk size");
            let size = usize::from_str_radix(std::str::from_utf8(&size_line).expect("utf8"), 16)
                .expect("hex");
            if size == 0 {
                assert!(c.conn.read_line().expect("final CRLF").is_empty());
                break;
            }
            let data = c.conn.read_fixed(size + 2).expect("chunk");
            arrivals.push(Instant::now());
            let event = std::str::from_utf8(&data[..size]).expect("utf8");
            let i = arrivals.len() - 1;
            assert_eq!(event, format!("data: {{\"i\": {i}}}\n\n"));
        }
        assert_eq!(arrivals.len() as u64, n);
        // The first event must arrive well before the last one is even sent.
        let spread = arrivals[arrivals.len() - 1] - arrivals[0];
        assert!(
            spread >= Duration::from_millis((n - 1) * interval_ms * 3 / 4),
            "events arrived together ({spread:?}): stream is buffered"
        );
        // Keep-alive after the stream.
        assert_eq!(c.get("/healthz").status, 200);
        assert_eq!(c.get("/sse?n=abc").status, 400);
    }

    #[test]
    fn demo_write_files_creates_files() {
        let root = std::env::temp_dir().join(format!(
            "ringmux-demo-test-{}-{}",
            std::process::id(),
            new_session_id()
        ));
        std::fs::create_dir_all(&root).expect("mkdir");

        fn count_files(dir: &Path) -> u64 {
            let mut n = 0;
            for entry in std::fs::read_dir(dir).expect("read_dir") {
                let entry = entry.expect("entry");
                if entry.file_type().expect("type").is_dir() {
                    n += count_files(&entry.path());
                } else {
                    assert_eq!(entry.metadata().expect("meta").len(), 1);
                    n += 1;
                }
            }
            n
        }

        assert_eq!(write_files_in(&root, 250, 4).expect("write"), 250);
        assert_eq!(count_files(&root), 250);
        assert!(root.join("d0/d1/d2/d3/f3").is_file());
        assert!(!root.join("d0/d1/d2/d3/d4").exists());

        // Through the tool layer (with the test-only root), default dirs = 1.
        let sub = root.join("tool");
        std::fs::create_dir_all(&sub).expect("mkdir");
        let args = json!({"count": 10});
        let out = tool_write_files(args.as_object().expect("obj"), &sub).expect("tool");
        assert_eq!(out.text, "10");
        assert_eq!(count_files(&sub), 10);
        assert!(sub.join("d0/f9").is_file());

        let args = json!({"count": 5, "dirs": 0});
        assert!(tool_write_files(args.as_object().expect("obj"), &sub).is_err());
        assert_eq!(write_files_in(&sub.join("empty"), 0, 3).expect("zero"), 0);

        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
