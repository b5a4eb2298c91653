//! The demo's `GET /sse`: a chunked `text/event-stream` of N events.

use std::io::{self, Write};
use std::time::Duration;

use super::*;

/// `n` (default 5, capped at 100000) and `interval_ms` (default 100, capped at
/// 60000). Unknown keys are ignored; a non-integer value is `None` (→ 400).
pub(super) fn parse_sse_query(query: &str) -> Option<(u64, Duration)> {
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
pub(super) fn stream_sse(
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
