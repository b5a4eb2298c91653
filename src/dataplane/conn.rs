//! Per-connection state of the data plane: the client side ([`Client`]), the
//! child side ([`Upstream`]), and the two pieces both share — the receive arm
//! ([`RecvArm`]: multishot, pausable, re-armable after `ENOBUFS`) and the send
//! queue ([`SendQ`]: one gathered write in flight, the rest queued in order).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use ringmux_uring::{BufRef, OpId, Seg};

use crate::http::{BodyTracker, HeadAcc, RequestHead};
use crate::route::{ChildInfo, RouteKey};

/// A reference to a slab entry that survives slot reuse: (slot, generation).
pub type Ref = (usize, u32);

/// State of a connection's multishot receive.
#[derive(Debug, Default)]
pub struct RecvArm {
    /// A multishot receive is in flight.
    pub op: Option<OpId>,
    /// We asked for it to stop (backpressure) and cancelled it.
    pub paused: bool,
    /// A cancel was sent for the current op.
    pub cancel_sent: bool,
    /// It ended with `ENOBUFS` and waits for buffers to come back.
    pub starved: bool,
}

/// Outgoing bytes: one `writev` in flight at most, the rest queued in order.
#[derive(Default)]
pub struct SendQ {
    /// Segments not yet handed to the kernel.
    pub q: Vec<Seg>,
    /// Bytes queued or in flight.
    pub bytes: usize,
    /// A `writev` is in flight.
    pub in_flight: bool,
    /// The last `writev` was short (the peer is not keeping up): queued bytes
    /// are copied out of ring buffers before the next send.
    pub slow: bool,
    /// When the `writev` in flight was submitted (`None`: none in flight).
    pub started: Option<Instant>,
    /// An empty queue with capacity, swapped in when `q` goes to the
    /// kernel (no allocation per send).
    pub spare: Vec<Seg>,
}

impl SendQ {
    /// Queues a segment.
    pub fn push(&mut self, seg: Seg) {
        if seg.is_empty() {
            return;
        }
        self.bytes += seg.len();
        self.q.push(seg);
    }

    /// Nothing queued or in flight.
    pub fn is_idle(&self) -> bool {
        !self.in_flight && self.q.is_empty()
    }
}

/// Where a client connection is in its current request.
pub enum Phase {
    /// Reading the next request head.
    Head,
    /// Waiting for the control plane to produce a child for `key`.
    Waiting {
        /// The route.
        key: RouteKey,
        /// The parsed request.
        head: Box<RequestHead>,
        /// Children that died before this request reached them (it asks
        /// for a new one once, then gets 502: a child that dies at start-up
        /// must not be respawned in a loop).
        missed: u8,
    },
    /// A close request was passed to the control plane; its body (ignored) is
    /// discarded meanwhile.
    Closing {
        /// Discards the close request's body.
        body: BodyTracker,
        /// The answer arrived (sent once the body is fully read).
        answered: bool,
    },
    /// Exchanging with an upstream connection.
    Proxy {
        /// The upstream connection.
        up: Ref,
        /// Frames the request body being forwarded.
        body: BodyTracker,
    },
}

/// A client connection.
pub struct Client {
    /// The socket.
    pub fd: OwnedFd,
    /// Generation (see [`Ref`]).
    pub gen: u32,
    /// Receive state.
    pub recv: RecvArm,
    /// Send state.
    pub out: SendQ,
    /// Received bytes not yet consumed (body or pipelined requests).
    pub pending: VecDeque<BufRef>,
    /// Bytes in `pending`.
    pub pending_bytes: usize,
    /// A head split across buffers, accumulated.
    pub head_acc: HeadAcc,
    /// Current request.
    pub phase: Phase,
    /// Keep the connection after the current response.
    pub keep_alive: bool,
    /// Close once everything queued is sent.
    pub close_after_flush: bool,
    /// The peer closed its side.
    pub eof: bool,
    /// Last receive or completed send (the idle and first-head timeouts
    /// count from it).
    pub last_io: Instant,
    /// Last receive with data (the body timeout counts from it).
    pub last_recv: Instant,
    /// When the first byte of the head being read arrived.
    pub head_started: Option<Instant>,
    /// Requests whose heads were read on this connection.
    pub served: u32,
}

impl Client {
    /// A fresh connection, accepted at `now`.
    pub fn new(fd: OwnedFd, gen: u32, now: Instant) -> Client {
        Client {
            fd,
            gen,
            recv: RecvArm::default(),
            out: SendQ::default(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            head_acc: HeadAcc::default(),
            phase: Phase::Head,
            keep_alive: true,
            close_after_flush: false,
            eof: false,
            last_io: now,
            last_recv: now,
            head_started: None,
            served: 0,
        }
    }
}

/// A connection to a child.
pub struct Upstream {
    /// The socket.
    pub fd: OwnedFd,
    /// Generation (see [`Ref`]).
    pub gen: u32,
    /// The child it talks to.
    pub child: Arc<ChildInfo>,
    /// `connect` finished.
    pub connected: bool,
    /// Receive state.
    pub recv: RecvArm,
    /// Send state.
    pub out: SendQ,
    /// The client whose request it carries (`None`: idle in the pool).
    pub client: Option<Ref>,
    /// A response head split across buffers, accumulated.
    pub head_acc: HeadAcc,
    /// Frames the response body once its head was forwarded.
    pub body: Option<BodyTracker>,
    /// The current request is a HEAD (its response has no body).
    pub req_is_head: bool,
    /// The child may reuse the connection after this response.
    pub reusable: bool,
    /// Any response byte arrived for the current request.
    pub got_bytes: bool,
    /// Taken from the pool (so a dead-on-arrival failure may be retried).
    pub reused: bool,
    /// Copy of the request for one retry on a fresh connection (only while
    /// the connection was reused and the request is small).
    pub replay: Option<Vec<Seg>>,
    /// Bytes held in `replay`.
    pub replay_bytes: usize,
    /// When it went idle in the pool.
    pub idle_since: Option<std::time::Instant>,
    /// The request (head and body) is completely queued.
    pub req_done: bool,
    /// When the current request's head was queued to the child (the
    /// response timeout counts from it until the response head arrives).
    pub asked_at: Option<Instant>,
    /// The current request's hold on the child (`--child-idle-timeout`
    /// does not retire a child while one is held); released with the
    /// exchange or the connection.
    pub busy: Option<crate::activity::Busy>,
}

impl Upstream {
    /// A new, not yet connected, connection.
    pub fn new(fd: OwnedFd, gen: u32, child: Arc<ChildInfo>) -> Upstream {
        Upstream {
            fd,
            gen,
            child,
            connected: false,
            recv: RecvArm::default(),
            out: SendQ::default(),
            client: None,
            head_acc: HeadAcc::default(),
            body: None,
            req_is_head: false,
            reusable: false,
            got_bytes: false,
            reused: false,
            replay: None,
            replay_bytes: 0,
            idle_since: None,
            req_done: false,
            asked_at: None,
            busy: None,
        }
    }

    /// Resets per-exchange state for the next request on this connection.
    pub fn reset_exchange(&mut self) {
        self.client = None;
        self.head_acc.clear();
        self.body = None;
        self.req_is_head = false;
        self.reusable = false;
        self.got_bytes = false;
        self.reused = false;
        self.replay = None;
        self.replay_bytes = 0;
        self.req_done = false;
        self.asked_at = None;
        self.busy = None;
    }
}
