//! What one client may cost a worker: the timeouts and the body limit
//! ([`ClientLimits`], from the flags), and the decision, for one connection
//! at one instant, whether one of them has run out ([`expired`]).
//!
//! Deadlines are not timers: every client records when it last made
//! progress, and the worker scans its connections a few times a second
//! (cheap next to the I/O of that many connections; a timeout of seconds
//! needs no finer grain). A connection the worker itself paused
//! (backpressure: the other side is slow) is never the client's fault and
//! never expires for its body; a request parked for a starting child is
//! under the ready timeout instead.

use std::time::{Duration, Instant};

use super::conn::{Client, Phase};

/// Limits on a client connection, with the defaults of `ringmux serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// From accept, or from the first byte of a later request, until its head
    /// is complete: `408` and close.
    pub head: Duration,
    /// Between requests on a kept-alive connection: close, silently.
    pub idle: Duration,
    /// Longest pause in a request body the client is sending: `408` (or, if
    /// the response has begun, an abort) and close.
    pub body: Duration,
    /// Longest a send to the client may stay unfinished (the client is not
    /// reading what it asked for): the connection is cut.
    pub send: Duration,
    /// From a request reaching the child until the child's response head:
    /// `504` and close. `None`: no limit (MCP streams may idle for long).
    pub response: Option<Duration>,
    /// Largest request body: `413` before anything of it reaches a child
    /// (a Content-Length body), or as soon as a chunk would go past it.
    pub max_body: u64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            head: Duration::from_secs(10),
            idle: Duration::from_secs(75),
            body: Duration::from_secs(30),
            send: Duration::from_secs(60),
            response: None,
            max_body: 4 << 20,
        }
    }
}

/// Which limit a connection ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head did not complete in time.
    Head,
    /// Kept alive with nothing to do for too long.
    Idle,
    /// Its request body stalled.
    Body,
    /// It stopped reading what it is sent.
    Send,
}

/// Whether `cl` has run out of a limit at `now`.
pub fn expired(cl: &Client, limits: &ClientLimits, now: Instant) -> Option<Expiry> {
    let since = |t: Instant| now.saturating_duration_since(t);
    // First: a connection on its way out still must not hold its last
    // response forever when the client stopped reading it.
    if cl.out.started.is_some_and(|t| since(t) > limits.send) {
        return Some(Expiry::Send);
    }
    if cl.close_after_flush {
        return None; // on its way out: closed once its answer is sent
    }
    match &cl.phase {
        Phase::Head => {
            if let Some(start) = cl.head_started {
                return (since(start) > limits.head).then_some(Expiry::Head);
            }
            if !cl.out.is_idle() {
                return None; // still sending its last response
            }
            if cl.served == 0 {
                (since(cl.last_io) > limits.head).then_some(Expiry::Head)
            } else {
                (since(cl.last_io) > limits.idle).then_some(Expiry::Idle)
            }
        }
        Phase::Proxy { body, .. } | Phase::Closing { body, .. } => {
            let reading = !body.is_done() && !cl.recv.paused && !cl.eof;
            (reading && since(cl.last_recv) > limits.body).then_some(Expiry::Body)
        }
        Phase::Waiting { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{BodyKind, BodyTracker};
    use std::os::fd::OwnedFd;

    fn client() -> Client {
        let fd: OwnedFd = std::fs::File::open("/dev/null").expect("open").into();
        Client::new(fd, 1, Instant::now())
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_new_connection_gets_the_head_timeout_and_a_served_one_the_idle_timeout() {
        let l = ClientLimits::default();
        let mut c = client();
        let t0 = c.last_io;
        assert_eq!(expired(&c, &l, t0 + 9 * S), None);
        assert_eq!(expired(&c, &l, t0 + 11 * S), Some(Expiry::Head));
        c.served = 1;
        assert_eq!(expired(&c, &l, t0 + 11 * S), None);
        assert_eq!(expired(&c, &l, t0 + 76 * S), Some(Expiry::Idle));
        // A head in progress is timed from its first byte.
        c.head_started = Some(t0 + 70 * S);
        assert_eq!(expired(&c, &l, t0 + 76 * S), None);
        assert_eq!(expired(&c, &l, t0 + 81 * S), Some(Expiry::Head));
    }

    #[test]
    fn a_body_expires_only_while_ringmux_is_reading_it() {
        let l = ClientLimits::default();
        let mut c = client();
        let t0 = c.last_recv;
        c.phase = Phase::Closing {
            body: BodyTracker::new(BodyKind::Length(10)),
            answered: false,
        };
        assert_eq!(expired(&c, &l, t0 + 29 * S), None);
        assert_eq!(expired(&c, &l, t0 + 31 * S), Some(Expiry::Body));
        c.recv.paused = true; // backpressure: the other side is slow
        assert_eq!(expired(&c, &l, t0 + 31 * S), None);
        c.recv.paused = false;
        c.phase = Phase::Closing {
            body: BodyTracker::new(BodyKind::None),
            answered: false,
        };
        assert_eq!(
            expired(&c, &l, t0 + 31 * S),
            None,
            "a complete body never stalls"
        );
    }

    #[test]
    fn a_send_that_does_not_finish_expires_in_any_phase() {
        let l = ClientLimits::default();
        let mut c = client();
        let t0 = c.last_io;
        c.phase = Phase::Closing {
            body: BodyTracker::new(BodyKind::None),
            answered: true,
        };
        c.out.started = Some(t0);
        assert_eq!(expired(&c, &l, t0 + 59 * S), None);
        assert_eq!(expired(&c, &l, t0 + 61 * S), Some(Expiry::Send));
        // Also when the connection is to close after that send.
        c.close_after_flush = true;
        assert_eq!(expired(&c, &l, t0 + 61 * S), Some(Expiry::Send));
    }
}
