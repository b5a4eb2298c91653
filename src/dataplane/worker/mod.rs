//! One data-plane worker: its state, the event loop and the dispatch of
//! completions. The rest lives in one room per concern, each an `impl
//! Worker` block: [`accept`], [`inbox`] (control-plane messages), [`client`]
//! (reading requests, routing), [`upstream`] (the exchange with the child),
//! [`pool`] (idle connections to children), [`respond`] (writing to the
//! client), [`deadlines`] and [`teardown`].
//!
//! Every completion carries a tag `kind | generation | slot` ([`crate::tag`]);
//! a completion for a connection that has since been closed (its slot reused
//! or empty) is recognised by its generation and ignored — its resources were
//! returned by the ring layer and are simply dropped.

mod accept;
mod client;
mod deadlines;
mod inbox;
mod pool;
mod respond;
mod side;
mod teardown;
mod upstream;

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmux_uring::op::{advance_segs_reclaim, compact_segs, pins_too_many};
use ringmux_uring::{BufRef, BufRing, Completion, Op, Returned, Ring, RingConfig, Seg};
use slab::Slab;

use super::conn::{Client, Phase, Ref, Upstream};
use super::freelist::ByteBufs;
use super::guard::{expired, ClientLimits, Expiry};
use crate::error::{ChildIo, ChildOp, FailedSide, ProxyError};
use crate::http::{
    parse_request_into, parse_response_into, simple_response, BodyKind, BodyTracker, Headers,
    HttpError, Parsed, RequestHead,
};
use crate::metrics::Metrics;
use crate::msg::{Inbox, Mailbox, ToControl, ToWorker};
use crate::origin::OriginPolicy;
use crate::route::{ChildInfo, Failure, RouteKey};
use side::Side;

const K_ACCEPT: u64 = 1;
const K_CRECV: u64 = 2;
const K_CSEND: u64 = 3;
const K_UCONN: u64 = 4;
const K_URECV: u64 = 5;
const K_USEND: u64 = 6;
const K_INBOX: u64 = 7;
const K_IGNORE: u64 = 8;
const K_TICK: u64 = 9;

/// Heartbeat period; how late each beat fires is the event-loop lag metric.
const TICK: Duration = Duration::from_millis(10);
/// Wait before re-arming accept after it failed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Client deadlines are checked every this many beats (100 ms).
const DEADLINE_TICKS: u64 = 10;

/// Pause the producer when the consumer has this much queued.
const HIGH_WATER: usize = 1 << 20;
/// Resume it below this.
const LOW_WATER: usize = 256 << 10;
/// How long a worker keeps running after Shutdown to send its last answers.
const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_millis(200);
/// Largest request kept for a retry on a fresh upstream connection.
const REPLAY_MAX: usize = 256 << 10;
/// Provided buffers per worker, and their size.
const BUF_COUNT: u16 = 1024;
const BUF_SIZE: u32 = 16 << 10;
/// Re-arm starved receives once this many buffers are free again.
const REARM_FREE: usize = 16;
/// Pooled connections idle longer than this are closed rather than reused:
/// shorter than common servers' keep-alive timeouts (uvicorn: 5 s), so the
/// child never closes one under a request we are sending.
const POOL_IDLE_MAX: Duration = Duration::from_secs(2);

/// The tag of an operation of `kind` on connection `r` ([`crate::tag`]).
fn tag(kind: u64, r: Ref) -> u64 {
    crate::tag::tag(kind, crate::tag::slot_payload(r.0, r.1))
}

fn untag(t: u64) -> (u64, Ref) {
    let (kind, payload) = crate::tag::untag(t);
    (kind, crate::tag::payload_slot(payload))
}

/// What a worker needs to start.
pub struct WorkerSetup {
    /// Index of this worker (its mailbox's index at the control plane).
    pub id: usize,
    /// Its listening socket (`SO_REUSEPORT`).
    pub listener: TcpListener,
    /// Messages from the control plane.
    pub inbox: Inbox<ToWorker>,
    /// Messages to the control plane.
    pub control: Mailbox<ToControl>,
    /// Query parameter carrying the rollout key.
    pub key_param: String,
    /// Path that closes a rollout.
    pub close_path: String,
    /// Which Origin / Host headers are accepted.
    pub origin: OriginPolicy,
    /// Counters (this worker writes `metrics.workers[id]`).
    pub metrics: Arc<Metrics>,
    /// Timeouts and the body limit for client connections.
    pub limits: ClientLimits,
}

