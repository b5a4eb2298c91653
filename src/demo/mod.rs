//! The built-in demo MCP child.
//!
//! `ringmux serve --demo` spawns `ringmux demo-child` once per rollout and hands
//! it a bound, listening socket (Unix or TCP); [`serve`] then runs a small but real MCP
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

mod http;
mod mcp;
mod sse;
#[cfg(test)]
mod tests;
mod tools;

use socket2::Socket;
use std::io::{self, ErrorKind};
use std::time::Duration;

use http::*;
use mcp::*;
use sse::*;
use tools::*;

pub use tools::seed_scratch;

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

/// Serve the demo MCP server on `listener` until the process is killed. Thread per connection, blocking I/O, HTTP/1.1 keep-alive.
///
/// Returns only if `accept` fails in a way that retrying cannot fix (for example the
/// descriptor is not a listening socket). Transient failures (aborted connections,
/// descriptor or memory exhaustion) are retried after a short pause.
pub fn serve(listener: Socket) -> io::Result<()> {
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

/// What a route wants sent back.
enum Reply {
    Full(Response),
    Sse { events: u64, interval: Duration },
}

fn handle_connection(stream: Socket) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // Accepted TCP sockets inherit TCP_NODELAY from the listener on Linux;
    // make sure (a Unix socket has no such option: the error is ignored).
    let _ = stream.set_tcp_nodelay(true);
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
