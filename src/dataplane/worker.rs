//! One data-plane worker: the event loop and the proxying state machine.
//!
//! Every completion carries a tag `kind | generation | slot`; a completion for
//! a connection that has since been closed (its slot reused or empty) is
//! recognised by its generation and ignored — its resources were returned by
//! the ring layer and are simply dropped.

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmux_uring::op::{advance_segs, compact_segs, pins_too_many};
use ringmux_uring::{BufRef, BufRing, Completion, Op, Returned, Ring, RingConfig, Seg};
use slab::Slab;

use super::conn::{Client, Phase, Ref, Upstream};
use super::guard::{expired, ClientLimits, Expiry};
use crate::error::ProxyError;
use crate::http::{
    parse_request, parse_response, simple_response, BodyKind, BodyTracker, HttpError, Parsed,
    RequestHead,
};
use crate::metrics::Metrics;
use crate::msg::{Inbox, Mailbox, ToControl, ToWorker};
use crate::origin::OriginPolicy;
use crate::route::{ChildInfo, Failure, RouteKey};

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
    starved: Vec<(bool, Ref)>,
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
                self.metrics.workers[self.id].record_lag(late);
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
            K_CRECV => self.on_client_recv(r, c),
            K_CSEND => self.on_client_sent(r, c),
            K_UCONN => self.on_up_connected(r, c.result),
            K_URECV => self.on_up_recv(r, c),
            K_USEND => self.on_up_sent(r, c),
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

    // ----- accept -----------------------------------------------------------

    fn on_accept(&mut self, c: Completion) {
        if let Returned::Fd(fd) = c.data {
            // No setsockopt here: the accepted socket inherits TCP_NODELAY
            // from the listener (server::bind_one, and its test).
            let gen = self.gen();
            let idx = self.clients.insert(Client::new(fd, gen, self.now));
            self.metrics.workers[self.id]
                .connections
                .fetch_add(1, Relaxed);
            self.arm_client_recv((idx, gen));
        } else if c.result != -libc::ECANCELED {
            self.accept_errors += 1;
            if self.accept_errors.is_power_of_two() {
                tracing::warn!(
                    worker = self.id,
                    errno = -c.result,
                    count = self.accept_errors,
                    "accept failed (out of fds? raise the limit or lower --max-children)"
                );
            }
            if !c.more && !self.stopping {
                // Back off instead of spinning on a persistent error (EMFILE):
                // the heartbeat re-arms accept.
                self.accept_retry_at = Some(self.now + ACCEPT_BACKOFF);
            }
            return;
        }
        if !c.more && !self.stopping {
            self.arm_accept();
        }
    }

    /// Arms the multishot accept; if that fails, the heartbeat retries
    /// after [`ACCEPT_BACKOFF`] (a worker must never stop accepting for good).
    fn arm_accept(&mut self) {
        let lfd = self.listener.as_raw_fd();
        if let Err(e) = self
            .ring
            .push(Op::AcceptMulti { fd: lfd }, tag(K_ACCEPT, (0, 0)))
        {
            tracing::error!(worker = self.id, error = %e, "cannot re-arm accept; retrying shortly");
            self.accept_retry_at = Some(self.now + ACCEPT_BACKOFF);
        }
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

    // ----- control messages -------------------------------------------------

    fn on_inbox(&mut self) {
        let msgs: Vec<ToWorker> = self.inbox.drain().collect();
        for m in msgs {
            match m {
                ToWorker::Ready { key, child } => {
                    self.cache.insert(key, Arc::clone(&child));
                    for r in self.waiting.remove(&key).unwrap_or_default() {
                        self.resume_waiter(r, &child);
                    }
                }
                ToWorker::Failed { key, error } => {
                    for r in self.waiting.remove(&key).unwrap_or_default() {
                        if !self.client_ok(r) {
                            continue;
                        }
                        let cl = &mut self.clients[r.0];
                        if let Phase::Waiting { head, .. } = &cl.phase {
                            // Its body was never read: the connection cannot
                            // carry another request after the error.
                            if !matches!(head.body, BodyKind::None | BodyKind::Length(0)) {
                                cl.keep_alive = false;
                            }
                            self.respond_error(r, &error);
                        }
                    }
                }
                ToWorker::Gone { key, child_id } => {
                    if self.cache.get(&key).is_some_and(|c| c.id == child_id) {
                        self.cache.remove(&key);
                    }
                    for r in self.pool.remove(&child_id).unwrap_or_default() {
                        if self.up_ok(r) && self.ups[r.0].client.is_none() {
                            self.close_up(r);
                        }
                    }
                }
                ToWorker::Closed { token } => {
                    let r = ((token & 0xffff_ffff) as usize, (token >> 32) as u32);
                    if self.client_ok(r) {
                        if let Phase::Closing { answered, .. } = &mut self.clients[r.0].phase {
                            *answered = true;
                        }
                        self.process_client(r);
                    }
                }
                ToWorker::Shutdown => {
                    self.stopping = true;
                    // Requests parked for a child will not get one: say so.
                    let parked: Vec<Ref> = self.waiting.drain().flat_map(|(_, v)| v).collect();
                    for r in parked {
                        if self.client_ok(r) {
                            self.clients[r.0].keep_alive = false;
                            self.respond_error(r, &ProxyError::ShuttingDown);
                        }
                    }
                }
            }
        }
    }

    fn resume_waiter(&mut self, r: Ref, child: &Arc<ChildInfo>) {
        if !self.client_ok(r) {
            return;
        }
        let phase = std::mem::replace(&mut self.clients[r.0].phase, Phase::Head);
        match phase {
            Phase::Waiting { key, head, missed } if !child.is_alive() => {
                // Died between the answer and now: ask again, once.
                self.cache.remove(&key);
                if missed == 0 {
                    self.wait_for_child(r, key, *head, 1);
                } else {
                    if has_body(&head) {
                        self.clients[r.0].keep_alive = false;
                    }
                    self.respond_error(r, &ProxyError::ChildClosed);
                }
            }
            Phase::Waiting { head, .. } => {
                self.start_proxy(r, Arc::clone(child), *head);
                self.resume_client_recv(r);
            }
            other => self.clients[r.0].phase = other,
        }
    }

    // ----- client receive ---------------------------------------------------

    fn arm_client_recv(&mut self, r: Ref) {
        let Some(c) = self.clients.get_mut(r.0) else {
            return;
        };
        if c.recv.op.is_some() || c.eof {
            return;
        }
        let fd = c.fd.as_raw_fd();
        match self.ring.push(
            Op::RecvMulti {
                fd,
                bufs: self.bufs.clone(),
            },
            tag(K_CRECV, r),
        ) {
            Ok(id) => {
                c.recv.op = Some(id);
                c.recv.cancel_sent = false;
                c.recv.starved = false;
            }
            Err(e) => {
                tracing::warn!(worker = self.id, error = %e, "cannot arm client receive");
                self.close_client(r);
            }
        }
    }

    fn pause_client_recv(&mut self, r: Ref) {
        let Some(c) = self.clients.get_mut(r.0) else {
            return;
        };
        c.recv.paused = true;
        if let (Some(op), false) = (c.recv.op, c.recv.cancel_sent) {
            // If the cancel cannot be queued, the next pause tries again.
            c.recv.cancel_sent = self
                .ring
                .push(Op::Cancel { target: op }, tag(K_IGNORE, r))
                .is_ok();
        }
    }

    fn resume_client_recv(&mut self, r: Ref) {
        let Some(c) = self.clients.get_mut(r.0) else {
            return;
        };
        if !c.recv.paused {
            return;
        }
        c.recv.paused = false;
        if c.recv.op.is_none() && !c.recv.starved {
            self.arm_client_recv(r);
        }
    }

    fn on_client_recv(&mut self, r: Ref, c: Completion) {
        if !self.client_ok(r) {
            return;
        }
        let cl = &mut self.clients[r.0];
        if !c.more {
            cl.recv.op = None;
        }
        match (c.result, c.data) {
            (n, Returned::Buf(buf)) if n > 0 => {
                cl.last_io = self.now;
                cl.last_recv = self.now;
                cl.pending_bytes += buf.len();
                cl.pending.push_back(buf);
                self.process_client(r);
                if self.client_ok(r) && self.clients[r.0].pending_bytes > HIGH_WATER {
                    self.pause_client_recv(r);
                }
            }
            (0, _) => {
                cl.eof = true;
                self.on_client_eof(r);
                return;
            }
            (e, _) if e == -libc::ENOBUFS => {
                cl.recv.starved = true;
                self.starved.push((false, r));
                return;
            }
            (e, _) if e == -libc::ECANCELED => {}
            (e, _) if e < 0 => {
                tracing::debug!(worker = self.id, errno = -e, "client receive failed");
                self.abort_client(r);
                return;
            }
            _ => {}
        }
        if !self.client_ok(r) {
            return;
        }
        let cl = &mut self.clients[r.0];
        if cl.recv.op.is_none() && !cl.recv.paused && !cl.recv.starved && !cl.eof {
            self.arm_client_recv(r);
        }
    }

    fn on_client_eof(&mut self, r: Ref) {
        let cl = &self.clients[r.0];
        let idle = matches!(cl.phase, Phase::Head) && cl.pending.is_empty();
        if idle {
            self.close_when_flushed(r);
        } else {
            // The client went away mid-exchange (for SSE: cancellation). Drop
            // the upstream side at once so the child sees the disconnect.
            self.abort_client(r);
        }
    }

    /// Consumes as much of the client's pending input as the current phase allows.
    fn process_client(&mut self, r: Ref) {
        loop {
            if !self.client_ok(r) {
                return;
            }
            let cl = &mut self.clients[r.0];
            match &mut cl.phase {
                Phase::Head => {
                    if cl.close_after_flush {
                        return;
                    }
                    let Some(buf) = cl.pending.pop_front() else {
                        if cl.eof {
                            self.on_client_eof(r);
                        } else if cl.recv.paused {
                            self.resume_client_recv(r);
                        }
                        return;
                    };
                    cl.pending_bytes -= buf.len();
                    cl.head_started.get_or_insert(self.now);
                    let prev = cl.head_acc.held();
                    let parsed = cl.head_acc.feed(buf.as_slice(), parse_request);
                    match parsed {
                        Ok(Parsed::Complete { head, head_len }) => {
                            let used = head_len - prev;
                            let rest = buf.slice(used, buf.len());
                            cl.head_acc.clear();
                            cl.head_started = None;
                            cl.served += 1;
                            if !rest.is_empty() {
                                cl.pending_bytes += rest.len();
                                cl.pending.push_front(rest);
                            }
                            self.on_request_head(r, head);
                        }
                        Ok(Parsed::Partial) => {}
                        Err(e) => {
                            tracing::debug!(worker = self.id, error = %e, "bad request");
                            let cl = &mut self.clients[r.0];
                            cl.pending.clear();
                            cl.pending_bytes = 0;
                            cl.head_acc.clear();
                            self.respond_error(r, &ProxyError::BadRequest(e));
                            return;
                        }
                    }
                }
                Phase::Waiting { .. } => {
                    for b in cl.pending.iter_mut() {
                        b.detach();
                    }
                    if cl.pending_bytes > HIGH_WATER {
                        self.pause_client_recv(r);
                    }
                    return;
                }
                Phase::Closing { body, answered } => {
                    while !body.is_done() {
                        let Some(mut buf) = cl.pending.pop_front() else {
                            break;
                        };
                        cl.pending_bytes -= buf.len();
                        match body.feed(buf.as_slice()) {
                            Ok(n) => {
                                buf.advance(n);
                                if !buf.is_empty() {
                                    cl.pending_bytes += buf.len();
                                    cl.pending.push_front(buf);
                                }
                            }
                            Err(e) => {
                                let e = ProxyError::BadRequest(e);
                                cl.pending.clear();
                                cl.pending_bytes = 0;
                                self.respond_error(r, &e);
                                return;
                            }
                        }
                    }
                    if !(body.is_done() && *answered) {
                        return;
                    }
                    let close = !cl.keep_alive;
                    cl.phase = Phase::Head;
                    cl.out
                        .push(Seg::owned(simple_response(200, "closed", &[], close)));
                    if close {
                        cl.close_after_flush = true;
                    }
                    self.flush_client(r);
                }
                Phase::Proxy { up, body } => {
                    let up = *up;
                    if body.is_done() {
                        return;
                    }
                    let mut segs = Vec::new();
                    let mut err = None;
                    while !body.is_done() {
                        let Some(buf) = cl.pending.pop_front() else {
                            break;
                        };
                        cl.pending_bytes -= buf.len();
                        match body.feed(buf.as_slice()) {
                            Ok(n) => {
                                if n < buf.len() {
                                    let rest = buf.slice(n, buf.len());
                                    cl.pending_bytes += rest.len();
                                    cl.pending.push_front(rest);
                                }
                                if n > 0 {
                                    segs.push(buf.slice(0, n));
                                }
                            }
                            Err(e) => {
                                err = Some(e);
                                break;
                            }
                        }
                    }
                    let done = body.is_done();
                    if let Some(e) = err {
                        // A broken request body cannot be forwarded meaningfully.
                        tracing::debug!(worker = self.id, error = %e, "bad request body");
                        if e == HttpError::BodyTooLarge {
                            self.metrics.workers[self.id]
                                .too_large
                                .fetch_add(1, Relaxed);
                        }
                        self.fail_request_body(r, &ProxyError::BadRequest(e));
                        return;
                    }
                    self.send_upstream(up, segs, done);
                    return;
                }
            }
        }
    }

    fn on_request_head(&mut self, r: Ref, head: RequestHead) {
        self.metrics.workers[self.id].requests.fetch_add(1, Relaxed);
        // DNS-rebinding protection comes first: a refused request neither
        // starts a child nor closes a rollout.
        if let Err(why) = self.origin.check(&head.origin_headers()) {
            tracing::debug!(worker = self.id, "refused a request: {why}");
            self.metrics.workers[self.id].refused.fetch_add(1, Relaxed);
            self.clients[r.0].keep_alive = false;
            self.respond_error(r, &ProxyError::Forbidden(why));
            return;
        }
        if let BodyKind::Length(n) = head.body {
            if n > self.limits.max_body {
                // Refused before a child is asked for or sees a byte of it.
                tracing::debug!(worker = self.id, length = n, "request body over --max-body");
                self.metrics.workers[self.id]
                    .too_large
                    .fetch_add(1, Relaxed);
                self.clients[r.0].keep_alive = false;
                self.respond_error(r, &ProxyError::BadRequest(HttpError::BodyTooLarge));
                return;
            }
        }
        let key_val = head.query_param(&self.key_param);
        let key = RouteKey::from_key(key_val.as_deref());
        let cl = &mut self.clients[r.0];
        cl.keep_alive = head.keep_alive;
        if head.path() == self.close_path {
            self.metrics.workers[self.id].closes.fetch_add(1, Relaxed);
            cl.phase = Phase::Closing {
                body: BodyTracker::new(head.body).with_limit(self.limits.max_body),
                answered: false,
            };
            let token = (u64::from(r.1) << 32) | r.0 as u64;
            if self
                .control
                .send(ToControl::Close {
                    key,
                    worker: self.id,
                    token,
                })
                .is_err()
            {
                self.respond_error(r, &ProxyError::ShuttingDown);
            }
            return;
        }
        if let Some(child) = self.cache.get(&key) {
            if child.is_alive() {
                let child = Arc::clone(child);
                self.start_proxy(r, child, head);
                return;
            }
            self.cache.remove(&key);
        }
        self.wait_for_child(r, key, head, 0);
    }

    /// Parks a request until the control plane answers for `key`.
    fn wait_for_child(&mut self, r: Ref, key: RouteKey, head: RequestHead, missed: u8) {
        let cl = &mut self.clients[r.0];
        // Its body (if any) may wait for a slow child start: hold it outside
        // the receive ring.
        for b in cl.pending.iter_mut() {
            b.detach();
        }
        // Only the first waiter asks; only its query is needed (a forked
        // child's hook gets it), so only it is copied.
        let list = self.waiting.entry(key).or_default();
        list.push(r);
        let query = (list.len() == 1).then(|| head.query().unwrap_or("").to_string());
        cl.phase = Phase::Waiting {
            key,
            head: Box::new(head),
            missed,
        };
        let Some(query) = query else {
            return;
        };
        if self
            .control
            .send(ToControl::Acquire {
                key,
                worker: self.id,
                query,
            })
            .is_err()
        {
            self.waiting.remove(&key);
            self.respond_error(r, &ProxyError::ShuttingDown);
        }
    }

    // ----- proxying ---------------------------------------------------------

    fn start_proxy(&mut self, r: Ref, child: Arc<ChildInfo>, head: RequestHead) {
        let up = match self.take_pooled(&child) {
            Some(u) => u,
            None => match self.new_upstream(&child) {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "cannot open upstream socket");
                    if has_body(&head) {
                        self.clients[r.0].keep_alive = false;
                    }
                    self.respond_error(r, &ProxyError::ChildUnreachable);
                    return;
                }
            },
        };
        let mut h = Vec::with_capacity(512);
        head.write_upstream(&child.host, &mut h);
        let u = &mut self.ups[up.0];
        u.client = Some(r);
        u.req_is_head = head.is_head();
        if u.reused && idempotent(&head.method) {
            u.replay = Some(Vec::new());
        }
        self.clients[r.0].phase = Phase::Proxy {
            up,
            body: BodyTracker::new(head.body).with_limit(self.limits.max_body),
        };
        let body_done = matches!(head.body, BodyKind::None | BodyKind::Length(0));
        self.queue_upstream(up, Seg::owned(h));
        if body_done {
            self.ups[up.0].req_done = true;
            self.ups[up.0].asked_at = Some(self.now);
            self.flush_upstream(up);
        } else {
            self.process_client(r);
        }
    }

    fn queue_upstream(&mut self, up: Ref, seg: Seg) {
        let u = &mut self.ups[up.0];
        if let Some(rep) = &mut u.replay {
            u.replay_bytes += seg.len();
            if u.replay_bytes > REPLAY_MAX {
                u.replay = None;
            } else {
                // An owned copy: a request waiting for its answer must not pin
                // a ring buffer.
                rep.push(Seg::owned(seg.as_slice().to_vec()));
            }
        }
        u.out.push(seg);
    }

    fn send_upstream(&mut self, up: Ref, segs: Vec<BufRef>, done: bool) {
        if !self.up_ok(up) {
            return;
        }
        for s in segs {
            self.queue_upstream(up, Seg::Buf(s));
        }
        if done {
            self.ups[up.0].req_done = true;
            self.ups[up.0].asked_at = Some(self.now);
        }
        self.flush_upstream(up);
        let u = &self.ups[up.0];
        if u.out.bytes > HIGH_WATER {
            if let Some(c) = u.client {
                self.pause_client_recv(c);
            }
        }
    }

    fn take_pooled(&mut self, child: &Arc<ChildInfo>) -> Option<Ref> {
        loop {
            let list = self.pool.get_mut(&child.id)?;
            let Some(r) = list.pop() else {
                self.pool.remove(&child.id);
                return None;
            };
            if !self.up_ok(r) {
                continue;
            }
            let u = &mut self.ups[r.0];
            let fresh = u.idle_since.is_some_and(|t| t.elapsed() < POOL_IDLE_MAX);
            if u.client.is_none() && u.recv.op.is_some() && fresh {
                u.reused = true;
                u.idle_since = None;
                return Some(r);
            }
            if u.client.is_none() {
                self.close_up(r);
            }
        }
    }

    /// Closes pooled connections idle for longer than [`POOL_IDLE_MAX`].
    fn expire_pool(&mut self) {
        let expired: Vec<Ref> = self
            .pool
            .values()
            .flatten()
            .copied()
            .filter(|r| {
                self.ups.get(r.0).is_some_and(|u| {
                    u.gen == r.1
                        && u.client.is_none()
                        && u.idle_since.is_none_or(|t| t.elapsed() >= POOL_IDLE_MAX)
                })
            })
            .collect();
        for r in expired {
            self.close_up(r);
        }
    }

    fn new_upstream(&mut self, child: &Arc<ChildInfo>) -> std::io::Result<Ref> {
        let addr = child.addr.sock_addr()?;
        let fd = child.addr.client_socket()?;
        let raw = fd.as_raw_fd();
        let gen = self.gen();
        let idx = self.ups.insert(Upstream::new(fd, gen, Arc::clone(child)));
        let r = (idx, gen);
        if let Err(e) = self
            .ring
            .push(Op::Connect { fd: raw, addr }, tag(K_UCONN, r))
        {
            self.ups.remove(idx);
            return Err(e);
        }
        Ok(r)
    }

    fn on_up_connected(&mut self, up: Ref, result: i32) {
        if !self.up_ok(up) {
            return;
        }
        if result < 0 {
            tracing::debug!(worker = self.id, errno = -result, "connect to child failed");
            self.upstream_failed(up, ProxyError::ChildUnreachable);
            return;
        }
        self.ups[up.0].connected = true;
        self.arm_up_recv(up);
        self.flush_upstream(up);
    }

    fn arm_up_recv(&mut self, up: Ref) {
        let Some(u) = self.ups.get_mut(up.0) else {
            return;
        };
        if u.recv.op.is_some() {
            return;
        }
        let fd = u.fd.as_raw_fd();
        match self.ring.push(
            Op::RecvMulti {
                fd,
                bufs: self.bufs.clone(),
            },
            tag(K_URECV, up),
        ) {
            Ok(id) => {
                u.recv.op = Some(id);
                u.recv.cancel_sent = false;
                u.recv.starved = false;
            }
            Err(e) => {
                tracing::warn!(worker = self.id, error = %e, "cannot arm upstream receive");
                self.upstream_failed(up, ProxyError::ChildUnreachable);
            }
        }
    }

    fn pause_up_recv(&mut self, up: Ref) {
        let Some(u) = self.ups.get_mut(up.0) else {
            return;
        };
        u.recv.paused = true;
        if let (Some(op), false) = (u.recv.op, u.recv.cancel_sent) {
            // If the cancel cannot be queued, the next pause tries again.
            u.recv.cancel_sent = self
                .ring
                .push(Op::Cancel { target: op }, tag(K_IGNORE, up))
                .is_ok();
        }
    }

    fn resume_up_recv(&mut self, up: Ref) {
        let Some(u) = self.ups.get_mut(up.0) else {
            return;
        };
        if !u.recv.paused {
            return;
        }
        u.recv.paused = false;
        if u.recv.op.is_none() && !u.recv.starved && u.connected {
            self.arm_up_recv(up);
        }
    }

    fn flush_upstream(&mut self, up: Ref) {
        let Some(u) = self.ups.get_mut(up.0) else {
            return;
        };
        if !u.connected || u.out.in_flight || u.out.q.is_empty() {
            return;
        }
        if u.out.slow || pins_too_many(&u.out.q) {
            compact_segs(&mut u.out.q);
        }
        let segs = std::mem::take(&mut u.out.q);
        let fd = u.fd.as_raw_fd();
        match self.ring.push(Op::Writev { fd, segs }, tag(K_USEND, up)) {
            Ok(_) => u.out.in_flight = true,
            Err(e) => {
                tracing::warn!(worker = self.id, error = %e, "cannot queue upstream send");
                self.upstream_failed(up, ProxyError::ChildUnreachable);
            }
        }
    }

    fn on_up_sent(&mut self, up: Ref, c: Completion) {
        if !self.up_ok(up) {
            return;
        }
        let u = &mut self.ups[up.0];
        u.out.in_flight = false;
        if c.result < 0 {
            tracing::debug!(worker = self.id, errno = -c.result, "send to child failed");
            self.upstream_failed(up, ProxyError::ChildUnreachable);
            return;
        }
        let n = c.result as usize;
        u.out.bytes = u.out.bytes.saturating_sub(n);
        if let Returned::Segs(mut segs) = c.data {
            advance_segs(&mut segs, n);
            u.out.slow = !segs.is_empty();
            if !segs.is_empty() {
                segs.append(&mut u.out.q);
                u.out.q = segs;
            }
        }
        let low = u.out.bytes < LOW_WATER;
        let client = u.client;
        self.flush_upstream(up);
        if low {
            if let Some(cr) = client {
                if self.client_ok(cr) {
                    self.resume_client_recv(cr);
                }
            }
        }
    }

    fn on_up_recv(&mut self, up: Ref, c: Completion) {
        if !self.up_ok(up) {
            return;
        }
        if !c.more {
            self.ups[up.0].recv.op = None;
        }
        match (c.result, c.data) {
            (n, Returned::Buf(buf)) if n > 0 => self.on_up_data(up, buf),
            (0, _) => {
                self.on_up_eof(up);
                return;
            }
            (e, _) if e == -libc::ENOBUFS => {
                self.ups[up.0].recv.starved = true;
                self.starved.push((true, up));
                return;
            }
            (e, _) if e == -libc::ECANCELED => {}
            (e, _) if e < 0 => {
                tracing::debug!(worker = self.id, errno = -e, "receive from child failed");
                self.on_up_eof(up);
                return;
            }
            _ => {}
        }
        if !self.up_ok(up) {
            return;
        }
        let u = &self.ups[up.0];
        if u.recv.op.is_none() && !u.recv.paused && !u.recv.starved {
            self.arm_up_recv(up);
        }
    }

    fn on_up_data(&mut self, up: Ref, mut buf: BufRef) {
        let u = &mut self.ups[up.0];
        u.got_bytes = true;
        u.replay = None;
        let Some(cr) = u.client else {
            // Bytes from an idle pooled connection: the child is not speaking
            // HTTP as we understand it; drop the connection.
            self.close_up(up);
            return;
        };
        if !self.client_ok(cr) {
            self.close_up(up);
            return;
        }
        // Response head(s).
        while self.ups[up.0].body.is_none() {
            let u = &mut self.ups[up.0];
            let prev = u.head_acc.held();
            let req_is_head = u.req_is_head;
            let parsed = u
                .head_acc
                .feed(buf.as_slice(), |b| parse_response(b, req_is_head));
            match parsed {
                Ok(Parsed::Partial) => return,
                Ok(Parsed::Complete { head, head_len }) => {
                    u.head_acc.clear();
                    buf.advance(head_len - prev);
                    let child = Arc::clone(&u.child);
                    if child.mark_ready() {
                        tracing::debug!(
                            worker = self.id,
                            child = child.id,
                            ms = child.spawned.elapsed().as_secs_f64() * 1000.0,
                            "child answered its first request"
                        );
                    }
                    let cl = &mut self.clients[cr.0];
                    let mut h = Vec::with_capacity(512);
                    if head.is_informational() {
                        head.write_downstream(true, &mut h);
                        cl.out.push(Seg::owned(h));
                        self.flush_client(cr);
                        continue;
                    }
                    if head.body == BodyKind::CloseDelimited {
                        cl.keep_alive = false;
                    }
                    head.write_downstream(cl.keep_alive, &mut h);
                    cl.out.push(Seg::owned(h));
                    let u = &mut self.ups[up.0];
                    u.asked_at = None;
                    u.reusable = head.keep_alive;
                    u.body = Some(BodyTracker::new(head.body));
                }
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "invalid response from child");
                    self.upstream_failed(up, ProxyError::BadResponse(e));
                    return;
                }
            }
        }
        // Response body.
        let u = &mut self.ups[up.0];
        let Some(body) = u.body.as_mut() else {
            return;
        };
        let mut finished = body.is_done();
        if !buf.is_empty() && !finished {
            match body.feed(buf.as_slice()) {
                Ok(n) => {
                    if n < buf.len() {
                        // Bytes past the end of the response: never reuse.
                        u.reusable = false;
                    }
                    let part = buf.slice(0, n);
                    self.clients[cr.0].out.push(Seg::Buf(part));
                    finished = self.ups[up.0].body.as_ref().is_some_and(|b| b.is_done());
                }
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "bad response body framing");
                    self.close_up(up);
                    self.close_when_flushed(cr);
                    return;
                }
            }
        } else if !buf.is_empty() {
            u.reusable = false;
        }
        self.flush_client(cr);
        if finished {
            self.finish_exchange(up, cr);
        } else if self.client_ok(cr) && self.clients[cr.0].out.bytes > HIGH_WATER {
            self.pause_up_recv(up);
        }
    }

    fn on_up_eof(&mut self, up: Ref) {
        let u = &self.ups[up.0];
        let Some(cr) = u.client else {
            self.close_up(up);
            return;
        };
        if let Some(body) = &u.body {
            if body.is_close_delimited() {
                self.ups[up.0].reusable = false;
                self.finish_exchange(up, cr);
            } else {
                // Truncated response: end the client connection once what we
                // have is sent, so it does not wait forever.
                self.close_up(up);
                self.close_when_flushed(cr);
            }
            return;
        }
        self.upstream_failed(up, ProxyError::ChildClosed);
    }

    /// The upstream connection failed before a response head reached the
    /// client: retry once on a fresh connection if the failed one was reused
    /// and we still hold the request; else answer the client with an error.
    fn upstream_failed(&mut self, up: Ref, err: ProxyError) {
        let u = &mut self.ups[up.0];
        let cr = u.client;
        let child = Arc::clone(&u.child);
        let can_retry = u.reused && !u.got_bytes && u.req_done && u.replay.is_some();
        let req_is_head = u.req_is_head;
        let replay = u.replay.take();
        self.close_up(up);
        let Some(cr) = cr else {
            return;
        };
        if !self.client_ok(cr) {
            return;
        }
        if can_retry && child.is_alive() {
            if let (Some(segs), Ok(nu)) = (replay, self.new_upstream(&child)) {
                tracing::debug!(
                    worker = self.id,
                    "retrying on a fresh connection to the child"
                );
                let u = &mut self.ups[nu.0];
                u.client = Some(cr);
                u.req_done = true;
                u.asked_at = Some(self.now);
                u.req_is_head = req_is_head;
                for s in segs {
                    u.out.push(s);
                }
                if let Phase::Proxy { up: p, .. } = &mut self.clients[cr.0].phase {
                    *p = nu;
                }
                return;
            }
        }
        let err = if child.failure() == Failure::ReadyTimeout {
            ProxyError::ReadyTimeout
        } else {
            err
        };
        let body_done = match &self.clients[cr.0].phase {
            Phase::Proxy { body, .. } => body.is_done(),
            _ => true,
        };
        let cl = &mut self.clients[cr.0];
        cl.phase = Phase::Head;
        if !body_done {
            cl.keep_alive = false;
        }
        if cl.out.bytes > 0 {
            // A 1xx was already forwarded; an error now would be confusing.
            self.close_when_flushed(cr);
            return;
        }
        self.respond_error(cr, &err);
    }

    fn finish_exchange(&mut self, up: Ref, cr: Ref) {
        let u = &mut self.ups[up.0];
        let req_done = match self.clients.get(cr.0).map(|c| &c.phase) {
            Some(Phase::Proxy { body, .. }) => body.is_done(),
            _ => true,
        };
        let reusable = u.reusable && req_done && u.out.is_idle() && u.child.is_alive();
        let child_id = u.child.id;
        u.reset_exchange();
        if reusable {
            self.ups[up.0].idle_since = Some(Instant::now());
            self.pool.entry(child_id).or_default().push(up);
            if self.ups[up.0].recv.paused {
                self.resume_up_recv(up);
            }
        } else {
            self.close_up(up);
        }
        if !self.client_ok(cr) {
            return;
        }
        let cl = &mut self.clients[cr.0];
        cl.phase = Phase::Head;
        if !req_done || !cl.keep_alive {
            self.close_when_flushed(cr);
            return;
        }
        if cl.recv.paused {
            self.resume_client_recv(cr);
        }
        self.process_client(cr);
    }

    // ----- client send --------------------------------------------------------

    fn respond_error(&mut self, r: Ref, err: &ProxyError) {
        self.metrics.workers[self.id]
            .proxy_errors
            .fetch_add(1, Relaxed);
        let Some(cl) = self.clients.get_mut(r.0) else {
            return;
        };
        let unread_body = match &cl.phase {
            Phase::Waiting { head, .. } => has_body(head),
            Phase::Proxy { body, .. } | Phase::Closing { body, .. } => !body.is_done(),
            Phase::Head => false,
        };
        let close = !cl.keep_alive || unread_body || matches!(err, ProxyError::BadRequest(_));
        cl.phase = Phase::Head;
        cl.out.push(Seg::owned(err.response(close)));
        if close {
            cl.close_after_flush = true;
            cl.pending.clear();
            cl.pending_bytes = 0;
        }
        self.flush_client(r);
        if !close {
            self.process_client(r);
        }
    }

    /// Ends a client connection once what is queued for it is sent (at once
    /// if nothing is): used when a response cannot be completed.
    fn close_when_flushed(&mut self, r: Ref) {
        let Some(cl) = self.clients.get_mut(r.0).filter(|c| c.gen == r.1) else {
            return;
        };
        cl.close_after_flush = true;
        cl.keep_alive = false;
        cl.phase = Phase::Head;
        cl.pending.clear();
        cl.pending_bytes = 0;
        if cl.out.is_idle() {
            self.close_client(r);
        } else {
            self.flush_client(r);
        }
    }

    fn flush_client(&mut self, r: Ref) {
        let Some(cl) = self.clients.get_mut(r.0) else {
            return;
        };
        if cl.out.in_flight || cl.out.q.is_empty() {
            return;
        }
        if cl.out.slow || pins_too_many(&cl.out.q) {
            compact_segs(&mut cl.out.q);
        }
        let segs = std::mem::take(&mut cl.out.q);
        let fd = cl.fd.as_raw_fd();
        match self.ring.push(Op::Writev { fd, segs }, tag(K_CSEND, r)) {
            Ok(_) => {
                cl.out.in_flight = true;
                cl.send_started = Some(self.now);
            }
            Err(e) => {
                tracing::warn!(worker = self.id, error = %e, "cannot queue client send");
                self.abort_client(r);
            }
        }
    }

    fn on_client_sent(&mut self, r: Ref, c: Completion) {
        if !self.client_ok(r) {
            return;
        }
        let cl = &mut self.clients[r.0];
        cl.out.in_flight = false;
        cl.send_started = None;
        if c.result < 0 {
            tracing::debug!(worker = self.id, errno = -c.result, "send to client failed");
            self.abort_client(r);
            return;
        }
        let n = c.result as usize;
        cl.last_io = self.now;
        cl.out.bytes = cl.out.bytes.saturating_sub(n);
        if let Returned::Segs(mut segs) = c.data {
            advance_segs(&mut segs, n);
            cl.out.slow = !segs.is_empty();
            if !segs.is_empty() {
                segs.append(&mut cl.out.q);
                cl.out.q = segs;
            }
        }
        if cl.out.is_idle() && cl.close_after_flush {
            self.close_client(r);
            return;
        }
        let low = cl.out.bytes < LOW_WATER;
        let up = match &cl.phase {
            Phase::Proxy { up, .. } => Some(*up),
            _ => None,
        };
        self.flush_client(r);
        if let (true, Some(up)) = (low, up) {
            if self.up_ok(up) {
                self.resume_up_recv(up);
            }
        }
    }

    // ----- deadlines ----------------------------------------------------------

    /// Ends what ran out of a limit (see [`super::guard`]); also counts the
    /// requests in progress (waiting for a child or being proxied), which
    /// the cleanup pacing reads: a long tool call keeps the workers "serving"
    /// even when no new request arrives.
    fn check_deadlines(&mut self) {
        let now = Instant::now();
        let mut busy = 0u64;
        let expired_clients: Vec<(Ref, Expiry)> = self
            .clients
            .iter()
            .filter_map(|(i, c)| {
                if matches!(c.phase, Phase::Waiting { .. } | Phase::Proxy { .. }) {
                    busy += 1;
                }
                expired(c, &self.limits, now).map(|e| ((i, c.gen), e))
            })
            .collect();
        self.metrics.workers[self.id]
            .in_progress
            .store(busy, Relaxed);
        for (r, why) in expired_clients {
            self.client_expired(r, why);
        }
        if let Some(limit) = self.limits.response {
            let late: Vec<Ref> = self
                .ups
                .iter()
                .filter(|(_, u)| {
                    u.client.is_some()
                        && u.asked_at
                            .is_some_and(|t| now.saturating_duration_since(t) > limit)
                })
                .map(|(i, u)| (i, u.gen))
                .collect();
            for up in late {
                tracing::debug!(
                    worker = self.id,
                    child = self.ups[up.0].child.id,
                    "child sent no response head within --response-timeout"
                );
                self.metrics.workers[self.id]
                    .response_timeouts
                    .fetch_add(1, Relaxed);
                // Never replayed: the child has the request and may be working on it.
                self.ups[up.0].replay = None;
                self.upstream_failed(up, ProxyError::ResponseTimeout);
            }
        }
    }

    fn client_expired(&mut self, r: Ref, why: Expiry) {
        if !self.client_ok(r) {
            return;
        }
        let m = &self.metrics.workers[self.id];
        match why {
            Expiry::Idle => {
                m.idle_timeouts.fetch_add(1, Relaxed);
                self.close_when_flushed(r);
            }
            Expiry::Head => {
                m.head_timeouts.fetch_add(1, Relaxed);
                tracing::debug!(
                    worker = self.id,
                    "no complete request head within --head-timeout"
                );
                let cl = &mut self.clients[r.0];
                cl.keep_alive = false;
                cl.head_acc.clear();
                cl.head_started = None;
                self.respond_error(r, &ProxyError::RequestTimeout);
            }
            Expiry::Send => {
                m.send_timeouts.fetch_add(1, Relaxed);
                tracing::debug!(
                    worker = self.id,
                    "client stopped reading past --send-timeout"
                );
                self.abort_client(r);
            }
            Expiry::Body => {
                m.body_timeouts.fetch_add(1, Relaxed);
                tracing::debug!(worker = self.id, "request body stalled past --body-timeout");
                self.fail_request_body(r, &ProxyError::RequestTimeout);
            }
        }
    }

    /// A request whose body cannot be read to its end (broken framing, over
    /// `--max-body`, stalled): its upstream exchange is dropped and the client
    /// gets `err` and a close — or, if the child's response has begun (an
    /// error cannot follow it), just the close.
    fn fail_request_body(&mut self, r: Ref, err: &ProxyError) {
        if let Phase::Proxy { up, .. } = self.clients[r.0].phase {
            if self.up_ok(up) && self.ups[up.0].got_bytes {
                self.abort_client(r);
                return;
            }
            self.close_up(up);
        }
        self.clients[r.0].keep_alive = false;
        self.respond_error(r, err);
    }

    // ----- teardown ---------------------------------------------------------

    /// Client gone or broken: drop it and whatever upstream it was using.
    fn abort_client(&mut self, r: Ref) {
        if !self.client_ok(r) {
            return;
        }
        if let Phase::Proxy { up, .. } = self.clients[r.0].phase {
            self.close_up(up);
        }
        self.close_client(r);
    }

    fn close_client(&mut self, r: Ref) {
        if !self.client_ok(r) {
            return;
        }
        let cl = self.clients.remove(r.0);
        self.metrics.workers[self.id]
            .connections
            .fetch_sub(1, Relaxed);
        if let Phase::Proxy { up, .. } = cl.phase {
            if self.up_ok(up) && self.ups[up.0].client == Some(r) {
                self.close_up(up);
            }
        }
        self.release_fd(cl.fd);
    }

    fn close_up(&mut self, up: Ref) {
        if !self.up_ok(up) {
            return;
        }
        let u = self.ups.remove(up.0);
        if u.client.is_none() {
            if let Some(list) = self.pool.get_mut(&u.child.id) {
                list.retain(|r| *r != up);
                if list.is_empty() {
                    self.pool.remove(&u.child.id);
                }
            }
        }
        self.release_fd(u.fd);
    }

    /// Closes a connection's socket. SQEs naming it may still be queued and
    /// unsubmitted (the kernel resolves a plain fd when it issues the SQE), so
    /// they are submitted first: otherwise the number could be reused by a new
    /// socket before they run and they would act on the wrong connection.
    /// `shutdown` then ends the multishot receive still in flight on it.
    fn release_fd(&mut self, fd: OwnedFd) {
        let _ = self.ring.submit();
        let _ = rustix::net::shutdown(fd.as_fd(), rustix::net::Shutdown::Both);
        drop(fd);
    }

    fn rearm_starved(&mut self) {
        if self.starved.is_empty() {
            return;
        }
        if self.bufs.available() < REARM_FREE {
            self.unpin_all();
            if self.bufs.available() < REARM_FREE {
                return;
            }
        }
        for (is_up, r) in std::mem::take(&mut self.starved) {
            if is_up {
                if let Some(u) = self.ups.get_mut(r.0).filter(|u| u.gen == r.1) {
                    u.recv.starved = false;
                    if !u.recv.paused {
                        self.arm_up_recv(r);
                    }
                }
            } else if let Some(c) = self.clients.get_mut(r.0).filter(|c| c.gen == r.1) {
                c.recv.starved = false;
                if !c.recv.paused {
                    self.arm_client_recv(r);
                }
            }
        }
    }
}

impl Worker {
    /// The receive ring ran dry: copy every byte held for later (queued
    /// sends, unconsumed input) out of ring buffers so the ring refills. Only
    /// buffers inside in-flight sends stay pinned, and those drain.
    fn unpin_all(&mut self) {
        for (_, c) in self.clients.iter_mut() {
            for b in c.pending.iter_mut() {
                b.detach();
            }
            compact_segs(&mut c.out.q);
        }
        for (_, u) in self.ups.iter_mut() {
            compact_segs(&mut u.out.q);
        }
        tracing::debug!(
            worker = self.id,
            free = self.bufs.available(),
            "receive buffers ran out: held data copied out of the ring"
        );
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
