//! The one place where failures become what a client sees: every error the
//! proxy answers with is a [`ProxyError`], and [`ProxyError::response`] maps it
//! to a status code and a short plain-text body. Each variant records which
//! side failed ([`ProxyError::side`]: client, child, fork server or ringmux
//! itself); an I/O failure on the hop to the child also records the operation
//! and the errno behind it ([`ChildIo`]).

use std::fmt;

use crate::http::{simple_response, HttpError};
use crate::origin::Refusal;

/// Which side of a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedSide {
    /// The client: what it sent, or how slowly.
    Client,
    /// The child: its process or its socket.
    Child,
    /// The warm fork server (`--fork`).
    ForkServer,
    /// ringmux itself: capacity, shutdown, spawning.
    Ringmux,
}

impl FailedSide {
    /// For logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            FailedSide::Client => "client",
            FailedSide::Child => "child",
            FailedSide::ForkServer => "fork-server",
            FailedSide::Ringmux => "ringmux",
        }
    }
}

/// What ringmux was doing on a connection to a child when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildOp {
    /// Making the socket.
    Socket,
    /// Connecting to the child's listening socket.
    Connect,
    /// Sending the request.
    Send,
    /// Receiving the response.
    Receive,
}

/// An I/O failure on the hop to the child: the operation, and the errno the
/// kernel returned (`None`: the operation could not even be queued for a
/// reason that has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildIo {
    /// The operation.
    pub op: ChildOp,
    /// The errno, positive (`ECONNREFUSED` is 111).
    pub errno: Option<i32>,
}

impl ChildIo {
    /// `op` failed with `errno` (positive; a negative completion result is
    /// negated).
    pub fn new(op: ChildOp, errno: i32) -> ChildIo {
        ChildIo {
            op,
            errno: Some(errno.abs()),
        }
    }

    /// `op` failed with `e`.
    pub fn from_io(op: ChildOp, e: &std::io::Error) -> ChildIo {
        ChildIo {
            op,
            errno: e.raw_os_error(),
        }
    }
}

impl fmt::Display for ChildIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            ChildOp::Socket => "socket",
            ChildOp::Connect => "connect",
            ChildOp::Send => "send",
            ChildOp::Receive => "receive",
        };
        match self.errno {
            Some(e) => write!(f, "{op}: {}", std::io::Error::from_raw_os_error(e)),
            None => write!(f, "{op} could not be queued"),
        }
    }
}

/// Why a request did not get its child's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Client side: the request could not be parsed.
    #[error("bad request: {0}")]
    BadRequest(HttpError),
    /// Client side: its Origin or Host is not allowed (DNS-rebinding
    /// protection, `--allow-origin`).
    #[error("forbidden: {0}")]
    Forbidden(Refusal),
    /// Client side: it did not send a complete request head, or stalled in
    /// its body, within the timeout (`--head-timeout`, `--body-timeout`).
    #[error("request timed out")]
    RequestTimeout,
    /// Child side: it did not start its response within `--response-timeout`.
    #[error("child did not answer within the response timeout")]
    ResponseTimeout,
    /// Child side: making a socket to it, connecting, or sending the
    /// request failed (which, and the errno).
    #[error("child unreachable ({0})")]
    ChildUnreachable(ChildIo),
    /// Child side: it closed the connection before a complete response head.
    #[error("child closed the connection before responding")]
    ChildClosed,
    /// Child side: its response could not be parsed.
    #[error("invalid response from child: {0}")]
    BadResponse(HttpError),
    /// ringmux side: the child process could not be started.
    #[error("could not start child: {0}")]
    SpawnFailed(String),
    /// Child side: it did not answer within the ready timeout.
    #[error("child did not become ready in time")]
    ReadyTimeout,
    /// Fork-server side: it is starting, restarting or stopped, so no child
    /// can be forked now (503 with `Retry-After`).
    #[error("fork server unavailable: {0}")]
    ForkServerUnavailable(&'static str),
    /// Fork-server side: it refused the spawn, died during it, or answered
    /// outside the protocol.
    #[error("fork server could not start the child: {0}")]
    ForkFailed(String),
    /// Fork-server side: it did not answer in time.
    #[error("fork server did not answer in time")]
    ForkServerTimeout,
    /// ringmux side: `--max-children` reached.
    #[error("at capacity")]
    AtCapacity,
    /// ringmux side: shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// ringmux side: draining (SIGUSR1 or `POST /drain`): no new keys.
    #[error("draining: this instance takes no new rollouts")]
    Draining,
}

