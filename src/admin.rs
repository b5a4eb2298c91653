//! The admin listener (`--admin ADDR`): a separate, tiny blocking HTTP server
//! on its own thread that answers `GET /metrics` with the Prometheus text of
//! [`Metrics`]. It is kept off the proxy listener so no path of the rollouts'
//! address space is taken, and off the data plane so a scrape never costs a
//! worker anything but relaxed atomic loads. The proxy listener's Origin /
//! Host rules apply here too (403), so a web page cannot read it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::http::{parse_request, simple_response, Parsed};
use crate::metrics::Metrics;
use crate::origin::OriginPolicy;

/// Binds the admin listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves scrapes forever (one connection at a time; scrapes are rare).
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>, policy: OriginPolicy) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, &metrics, &policy) {
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

fn answer(mut s: TcpStream, metrics: &Metrics, policy: &OriginPolicy) -> std::io::Result<()> {
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
    if let Err(why) = policy.check(&head.origin_headers()) {
        let body = format!("ringmux: forbidden: {why}\n");
        return s.write_all(&simple_response(403, &body, &[], true));
    }
    let resp = match (head.method(), head.path()) {
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
        ("GET", "/healthz") => simple_response(200, "ok\n", &[], true),
        (_, "/metrics") | (_, "/healthz") => {
            simple_response(405, "use GET\n", &[("allow", "GET")], true)
        }
        _ => simple_response(404, "admin paths: /metrics, /healthz\n", &[], true),
    };
    s.write_all(&resp)
}