/// A data-plane worker.
pub struct Worker {
    id: usize,
    ring: Ring,
    bufs: BufRing,
    listener: TcpListener,
    inbox: Inbox<ToWorker>,
    control: Mailbox<ToControl>,
    key_param: String,
    close_path: String,
    origin: OriginPolicy,
    clients: Slab<Client>,
    ups: Slab<Upstream>,
    cache: HashMap<RouteKey, Arc<ChildInfo>>,
    waiting: HashMap<RouteKey, Vec<Ref>>,
    pool: HashMap<u64, Vec<Ref>>,
    starved: Vec<(Side, Ref)>,
    /// Buffers for rewritten heads, back from finished sends.
    head_bufs: ByteBufs,
    /// Scratch list of request-body pieces on their way to a child.
    body_segs: Vec<BufRef>,
    /// Storage of the request head being parsed, given back by the head
    /// once it was written to the child (no allocation per head).
    req_store: Headers,
    /// The same for response heads.
    resp_store: Headers,
    next_gen: u32,
    stopping: bool,
    metrics: Arc<Metrics>,
    last_tick: Instant,
    ticks: u64,
    accept_errors: u64,
    limits: ClientLimits,
    /// The heartbeat timer is queued (if queueing it failed, the loop
    /// retries after every batch: deadlines and pool expiry depend on it).
    tick_armed: bool,
    /// Accept is not armed; the heartbeat re-arms it from this instant (a
    /// back-off after an accept error such as `EMFILE`, or a failed re-arm).
    accept_retry_at: Option<Instant>,
    /// When the current batch of completions was reaped (what the deadlines
    /// count with: one clock read per batch).
    now: Instant,
    /// Waits for completions so far, and completions reaped (published on
    /// each heartbeat: completions per wait says how much each wake-up
    /// batches).
    waits: u64,
    completions: u64,
}

impl Worker {
    /// Creates the worker's ring and buffer ring (on the worker's own thread:
    /// the ring is single-issuer).
    pub fn new(setup: WorkerSetup) -> std::io::Result<Worker> {
        // RINGMUX_RING=plain|single|defer (default defer) exists to measure
        // the setup flags against each other (benches/quick_latency.py).
        let mode = std::env::var("RINGMUX_RING").unwrap_or_default();
        let cfg = RingConfig {
            single_issuer: mode != "plain",
            defer_taskrun: mode != "plain" && mode != "single",
            ..RingConfig::default()
        };
        let mut ring = Ring::new(&cfg)?;
        if cfg.defer_taskrun && !ring.defer_taskrun() {
            tracing::warn!(
                worker = setup.id,
                "the kernel refused SINGLE_ISSUER/DEFER_TASKRUN; this worker uses a plain io_uring"
            );
        }
        let bufs = ring.register_buf_ring(0, BUF_COUNT, BUF_SIZE)?;
        Ok(Worker {
            id: setup.id,
            ring,
            bufs,
            listener: setup.listener,
            inbox: setup.inbox,
            control: setup.control,
            key_param: setup.key_param,
            close_path: setup.close_path,
            origin: setup.origin,
            clients: Slab::with_capacity(1024),
            ups: Slab::with_capacity(1024),
            cache: HashMap::new(),
            waiting: HashMap::new(),
            pool: HashMap::new(),
            starved: Vec::new(),
            head_bufs: ByteBufs::default(),
            body_segs: Vec::new(),
            req_store: Headers::default(),
            resp_store: Headers::default(),
            next_gen: 1,
            stopping: false,
            metrics: setup.metrics,
            last_tick: Instant::now(),
            ticks: 0,
            accept_errors: 0,
            limits: setup.limits,
            tick_armed: false,
            accept_retry_at: None,
            now: Instant::now(),
            waits: 0,
            completions: 0,
        })
    }

