//! The admin listener (`--admin ADDR`): a separate, tiny blocking HTTP server
//! on its own thread that answers `GET /metrics` with the Prometheus text of
//! [`Metrics`], `GET /healthz` and `GET /readyz` (200, or 503 while
//! draining), and `POST /drain` (starts a drain, src/lifecycle.rs). It is
//! kept off the data plane so a scrape never costs a worker anything but
//! relaxed atomic loads. The proxy listener's Origin / Host rules apply to
//! `/metrics` and `/drain` (403), so a web page can neither read the one nor
//! trigger the other; the two health checks answer any Host, as a balancer's
//! checks send whatever Host they are configured with.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::error::ProxyError;
use crate::http::{parse_request, simple_response, Parsed};
use crate::lifecycle::Event;
use crate::metrics::Metrics;
use crate::origin::OriginPolicy;

/// Binds the admin listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves scrapes forever (one connection at a time; scrapes are rare).
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    policy: OriginPolicy,
    drain: mpsc::Sender<Event>,
) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, &metrics, &policy, &drain) {
                    tracing::debug!(error = %e, "admin request failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn answer(
    mut s: TcpStream,
    metrics: &Metrics,
    policy: &OriginPolicy,
    drain: &mpsc::Sender<Event>,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request(&buf) {
            Ok(Parsed::Complete { head, .. }) => break head,
            Ok(Parsed::Partial) if buf.len() < 16 * 1024 => continue,
            Ok(Parsed::Partial) => {
                s.write_all(&simple_response(431, "head too large\n", &[], true))?;
                return Ok(());
            }
            Err(e) => {
                s.write_all(&simple_response(e.status(), "bad request\n", &[], true))?;
                return Ok(());
            }
        }
    };
    if let Some(resp) = health_response(head.method(), head.path(), metrics, true) {
        return s.write_all(&resp);
    }
    if let Err(why) = policy.check(&head.origin_headers()) {
        let body = format!("ringmux: forbidden: {why}\n");
        return s.write_all(&simple_response(403, &body, &[], true));
    }
    let resp = match (head.method(), head.path()) {
        ("POST", "/drain") => {
            let _ = drain.send(Event::Drain("admin"));
            simple_response(202, "draining\n", &[], true)
        }
        (_, "/drain") => simple_response(405, "use POST\n", &[("allow", "POST")], true),
        ("GET", "/metrics") => {
            let body = metrics.render();
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(body.as_bytes());
            r
        }
        (_, "/metrics") => simple_response(405, "use GET\n", &[("allow", "GET")], true),
        _ => simple_response(
            404,
            "admin paths: /metrics, /healthz, /readyz, /drain\n",
            &[],
            true,
        ),
    };
    s.write_all(&resp)
}

/// Whether [`health_response`] answers `path`.
pub fn is_health_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// `GET`/`HEAD /healthz` (the process answers: 200) and `/readyz` (200, or
/// 503 with `Retry-After` while draining), the same on the admin and the
/// proxy listener; `None` for any other path. `close` adds
/// `Connection: close`.
pub fn health_response(
    method: &str,
    path: &str,
    metrics: &Metrics,
    close: bool,
) -> Option<Vec<u8>> {
    let ready = !metrics.draining.load(Relaxed);
    let mut resp = match path {
        "/healthz" => simple_response(200, "ok\n", &[], close),
        "/readyz" if ready => simple_response(200, "ready\n", &[], close),
        "/readyz" => simple_response(
            503,
            "draining\n",
            &[
                ("ringmux-error", ProxyError::Draining.kind()),
                ("retry-after", "1"),
            ],
            close,
        ),
        _ => return None,
    };
    match method {
        "GET" => {}
        "HEAD" => {
            // The same head, no body.
            if let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
                resp.truncate(end + 4);
            }
        }
        _ => resp = simple_response(405, "use GET\n", &[("allow", "GET, HEAD")], close),
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_answers_follow_the_draining_flag() {
        let m = Metrics::new(1);
        let text = |r: Option<Vec<u8>>| String::from_utf8(r.expect("a health path")).expect("utf8");
        assert!(text(health_response("GET", "/healthz", &m, true)).starts_with("HTTP/1.1 200"));
        let ready = text(health_response("GET", "/readyz", &m, false));
        assert!(
            ready.starts_with("HTTP/1.1 200") && ready.ends_with("ready\n"),
            "{ready}"
        );
        m.draining.store(true, Relaxed);
        let r = text(health_response("GET", "/readyz", &m, true));
        assert!(
            r.starts_with("HTTP/1.1 503")
                && r.to_ascii_lowercase().contains("retry-after: 1")
                && r.contains("ringmux-error: draining\r\n"),
            "{r}"
        );
        assert!(text(health_response("GET", "/healthz", &m, true)).starts_with("HTTP/1.1 200"));
        let head = text(health_response("HEAD", "/readyz", &m, true));
        assert!(
            head.starts_with("HTTP/1.1 503") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(text(health_response("DELETE", "/healthz", &m, true)).starts_with("HTTP/1.1 405"));
        assert!(health_response("GET", "/metrics", &m, true).is_none());
        assert!(is_health_path("/readyz") && !is_health_path("/metrics"));
    }
}