impl ProxyError {
    /// The status code the client gets.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadRequest(e) => e.status(),
            ProxyError::Forbidden(_) => 403,
            ProxyError::RequestTimeout => 408,
            ProxyError::ChildUnreachable(_)
            | ProxyError::ChildClosed
            | ProxyError::BadResponse(_)
            | ProxyError::SpawnFailed(_)
            | ProxyError::ForkFailed(_) => 502,
            ProxyError::ReadyTimeout
            | ProxyError::ForkServerTimeout
            | ProxyError::ResponseTimeout => 504,
            ProxyError::AtCapacity
            | ProxyError::ShuttingDown
            | ProxyError::Draining
            | ProxyError::ForkServerUnavailable(_) => 503,
        }
    }

    /// Which side failed.
    pub fn side(&self) -> FailedSide {
        match self {
            ProxyError::BadRequest(_) | ProxyError::Forbidden(_) | ProxyError::RequestTimeout => {
                FailedSide::Client
            }
            ProxyError::ResponseTimeout
            | ProxyError::ChildUnreachable(_)
            | ProxyError::ChildClosed
            | ProxyError::BadResponse(_)
            | ProxyError::ReadyTimeout => FailedSide::Child,
            ProxyError::ForkServerUnavailable(_)
            | ProxyError::ForkFailed(_)
            | ProxyError::ForkServerTimeout => FailedSide::ForkServer,
            ProxyError::SpawnFailed(_)
            | ProxyError::AtCapacity
            | ProxyError::ShuttingDown
            | ProxyError::Draining => FailedSide::Ringmux,
        }
    }

    /// A stable name for the error, sent as the `ringmux-error` header of
    /// every answer ringmux makes itself: it tells ringmux's own 503 (a
    /// drain, capacity) from a tool server's 503, for a client or a balancer
    /// that can retry on a header (Envoy's `retriable_headers`).
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::RequestTimeout => "request-timeout",
            ProxyError::ResponseTimeout => "response-timeout",
            ProxyError::ChildUnreachable(_) => "child-unreachable",
            ProxyError::ChildClosed => "child-closed",
            ProxyError::BadResponse(_) => "bad-response",
            ProxyError::SpawnFailed(_) => "spawn-failed",
            ProxyError::ReadyTimeout => "ready-timeout",
            ProxyError::ForkServerUnavailable(_) => "fork-server-unavailable",
            ProxyError::ForkFailed(_) => "fork-failed",
            ProxyError::ForkServerTimeout => "fork-server-timeout",
            ProxyError::AtCapacity => "at-capacity",
            ProxyError::ShuttingDown => "shutting-down",
            ProxyError::Draining => "draining",
        }
    }

    /// The complete response (status line, headers, short body). `close`
    /// adds `Connection: close`.
    pub fn response(&self, close: bool) -> Vec<u8> {
        let body = format!("ringmux: {self}\n");
        let status = self.status();
        let kind = ("ringmux-error", self.kind());
        if status == 503 {
            simple_response(status, &body, &[kind, ("retry-after", "1")], close)
        } else {
            simple_response(status, &body, &[kind], close)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let refused = ProxyError::ChildUnreachable(ChildIo::new(ChildOp::Connect, -111));
        assert_eq!(refused.status(), 502);
        assert_eq!(refused.side(), FailedSide::Child);
        let body = String::from_utf8(refused.response(false)).expect("utf8");
        assert!(
            body.ends_with(
                "ringmux: child unreachable (connect: Connection refused (os error 111))\n"
            ),
            "{body}"
        );
        let queued = ChildIo {
            op: ChildOp::Send,
            errno: None,
        };
        assert_eq!(queued.to_string(), "send could not be queued");
        assert_eq!(
            ProxyError::Forbidden(Refusal::Origin).side(),
            FailedSide::Client
        );
        assert_eq!(ProxyError::ForkServerTimeout.side(), FailedSide::ForkServer);
        assert_eq!(ProxyError::AtCapacity.side(), FailedSide::Ringmux);
        assert_eq!(ProxyError::ReadyTimeout.status(), 504);
        assert_eq!(ProxyError::AtCapacity.status(), 503);
        assert_eq!(ProxyError::ForkFailed("x".into()).status(), 502);
        assert_eq!(ProxyError::ForkServerTimeout.status(), 504);
        assert_eq!(ProxyError::RequestTimeout.status(), 408);
        assert_eq!(ProxyError::ResponseTimeout.status(), 504);
        assert_eq!(
            ProxyError::BadRequest(HttpError::BodyTooLarge).status(),
            413
        );
        let r = String::from_utf8(ProxyError::ForkServerUnavailable("restarting").response(false))
            .expect("utf8");
        assert!(r.starts_with("HTTP/1.1 503"));
        assert!(r.to_ascii_lowercase().contains("retry-after: 1"));
        let r = String::from_utf8(ProxyError::AtCapacity.response(false)).expect("utf8");
        assert!(r.starts_with("HTTP/1.1 503"));
        assert!(r.to_ascii_lowercase().contains("retry-after: 1"));
        let r = String::from_utf8(ProxyError::Draining.response(false)).expect("utf8");
        assert!(r.starts_with("HTTP/1.1 503"));
        assert!(r.to_ascii_lowercase().contains("retry-after: 1"));
        assert!(
            r.to_ascii_lowercase()
                .contains("ringmux-error: draining\r\n"),
            "{r}"
        );
        let r = String::from_utf8(refused.response(false)).expect("utf8");
        assert!(
            r.to_ascii_lowercase()
                .contains("ringmux-error: child-unreachable\r\n"),
            "{r}"
        );
        assert_eq!(ProxyError::Draining.side(), FailedSide::Ringmux);
        let all = [
            ProxyError::BadRequest(HttpError::BodyTooLarge),
            ProxyError::Forbidden(Refusal::Origin),
            ProxyError::RequestTimeout,
            ProxyError::ResponseTimeout,
            refused.clone(),
            ProxyError::ChildClosed,
            ProxyError::BadResponse(HttpError::BodyTooLarge),
            ProxyError::SpawnFailed("x".into()),
            ProxyError::ReadyTimeout,
            ProxyError::ForkServerUnavailable("x"),
            ProxyError::ForkFailed("x".into()),
            ProxyError::ForkServerTimeout,
            ProxyError::AtCapacity,
            ProxyError::ShuttingDown,
            ProxyError::Draining,
        ];
        let kinds: std::collections::HashSet<_> = all.iter().map(ProxyError::kind).collect();
        assert_eq!(kinds.len(), all.len(), "every error has its own kind");
        assert!(kinds
            .iter()
            .all(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')));
        let r = String::from_utf8(ProxyError::ChildClosed.response(true)).expect("utf8");
        assert!(r.starts_with("HTTP/1.1 502"));
        assert!(r.to_ascii_lowercase().contains("connection: close"));
    }
}