    /// Runs the event loop until told to shut down.
    pub fn run(mut self) {
        let lfd = self.listener.as_raw_fd();
        if let Err(e) = self
            .ring
            .push(Op::AcceptMulti { fd: lfd }, tag(K_ACCEPT, (0, 0)))
        {
            tracing::error!(worker = self.id, error = %e, "cannot arm accept");
            return;
        }
        if let Err(e) = self.arm_inbox() {
            tracing::error!(worker = self.id, error = %e, "cannot arm inbox");
            return;
        }
        self.last_tick = Instant::now();
        self.arm_tick();
        let mut comps: Vec<Completion> = Vec::with_capacity(1024);
        // After Shutdown the loop runs a little longer, so that the 503s
        // just queued for requests waiting on a child are actually sent.
        let mut linger_until: Option<std::time::Instant> = None;
        loop {
            if self.stopping {
                let until = *linger_until
                    .get_or_insert_with(|| std::time::Instant::now() + SHUTDOWN_LINGER);
                if std::time::Instant::now() >= until {
                    break;
                }
            }
            if let Err(e) = self.ring.submit_and_wait(1) {
                tracing::error!(worker = self.id, error = %e, "ring enter failed");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.ring.reap(&mut comps);
            self.waits += 1;
            self.completions += comps.len() as u64;
            self.now = Instant::now();
            for c in comps.drain(..) {
                self.dispatch(c);
            }
            self.rearm_starved();
            if !self.tick_armed {
                self.arm_tick();
            }
        }
    }

    fn gen(&mut self) -> u32 {
        let g = self.next_gen;
        self.next_gen = (self.next_gen + 1) & 0xff_ffff;
        if self.next_gen == 0 {
            self.next_gen = 1;
        }
        g
    }

    fn arm_inbox(&mut self) -> std::io::Result<()> {
        self.ring.push(
            Op::Read {
                fd: self.inbox.wake_fd(),
                buf: vec![0u8; 8],
            },
            tag(K_INBOX, (0, 0)),
        )?;
        Ok(())
    }

    fn dispatch(&mut self, c: Completion) {
        let (kind, r) = untag(c.tag);
        match kind {
            K_ACCEPT => self.on_accept(c),
            K_INBOX => {
                self.on_inbox();
                if !self.stopping {
                    if let Err(e) = self.arm_inbox() {
                        tracing::error!(worker = self.id, error = %e, "cannot re-arm inbox");
                    }
                }
            }
            K_TICK => {
                let now = Instant::now();
                let late = now.saturating_duration_since(self.last_tick + TICK);
                let m = &self.metrics.workers[self.id];
                m.record_lag(late);
                m.allocations
                    .store(crate::alloc_count::this_thread(), Relaxed);
                m.waits.store(self.waits, Relaxed);
                m.completions.store(self.completions, Relaxed);
                self.last_tick = now;
                self.ticks += 1;
                if self.ticks.is_multiple_of(50) {
                    self.expire_pool();
                }
                if self.ticks.is_multiple_of(DEADLINE_TICKS) {
                    self.check_deadlines();
                }
                if self.accept_retry_at.is_some_and(|t| now >= t) && !self.stopping {
                    self.accept_retry_at = None;
                    self.arm_accept();
                }
                // Kept going while stopping too: it bounds the shutdown linger.
                self.tick_armed = false;
                self.arm_tick();
            }
            K_CRECV => self.on_recv(Side::Client, r, c),
            K_CSEND => self.on_sent(Side::Client, r, c),
            K_UCONN => self.on_up_connected(r, c.result),
            K_URECV => self.on_recv(Side::Up, r, c),
            K_USEND => self.on_sent(Side::Up, r, c),
            _ => {}
        }
    }

    // ----- validity helpers -------------------------------------------------

    fn client_ok(&self, r: Ref) -> bool {
        self.clients.get(r.0).is_some_and(|c| c.gen == r.1)
    }

    fn up_ok(&self, r: Ref) -> bool {
        self.ups.get(r.0).is_some_and(|u| u.gen == r.1)
    }

    /// Queues the next heartbeat; on failure says so once and leaves
    /// `tick_armed` false, so the loop tries again after the next batch.
    fn arm_tick(&mut self) {
        match self
            .ring
            .push(Op::Timeout { after: TICK }, tag(K_TICK, (0, 0)))
        {
            Ok(_) => self.tick_armed = true,
            Err(e) => {
                if self.tick_armed || self.ticks == 0 {
                    tracing::error!(worker = self.id, error = %e,
                        "cannot queue the heartbeat timer (timeouts, pool expiry); retrying");
                }
                self.tick_armed = false;
            }
        }
    }
}

/// Whether a request has a body to read after its head.
fn has_body(head: &RequestHead) -> bool {
    !matches!(head.body, BodyKind::None | BodyKind::Length(0))
}

/// Methods a request of which may be sent twice (RFC 9110 §9.2.2): only these
/// are retried on a fresh connection when a pooled one turns out dead.
fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}
