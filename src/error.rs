//! The one place where failures become what a client sees: every error the
//! proxy answers with is a [`ProxyError`], and [`ProxyError::response`] maps it
//! to a status code and a short plain-text body. The variant records which
//! side failed (client, child, or ringmux itself).

use crate::http::{simple_response, HttpError};
use crate::origin::Refusal;

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
    /// Child side: connecting to it, or sending the request, failed.
    #[error("child unreachable")]
    ChildUnreachable,
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
}

impl ProxyError {
    /// The status code the client gets.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadRequest(e) => e.status(),
            ProxyError::Forbidden(_) => 403,
            ProxyError::RequestTimeout => 408,
            ProxyError::ChildUnreachable
            | ProxyError::ChildClosed
            | ProxyError::BadResponse(_)
            | ProxyError::SpawnFailed(_)
            | ProxyError::ForkFailed(_) => 502,
            ProxyError::ReadyTimeout
            | ProxyError::ForkServerTimeout
            | ProxyError::ResponseTimeout => 504,
            ProxyError::AtCapacity
            | ProxyError::ShuttingDown
            | ProxyError::ForkServerUnavailable(_) => 503,
        }
    }

    /// The complete response (status line, headers, short body). `close`
    /// adds `Connection: close`.
    pub fn response(&self, close: bool) -> Vec<u8> {
        let body = format!("ringmux: {self}\n");
        let status = self.status();
        if self.status() == 503 {
            simple_response(status, &body, &[("retry-after", "1")], close)
        } else {
            simple_response(status, &body, &[], close)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ProxyError::ChildUnreachable.status(), 502);
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
        let r = String::from_utf8(ProxyError::ChildClosed.response(true)).expect("utf8");
        assert!(r.starts_with("HTTP/1.1 502"));
        assert!(r.to_ascii_lowercase().contains("connection: close"));
    }
}
