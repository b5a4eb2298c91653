//! `loadgen`: an open-loop HTTP/1.1 load generator over many keep-alive
//! connections, free of coordinated omission (the wrk2 model). It owns the
//! schedule, the connections and the latency accounting; the benchmark
//! scripts (benches/*.py) own what is measured and how it is plotted.
//!
//! Schedule: request `i` is due at `start + i / rate`, and is assigned
//! round-robin to connection `i % conns` (so connection `c` carries requests
//! `c, c + conns, c + 2·conns, …`). One request is in flight per connection
//! (no pipelining). When a connection is still busy as its next request comes
//! due, that request waits on the connection and is sent as soon as the
//! previous response has been read; its latency is still measured from its
//! *scheduled* time, so a server stall is charged in full to every request it
//! delays. Requests due in the first `--warmup` seconds are sent but not
//! recorded; the measured window is the `--secs` after that. When the window
//! opens, warm-up requests still queued on a busy connection are dropped
//! (`warmup_skipped`), so an overload during the warm-up does not leave the
//! window serving a warm-up backlog; only the one warm-up request in flight
//! on each connection may still delay the first measured one. Nothing is sent
//! once the window has ended (requests still queued then are reported as
//! `unsent`), and responses still outstanding are waited for at most
//! `--timeout-ms` more.
//!
//! With `--closed` there is no schedule (and no `--rate`): each connection
//! sends its next request as soon as the previous response has been read
//! (the wrk model), so the figures are a closed loop's: latency is measured
//! from when a request was sent, throughput is whatever the server sustains
//! at `--conns` requests in flight, and `scheduled = sent`, `unsent = 0`,
//! `target_rps = null`. Requests sent in the first `--warmup` seconds are not
//! recorded. A connection whose reconnect is refused waits 10 ms before it
//! tries again.
//!
//! With `--close` every request carries `Connection: close`: the server
//! closes after each answer and the next request on that connection opens a
//! new one (counted in `reconnects`), for measuring connection churn.
//!
//! Connections are split across `--threads` event loops (connection `c` goes to
//! thread `c % threads`), each an epoll set of non-blocking TCP_NODELAY sockets
//! plus a timerfd armed for the next due request, so sends leave at their
//! scheduled microsecond without spinning (what is left is the kernel's
//! wake-up lag, reported as `send_lag_*`, tens of µs on a VM). A connection
//! that the server closes, or that fails or times out, is reconnected at once
//! (every connection attempt inside the measured window counts in
//! `reconnects`, failed ones too); while a reconnect is being refused,
//! requests due on that connection in the next 10 ms fail at once (as
//! `errors`) instead of hammering `connect`. A request not answered
//! `--timeout-ms` after it was *sent* is a `timeout` (not an `error`) and its
//! connection is replaced. The first connections are opened before the
//! schedule starts; if that fails, loadgen exits 1 with a message.
//!
//! Usage:
//!   cargo build --release --example loadgen
//!   target/release/examples/loadgen --addr 127.0.0.1:PORT --rate 5000 --secs 5 \
//!       [--path '/mcp?vf_state_secret=k'] [--body '{...}'] [--method POST|GET] \
//!       [--conns 32] [--threads 1] [--warmup 0.5] [--mode full|sse] \
//!       [--series lat.txt] [--timeout-ms 10000]
//!   target/release/examples/loadgen --addr 127.0.0.1:PORT --closed --conns 32 --secs 5
//!
//! Prints one JSON object on stdout: sent, completed, errors, timeouts,
//! non_2xx, reconnects, duration_s, achieved_rps, target_rps, p50_us, p90_us,
//! p99_us, p999_us, max_us, mean_us, events, bytes, plus scheduled, unsent,
//! warmup_sent, warmup_skipped, send_lag_p50_us, send_lag_p99_us, conns,
//! threads, mode. Every dispatched request in the measured window ends
//! exactly once, so `sent = completed + errors + timeouts`; `non_2xx` is a
//! subset of `completed`, and latencies (µs, null if nothing completed) cover
//! every completed request, whatever its status. `duration_s` is `--secs`,
//! stretched to the last recorded completion if that came later;
//! `achieved_rps = completed / duration_s`. `bytes` counts body bytes after
//! de-chunking; `events` (`--mode sse` only) counts SSE events that carry a
//! `data:` line. `send_lag_*` is how late requests left versus their
//! schedule: queueing behind a busy connection plus the loop's own lag. `--series FILE` gets one line per
//! recorded request, sorted by schedule: `sched_offset_us latency_us status`
//! (offset from the start of the measured window; status 0 = connection
//! error, -1 = timeout, latency then being the time to that failure).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use rustix::fd::OwnedFd;
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const USAGE: &str = "usage: loadgen --addr HOST:PORT (--rate R | --closed) [--secs S] [--path P] \
[--method POST|GET] [--body STRING] [--conns N] [--threads T] [--warmup S] \
[--mode full|sse] [--series FILE] [--timeout-ms MS] [--close]";

/// How long requests on a connection fail fast after its reconnect failed.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Per-thread read buffer.
const READ_BUF: usize = 64 * 1024;
/// Epoll user data of the timerfd (connections use `gen << 32 | index`).
const TIMER_TOKEN: u64 = u64::MAX;
/// Latencies are recorded in ns, up to one hour, to 3 significant digits.
const HIST_MAX_NS: u64 = 3_600_000_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    Sse,
}

struct Args {
    addr: SocketAddr,
    path: String,
    method: Option<String>,
    body: Option<String>,
    conns: usize,
    rate: f64,
    secs: f64,
    warmup: f64,
    threads: usize,
    mode: Mode,
    series: Option<String>,
    timeout: Duration,
    closed: bool,
    close: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut rate = None;
    let mut a = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        path: "/".into(),
        method: None,
        body: None,
        conns: 1,
        rate: 0.0,
        secs: 5.0,
        warmup: 0.5,
        threads: 1,
        mode: Mode::Full,
        series: None,
        timeout: Duration::from_millis(10_000),
        closed: false,
        close: false,
    };
    fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        v.parse().map_err(|e| format!("{flag}: {e}"))
    }
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        if flag == "--closed" {
            a.closed = true;
            continue;
        }
        if flag == "--close" {
            a.close = true;
            continue;
        }
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => addr = Some(v),
            "--path" => a.path = v,
            "--method" => a.method = Some(v),
            "--body" => a.body = Some(v),
            "--conns" => a.conns = num(&flag, v)?,
            "--rate" => rate = Some(num::<f64>(&flag, v)?),
            "--secs" => a.secs = num(&flag, v)?,
            "--warmup" => a.warmup = num(&flag, v)?,
            "--threads" => a.threads = num(&flag, v)?,
            "--mode" => {
                a.mode = match v.as_str() {
                    "full" => Mode::Full,
                    "sse" => Mode::Sse,
                    _ => return Err(format!("--mode must be full or sse, not {v}")),
                }
            }
            "--series" => a.series = Some(v),
            "--timeout-ms" => a.timeout = Duration::from_millis(num(&flag, v)?),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    let addr = addr.ok_or(format!("--addr is required\n{USAGE}"))?;
    a.addr = addr
        .to_socket_addrs()
        .map_err(|e| format!("--addr {addr}: {e}"))?
        .next()
        .ok_or(format!("--addr {addr}: no address"))?;
    a.rate = match (rate, a.closed) {
        (Some(_), true) => return Err("--rate and --closed exclude each other".into()),
        // Closed loop: the schedule is unused; any valid rate keeps the
        // plan's arithmetic finite.
        (None, true) => 1.0,
        (Some(r), false) => r,
        (None, false) => return Err(format!("--rate (or --closed) is required\n{USAGE}")),
    };
    if !(a.rate > 0.0 && a.rate <= 10_000_000.0) {
        return Err("--rate must be in (0, 10000000]".into());
    }
    if !(a.secs > 0.0 && a.secs <= 3600.0 && (0.0..=600.0).contains(&a.warmup)) {
        return Err("--secs must be in (0, 3600] and --warmup in [0, 600]".into());
    }
    if !(1..=1024).contains(&a.conns) || !(1..=64).contains(&a.threads) {
        return Err("--conns must be in [1, 1024] and --threads in [1, 64]".into());
    }
    a.threads = a.threads.min(a.conns);
    if a.timeout.is_zero() || a.timeout > Duration::from_secs(600) {
        return Err("--timeout-ms must be in [1, 600000]".into());
    }
    if !a.path.starts_with('/') || a.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("--path must start with / and hold no spaces or control bytes".into());
    }
    if let Some(m) = &a.method {
        if m != "GET" && m != "POST" {
            return Err(format!("--method must be GET or POST, not {m}"));
        }
    }
    Ok(a)
}

/// The request bytes, built once and written verbatim for every request.
fn build_request(a: &Args) -> Vec<u8> {
    let method = a
        .method
        .as_deref()
        .unwrap_or(if a.body.is_some() { "POST" } else { "GET" });
    let mut r = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringmux-loadgen\r\n\
         Accept: application/json, text/event-stream\r\n",
        a.path, a.addr
    );
    if a.close {
        r.push_str("Connection: close\r\n");
    }
    let body = a.body.as_deref().unwrap_or("");
    if a.body.is_some() || method == "POST" {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

/// What every event loop shares, read-only.
struct Plan {
    addr: SocketAddr,
    request: Vec<u8>,
    conns: u64,
    /// Nanoseconds between consecutive requests (across all connections).
    period_ns: f64,
    /// Requests due before this offset from `start` are warm-up.
    warmup_ns: u64,
    /// Requests due at or after this offset are never sent.
    end_ns: u64,
    /// Index of the first request due in the measured window.
    first_window_i: u64,
    timeout: Duration,
    mode: Mode,
    series: bool,
    /// Closed loop: each connection sends as soon as it is idle.
    closed: bool,
    start: Instant,
}

impl Plan {
    /// Offset from `start` at which global request `i` is due.
    fn due_of(&self, i: u64) -> u64 {
        (i as f64 * self.period_ns) as u64
    }
    /// Offset at which connection `conn`'s `k`-th request is due.
    fn due_ns(&self, conn: usize, k: u64) -> u64 {
        self.due_of(k * self.conns + conn as u64)
    }
    fn at(&self, offset_ns: u64) -> Instant {
        self.start + Duration::from_nanos(offset_ns)
    }
    /// Offset of `t` from `start`.
    fn offset(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_nanos() as u64
    }
    /// Connection `conn`'s first request due inside the measured window.
    fn first_k_in_window(&self, conn: usize) -> u64 {
        self.first_window_i
            .saturating_sub(conn as u64)
            .div_ceil(self.conns)
    }
    /// How many requests are due strictly before offset `t`.
    fn count_below(&self, t: u64) -> u64 {
        let mut i = (t as f64 / self.period_ns).ceil() as u64;
        while self.due_of(i) < t {
            i += 1;
        }
        while i > 0 && self.due_of(i - 1) >= t {
            i -= 1;
        }
        i
    }
}

// ---------------------------------------------------------------------------
// Response parsing: head via httparse, body by Content-Length, chunked, or
// until close; body bytes are counted (and scanned for SSE events), not kept.

#[derive(Clone, Copy)]
enum Chunk {
    Size { val: u64, digits: u8, ext: bool },
    Data(u64),
    DataEnd,
    Trailer { len: usize },
}

#[derive(Clone, Copy)]
enum Phase {
    Head,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

/// Counts SSE events (blocks with at least one `data:` line ended by a blank
/// line) in a body that arrives in arbitrary pieces.
#[derive(Default)]
struct SseScan {
    line_len: usize,
    not_data: bool,
    has_data: bool,
    last_cr: bool,
    events: u64,
}

impl SseScan {
    fn scan(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' && self.last_cr {
                self.last_cr = false;
                continue;
            }
            self.last_cr = b == b'\r';
            if b == b'\n' || b == b'\r' {
                if self.line_len == 0 {
                    if self.has_data {
                        self.events += 1;
                        self.has_data = false;
                    }
                } else if self.line_len >= 5 && !self.not_data {
                    self.has_data = true;
                }
                self.line_len = 0;
                self.not_data = false;
            } else {
                if self.line_len < 5 && b != b"data:"[self.line_len] {
                    self.not_data = true;
                }
                self.line_len += 1;
            }
        }
    }
}

struct Parser {
    head: Vec<u8>,
    phase: Phase,
    status: u16,
    close: bool,
    body_bytes: u64,
    sse: Option<SseScan>,
}

/// A finished response; `extra` if bytes followed it (none were asked for).
struct Done {
    extra: bool,
}

impl Parser {
    fn new() -> Self {
        Parser {
            head: Vec::with_capacity(4096),
            phase: Phase::Head,
            status: 0,
            close: false,
            body_bytes: 0,
            sse: None,
        }
    }

    fn reset(&mut self, mode: Mode) {
        self.head.clear();
        self.phase = Phase::Head;
        self.status = 0;
        self.close = false;
        self.body_bytes = 0;
        self.sse = (mode == Mode::Sse).then(SseScan::default);
    }

    fn feed(&mut self, data: &[u8]) -> Result<Option<Done>, &'static str> {
        if let Phase::Head = self.phase {
            self.head.extend_from_slice(data);
            let head_len = loop {
                match self.parse_head()? {
                    None if self.head.len() > MAX_HEAD => return Err("response head too large"),
                    None => return Ok(None),
                    Some(n) if (100..200).contains(&self.status) && self.status != 101 => {
                        // Interim response (100 Continue): skip it.
                        self.head.drain(..n);
                    }
                    Some(n) => break n,
                }
            };
            let head = std::mem::take(&mut self.head);
            let r = self.body(&head[head_len..]);
            self.head = head;
            r
        } else {
            self.body(data)
        }
    }

    /// Parses the head in `self.head`; sets status, framing and `close`.
    fn parse_head(&mut self) -> Result<Option<usize>, &'static str> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&self.head) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err("malformed response head"),
        };
        self.status = resp.code.unwrap_or(0);
        let mut length = None;
        let mut chunked = false;
        self.close = resp.version == Some(0);
        for h in resp.headers.iter() {
            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                length = Some(v.parse::<u64>().map_err(|_| "bad Content-Length")?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.to_ascii_lowercase().contains("chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = v.to_ascii_lowercase();
                if v.contains("close") {
                    self.close = true;
                } else if v.contains("keep-alive") {
                    self.close = false;
                }
            }
        }
        self.phase = if self.status == 204 || self.status == 304 {
            Phase::Length(0)
        } else if chunked {
            Phase::Chunked(Chunk::Size {
                val: 0,
                digits: 0,
                ext: false,
            })
        } else if let Some(n) = length {
            Phase::Length(n)
        } else {
            self.close = true;
            Phase::UntilClose
        };
        Ok(Some(n))
    }

    fn sink(&mut self, data: &[u8]) {
        self.body_bytes += data.len() as u64;
        if let Some(s) = &mut self.sse {
            s.scan(data);
        }
    }

    fn body(&mut self, data: &[u8]) -> Result<Option<Done>, &'static str> {
        match self.phase {
            Phase::Head => Err("body before head"),
            Phase::UntilClose => {
                self.sink(data);
                Ok(None)
            }
            Phase::Length(rem) => {
                let n = rem.min(data.len() as u64) as usize;
                self.sink(&data[..n]);
                self.phase = Phase::Length(rem - n as u64);
                Ok((rem == n as u64).then_some(Done {
                    extra: n < data.len(),
                }))
            }
            Phase::Chunked(mut st) => {
                let r = self.chunked(&mut st, data);
                self.phase = Phase::Chunked(st);
                r
            }
        }
    }

    fn chunked(&mut self, st: &mut Chunk, data: &[u8]) -> Result<Option<Done>, &'static str> {
        let mut i = 0;
        while i < data.len() {
            match *st {
                Chunk::Data(rem) => {
                    let n = rem.min((data.len() - i) as u64) as usize;
                    self.sink(&data[i..i + n]);
                    i += n;
                    *st = if rem == n as u64 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(rem - n as u64)
                    };
                }
                Chunk::DataEnd => {
                    match data[i] {
                        b'\r' => {}
                        b'\n' => {
                            *st = Chunk::Size {
                                val: 0,
                                digits: 0,
                                ext: false,
                            }
                        }
                        _ => return Err("bad chunk terminator"),
                    }
                    i += 1;
                }
                Chunk::Size { val, digits, ext } => {
                    let b = data[i];
                    i += 1;
                    match b {
                        b'\r' => {}
                        b'\n' if digits == 0 => return Err("empty chunk size"),
                        b'\n' if val == 0 => *st = Chunk::Trailer { len: 0 },
                        b'\n' => *st = Chunk::Data(val),
                        _ if ext => {}
                        b';' | b' ' | b'\t' => {
                            *st = Chunk::Size {
                                val,
                                digits,
                                ext: true,
                            }
                        }
                        _ => {
                            let d = (b as char).to_digit(16).ok_or("bad chunk size")?;
                            if digits >= 15 {
                                return Err("chunk size too large");
                            }
                            *st = Chunk::Size {
                                val: val * 16 + u64::from(d),
                                digits: digits + 1,
                                ext,
                            };
                        }
                    }
                }
                Chunk::Trailer { len } => {
                    let b = data[i];
                    i += 1;
                    match b {
                        b'\r' => {}
                        b'\n' if len == 0 => {
                            return Ok(Some(Done {
                                extra: i < data.len(),
                            }))
                        }
                        b'\n' => *st = Chunk::Trailer { len: 0 },
                        _ => *st = Chunk::Trailer { len: len + 1 },
                    }
                }
            }
        }
        Ok(None)
    }
}

// ---------------------------------------------------------------------------
// Accounting.

#[derive(Default, Clone, Copy)]
struct Counters {
    sent: u64,
    warmup_sent: u64,
    warmup_skipped: u64,
    completed: u64,
    errors: u64,
    timeouts: u64,
    non_2xx: u64,
    reconnects: u64,
    events: u64,
    bytes: u64,
    lat_sum_ns: u128,
    lat_max_ns: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.sent += o.sent;
        self.warmup_sent += o.warmup_sent;
        self.warmup_skipped += o.warmup_skipped;
        self.completed += o.completed;
        self.errors += o.errors;
        self.timeouts += o.timeouts;
        self.non_2xx += o.non_2xx;
        self.reconnects += o.reconnects;
        self.events += o.events;
        self.bytes += o.bytes;
        self.lat_sum_ns += o.lat_sum_ns;
        self.lat_max_ns = self.lat_max_ns.max(o.lat_max_ns);
    }
}

/// One `--series` line: schedule offset in the window, latency, status.
#[derive(Clone, Copy)]
struct Sample {
    sched_ns: u64,
    lat_ns: u64,
    status: i32,
}

struct ThreadOut {
    c: Counters,
    hist: Histogram<u64>,
    /// How late each recorded request was dispatched: queueing behind the
    /// previous response, plus the event loop's own wake-up lag.
    lag: Histogram<u64>,
    series: Vec<Sample>,
    last_done: Option<Instant>,
}

// ---------------------------------------------------------------------------
// The event loop.

struct Inflight {
    due_ns: u64,
    recorded: bool,
    started: Instant,
    written: usize,
}

struct Conn {
    /// Global connection number: fixes this connection's schedule.
    id: usize,
    sock: Option<Socket>,
    connected: bool,
    /// Whether EPOLLOUT is in the interest set (connecting, or a short write).
    want_out: bool,
    /// Bumped per socket so stale events of a closed one are ignored.
    gen: u32,
    next_k: u64,
    inflight: Option<Inflight>,
    down_until: Option<Instant>,
    /// Whether the last request failed (closed loop: retry after a pause).
    failed: bool,
    parser: Parser,
}

enum Fail {
    Error,
    Timeout,
}

struct Worker<'a> {
    plan: &'a Plan,
    epoll: OwnedFd,
    timer: OwnedFd,
    armed: Option<Instant>,
    conns: Vec<Conn>,
    /// Idle connections by the due time of their next request.
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    inflight: usize,
    next_timeout_scan: Instant,
    rbuf: Vec<u8>,
    out: ThreadOut,
}

fn interest(want_out: bool) -> epoll::EventFlags {
    let f = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
    if want_out {
        f | epoll::EventFlags::OUT
    } else {
        f
    }
}

impl<'a> Worker<'a> {
    fn new(plan: &'a Plan, socks: Vec<(usize, Socket)>) -> Result<Self, String> {
        let epoll =
            epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll: {e}"))?;
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(|e| format!("timerfd: {e}"))?;
        epoll::add(
            &epoll,
            &timer,
            epoll::EventData::new_u64(TIMER_TOKEN),
            epoll::EventFlags::IN,
        )
        .map_err(|e| format!("epoll add: {e}"))?;
        let mut conns = Vec::with_capacity(socks.len());
        for (idx, (id, sock)) in socks.into_iter().enumerate() {
            epoll::add(
                &epoll,
                &sock,
                epoll::EventData::new_u64(idx as u64),
                interest(false),
            )
            .map_err(|e| format!("epoll add: {e}"))?;
            conns.push(Conn {
                id,
                sock: Some(sock),
                connected: true,
                want_out: false,
                gen: 0,
                next_k: 0,
                inflight: None,
                down_until: None,
                failed: false,
                parser: Parser::new(),
            });
        }
        let hist =
            Histogram::new_with_bounds(1, HIST_MAX_NS, 3).map_err(|e| format!("histogram: {e}"))?;
        Ok(Worker {
            plan,
            epoll,
            timer,
            armed: None,
            conns,
            heap: BinaryHeap::new(),
            inflight: 0,
            next_timeout_scan: plan.start + plan.timeout,
            rbuf: vec![0; READ_BUF],
            out: ThreadOut {
                c: Counters::default(),
                lag: hist.clone(),
                hist,
                series: Vec::new(),
                last_done: None,
            },
        })
    }

    fn run(mut self) -> Result<ThreadOut, String> {
        // Best effort: the default 50 µs timer slack would delay every send.
        let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
        let plan = self.plan;
        let end = plan.at(plan.end_ns);
        let hard_stop = end + plan.timeout;
        for idx in 0..self.conns.len() {
            let due = if plan.closed {
                0
            } else {
                plan.due_ns(self.conns[idx].id, 0)
            };
            if due < plan.end_ns {
                self.heap.push(Reverse((due, idx)));
            }
        }
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        loop {
            let now = Instant::now();
            if now < end {
                while let Some(&Reverse((due, idx))) = self.heap.peek() {
                    if plan.at(due) > now {
                        break;
                    }
                    self.heap.pop();
                    if plan.closed {
                        self.send_closed(idx, now);
                    } else {
                        self.after_idle(idx, now);
                    }
                }
            }
            if now >= self.next_timeout_scan || now >= hard_stop {
                self.scan_timeouts(now, now >= hard_stop);
            }
            if now >= end && self.inflight == 0 {
                break;
            }
            if now >= hard_stop {
                // scan_timeouts(.., true) has failed whatever was left.
                break;
            }
            let mut wake = self.next_timeout_scan.min(hard_stop);
            if now < end {
                wake = wake.min(end);
                if let Some(&Reverse((due, _))) = self.heap.peek() {
                    wake = wake.min(plan.at(due));
                }
            }
            self.arm(wake)?;
            events.clear();
            match epoll::wait(&self.epoll, spare_capacity(&mut events), None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(format!("epoll_wait: {e}")),
            }
            for ev in events.iter() {
                let (flags, data) = (ev.flags, ev.data.u64());
                if data == TIMER_TOKEN {
                    // No read(): the next loop re-arms the timer, and
                    // timerfd_settime clears the expiry (and readiness).
                    self.armed = None;
                    continue;
                }
                let idx = (data & 0xffff_ffff) as usize;
                if idx < self.conns.len() && (data >> 32) as u32 == self.conns[idx].gen {
                    self.on_event(idx, flags);
                }
            }
        }
        Ok(self.out)
    }

    /// Arms the timerfd to fire at `wake` (unless it already is).
    fn arm(&mut self, wake: Instant) -> Result<(), String> {
        if self.armed == Some(wake) {
            return Ok(());
        }
        // A zero it_value disarms, so fire at least 1 ns from now.
        let d = wake
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos() as _,
            },
        };
        timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec)
            .map_err(|e| format!("timerfd_settime: {e}"))?;
        self.armed = Some(wake);
        Ok(())
    }

    /// Starts connection `idx`'s next request (at `now`, possibly late).
    fn dispatch(&mut self, idx: usize, now: Instant) {
        let plan = self.plan;
        let c = &mut self.conns[idx];
        // Closed loop: a request is "due" when it is sent.
        let due_ns = if plan.closed {
            plan.offset(now)
        } else {
            plan.due_ns(c.id, c.next_k)
        };
        c.next_k += 1;
        let recorded = due_ns >= plan.warmup_ns;
        if recorded {
            self.out.c.sent += 1;
            let lag = now.saturating_duration_since(plan.at(due_ns)).as_nanos() as u64;
            self.out.lag.saturating_record(lag.max(1));
        } else {
            self.out.c.warmup_sent += 1;
        }
        c.inflight = Some(Inflight {
            due_ns,
            recorded,
            started: now,
            written: 0,
        });
        c.parser.reset(plan.mode);
        c.failed = false;
        self.inflight += 1;
        let backing_off = matches!(c.down_until, Some(t) if now < t);
        if c.sock.is_none() && (backing_off || self.connect(idx, now).is_err()) {
            self.fail(idx, Fail::Error, now);
            return;
        }
        if self.conns[idx].connected {
            self.write(idx, now);
        }
    }

    /// Called whenever connection `idx` has nothing in flight: sends the
    /// requests already due (queued behind the last one), or waits for the
    /// next in the heap.
    fn after_idle(&mut self, idx: usize, now: Instant) {
        let plan = self.plan;
        if now >= plan.at(plan.end_ns) {
            return;
        }
        if plan.closed {
            // The next request leaves from the loop (send_closed), not from
            // here: a failing connection then cannot recurse through
            // dispatch → fail → after_idle.
            let c = &self.conns[idx];
            if c.inflight.is_none() {
                let mut at = if c.failed { now + CONNECT_BACKOFF } else { now };
                if let Some(t) = c.down_until {
                    at = at.max(t);
                }
                self.heap.push(Reverse((plan.offset(at), idx)));
            }
            return;
        }
        while self.conns[idx].inflight.is_none() {
            let c = &mut self.conns[idx];
            let mut due = plan.due_ns(c.id, c.next_k);
            if due < plan.warmup_ns && now >= plan.at(plan.warmup_ns) {
                // The window has opened: warm-up requests still queued here
                // are dropped, so that measured ones do not wait behind them.
                let first = plan.first_k_in_window(c.id);
                self.out.c.warmup_skipped += first - c.next_k;
                c.next_k = first;
                due = plan.due_ns(c.id, first);
            }
            if due >= plan.end_ns {
                return;
            }
            if plan.at(due) > now {
                self.heap.push(Reverse((due, idx)));
                return;
            }
            self.dispatch(idx, now);
        }
    }

    /// Closed loop: sends `idx`'s next request now, unless one is in flight
    /// or its reconnect is backing off (then it is retried later).
    fn send_closed(&mut self, idx: usize, now: Instant) {
        let plan = self.plan;
        if self.conns[idx].inflight.is_some() {
            return;
        }
        if let Some(t) = self.conns[idx].down_until.filter(|&t| now < t) {
            self.heap.push(Reverse((plan.offset(t), idx)));
            return;
        }
        self.dispatch(idx, now);
        if self.conns[idx].inflight.is_none() {
            // Failed at once: pace the retries.
            self.heap
                .push(Reverse((plan.offset(now + CONNECT_BACKOFF), idx)));
        }
    }

    /// Opens a fresh non-blocking connection for `idx`.
    fn connect(&mut self, idx: usize, now: Instant) -> io::Result<()> {
        let plan = self.plan;
        if now >= plan.at(plan.warmup_ns) {
            self.out.c.reconnects += 1;
        }
        let c = &mut self.conns[idx];
        c.sock = None;
        c.connected = false;
        c.gen = c.gen.wrapping_add(1);
        let r = (|| {
            let s = Socket::new(
                Domain::for_address(plan.addr),
                Type::STREAM.nonblocking().cloexec(),
                Some(Protocol::TCP),
            )?;
            s.set_tcp_nodelay(true)?;
            let connected = match s.connect(&SockAddr::from(plan.addr)) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => false,
                Err(e) => return Err(e),
            };
            epoll::add(
                &self.epoll,
                &s,
                epoll::EventData::new_u64((u64::from(c.gen) << 32) | idx as u64),
                interest(!connected),
            )?;
            Ok((s, connected))
        })();
        match r {
            Ok((s, connected)) => {
                c.sock = Some(s);
                c.connected = connected;
                c.want_out = !connected;
                c.down_until = None;
                Ok(())
            }
            Err(e) => {
                c.down_until = Some(now + CONNECT_BACKOFF);
                Err(e)
            }
        }
    }

    /// Drops `idx`'s socket and, inside the window, reconnects at once.
    fn reconnect(&mut self, idx: usize, now: Instant) {
        let c = &mut self.conns[idx];
        c.sock = None;
        c.connected = false;
        c.gen = c.gen.wrapping_add(1);
        let plan = self.plan;
        let backing_off = matches!(c.down_until, Some(t) if now < t);
        if now < plan.at(plan.end_ns) && !backing_off {
            // On failure down_until is set; the next due request retries.
            let _ = self.connect(idx, now);
        }
    }

    /// Ends `idx`'s in-flight request as failed, resets the connection, and
    /// moves on to the connection's next request.
    fn fail(&mut self, idx: usize, why: Fail, now: Instant) {
        self.conns[idx].failed = true;
        if let Some(f) = self.conns[idx].inflight.take() {
            self.inflight -= 1;
            if f.recorded {
                let status = match why {
                    Fail::Error => {
                        self.out.c.errors += 1;
                        0
                    }
                    Fail::Timeout => {
                        self.out.c.timeouts += 1;
                        -1
                    }
                };
                if self.plan.series {
                    self.out.series.push(Sample {
                        sched_ns: f.due_ns - self.plan.warmup_ns,
                        lat_ns: now
                            .saturating_duration_since(self.plan.at(f.due_ns))
                            .as_nanos() as u64,
                        status,
                    });
                }
            }
        }
        if self.conns[idx].sock.is_some() {
            self.reconnect(idx, now);
        }
    }

    /// Records `idx`'s finished response and moves on.
    fn complete(&mut self, idx: usize, extra: bool) {
        let now = Instant::now();
        let plan = self.plan;
        let Some(f) = self.conns[idx].inflight.take() else {
            return;
        };
        self.inflight -= 1;
        let p = &self.conns[idx].parser;
        if f.recorded {
            let lat_ns = now.saturating_duration_since(plan.at(f.due_ns)).as_nanos() as u64;
            let c = &mut self.out.c;
            c.completed += 1;
            if !(200..300).contains(&p.status) {
                c.non_2xx += 1;
            }
            c.bytes += p.body_bytes;
            c.events += p.sse.as_ref().map_or(0, |s| s.events);
            c.lat_sum_ns += u128::from(lat_ns);
            c.lat_max_ns = c.lat_max_ns.max(lat_ns);
            self.out.hist.saturating_record(lat_ns.max(1));
            self.out.last_done = Some(now);
            if plan.series {
                self.out.series.push(Sample {
                    sched_ns: f.due_ns - plan.warmup_ns,
                    lat_ns,
                    status: i32::from(p.status),
                });
            }
        }
        // A response that came before the request was all written (an early
        // error reply) leaves the request's tail unsent: start afresh.
        if p.close || extra || f.written < plan.request.len() {
            self.reconnect(idx, now);
        }
        self.after_idle(idx, now);
    }

    fn scan_timeouts(&mut self, now: Instant, all: bool) {
        let timeout = self.plan.timeout;
        let mut next = now + timeout;
        for idx in 0..self.conns.len() {
            let Some(started) = self.conns[idx].inflight.as_ref().map(|f| f.started) else {
                continue;
            };
            if all || now >= started + timeout {
                self.fail(idx, Fail::Timeout, now);
                self.after_idle(idx, now);
            } else {
                next = next.min(started + timeout);
            }
        }
        // Requests sent from now on expire after `next` anyway.
        self.next_timeout_scan = next;
    }

    fn on_event(&mut self, idx: usize, flags: epoll::EventFlags) {
        let now = Instant::now();
        let gen = self.conns[idx].gen;
        let bad = epoll::EventFlags::ERR | epoll::EventFlags::HUP;
        if !self.conns[idx].connected {
            let Some(sock) = &self.conns[idx].sock else {
                return;
            };
            let ok = match sock.take_error() {
                Ok(None) => flags.contains(epoll::EventFlags::OUT) && !flags.intersects(bad),
                _ => false,
            };
            if !ok {
                if flags.intersects(bad) || flags.contains(epoll::EventFlags::OUT) {
                    self.connect_failed(idx, now);
                }
                return;
            }
            self.conns[idx].connected = true;
            if self.conns[idx]
                .inflight
                .as_ref()
                .is_some_and(|f| f.written < self.plan.request.len())
            {
                self.write(idx, now);
            } else {
                self.set_out(idx, false);
            }
            return;
        }
        if flags.contains(epoll::EventFlags::OUT)
            && self.conns[idx]
                .inflight
                .as_ref()
                .is_some_and(|f| f.written < self.plan.request.len())
        {
            self.write(idx, now);
        }
        // A failed write may have replaced the socket: these flags were not
        // about the new one.
        if self.conns[idx].gen == gen
            && flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::RDHUP | bad)
        {
            self.read(idx, now);
        }
    }

    fn connect_failed(&mut self, idx: usize, now: Instant) {
        let c = &mut self.conns[idx];
        c.sock = None;
        c.connected = false;
        c.gen = c.gen.wrapping_add(1);
        c.down_until = Some(now + CONNECT_BACKOFF);
        if c.inflight.is_some() {
            self.fail(idx, Fail::Error, now);
            self.after_idle(idx, now);
        }
    }

    fn set_out(&mut self, idx: usize, want: bool) {
        let c = &mut self.conns[idx];
        if c.want_out == want {
            return;
        }
        let Some(sock) = &c.sock else {
            return;
        };
        let data = epoll::EventData::new_u64((u64::from(c.gen) << 32) | idx as u64);
        if epoll::modify(&self.epoll, sock, data, interest(want)).is_ok() {
            c.want_out = want;
        }
    }

    fn write(&mut self, idx: usize, now: Instant) {
        let plan = self.plan;
        let req = &plan.request;
        loop {
            let c = &mut self.conns[idx];
            let (Some(sock), Some(f)) = (&c.sock, &mut c.inflight) else {
                return;
            };
            if f.written >= req.len() {
                self.set_out(idx, false);
                return;
            }
            match (&*sock).write(&req[f.written..]) {
                Ok(n) => f.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.set_out(idx, true);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.fail(idx, Fail::Error, now);
                    self.after_idle(idx, now);
                    return;
                }
            }
        }
    }

    fn read(&mut self, idx: usize, now: Instant) {
        loop {
            let c = &mut self.conns[idx];
            let Some(sock) = &c.sock else {
                return;
            };
            let r = (&*sock).read(&mut self.rbuf);
            match r {
                Ok(0) => {
                    // Peer closed: ends a close-delimited body, fails any
                    // other request in flight, or just retires an idle
                    // keep-alive connection.
                    let until_close = matches!(c.parser.phase, Phase::UntilClose);
                    if c.inflight.is_some() && until_close {
                        c.sock = None;
                        c.connected = false;
                        self.complete(idx, true);
                    } else if c.inflight.is_some() {
                        self.fail(idx, Fail::Error, now);
                        self.after_idle(idx, now);
                    } else {
                        self.reconnect(idx, now);
                    }
                    return;
                }
                Ok(n) => {
                    if c.inflight.is_none() {
                        // Bytes nobody asked for: the stream is out of step.
                        self.reconnect(idx, now);
                        return;
                    }
                    match c.parser.feed(&self.rbuf[..n]) {
                        Ok(None) => {}
                        Ok(Some(Done { extra })) => {
                            self.complete(idx, extra);
                            return;
                        }
                        Err(_) => {
                            self.fail(idx, Fail::Error, now);
                            self.after_idle(idx, now);
                            return;
                        }
                    }
                    if n < self.rbuf.len() {
                        // Level-triggered: any rest is reported again.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    if c.inflight.is_some() {
                        self.fail(idx, Fail::Error, now);
                        self.after_idle(idx, now);
                    } else {
                        self.reconnect(idx, now);
                    }
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------

/// Best effort: lets 1024 connections fit under the default fd limit.
fn raise_nofile(need: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current.is_some_and(|c| c < need) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(lim.maximum.map_or(need, |m| m.min(need))),
                maximum: lim.maximum,
            },
        );
    }
}

fn connect_blocking(addr: SocketAddr, timeout: Duration) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.connect_timeout(&addr.into(), timeout)?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    raise_nofile(a.conns as u64 + 64);
    let mut series_file = match &a.series {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("--series {p}: {e}"))?,
        )),
        None => None,
    };
    // Connect everything up front, so a server that is not there fails fast.
    let mut per_thread: Vec<Vec<(usize, Socket)>> = (0..a.threads).map(|_| Vec::new()).collect();
    for id in 0..a.conns {
        let s = connect_blocking(a.addr, a.timeout)
            .map_err(|e| format!("connect {} (connection {id}): {e}", a.addr))?;
        per_thread[id % a.threads].push((id, s));
    }
    let warmup_ns = (a.warmup * 1e9) as u64;
    let mut plan = Plan {
        addr: a.addr,
        request: build_request(&a),
        conns: a.conns as u64,
        period_ns: 1e9 / a.rate,
        warmup_ns,
        end_ns: warmup_ns + (a.secs * 1e9) as u64,
        first_window_i: 0,
        timeout: a.timeout,
        mode: a.mode,
        series: a.series.is_some(),
        closed: a.closed,
        // A little slack so every loop is waiting when the first is due.
        start: Instant::now() + Duration::from_millis(5),
    };
    plan.first_window_i = plan.count_below(warmup_ns);
    let workers = per_thread
        .into_iter()
        .map(|socks| Worker::new(&plan, socks))
        .collect::<Result<Vec<_>, _>>()?;
    let outs = std::thread::scope(|sc| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|w| sc.spawn(move || w.run()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "event loop panicked".to_string())?)
            .collect::<Result<Vec<_>, String>>()
    })?;

    let mut c = Counters::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, HIST_MAX_NS, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let mut lag = hist.clone();
    let mut series = Vec::new();
    let mut last_done = None;
    for o in outs {
        c.add(&o.c);
        hist.add(&o.hist).map_err(|e| format!("histogram: {e}"))?;
        lag.add(&o.lag).map_err(|e| format!("histogram: {e}"))?;
        series.extend(o.series);
        last_done = last_done.max(o.last_done);
    }
    let window_start = plan.at(plan.warmup_ns);
    let duration_s = last_done
        .map_or(0.0, |t: Instant| {
            t.saturating_duration_since(window_start).as_secs_f64()
        })
        .max(a.secs);
    let scheduled = if a.closed {
        c.sent
    } else {
        plan.count_below(plan.end_ns) - plan.first_window_i
    };
    // Histogram buckets round up; never report a percentile above the exact max.
    let pct = |q: f64| (c.completed > 0).then(|| us(hist.value_at_quantile(q).min(c.lat_max_ns)));
    let out = serde_json::json!({
        "sent": c.sent,
        "completed": c.completed,
        "errors": c.errors,
        "timeouts": c.timeouts,
        "non_2xx": c.non_2xx,
        "reconnects": c.reconnects,
        "scheduled": scheduled,
        "unsent": scheduled.saturating_sub(c.sent),
        "warmup_sent": c.warmup_sent,
        "warmup_skipped": c.warmup_skipped,
        "duration_s": (duration_s * 1e6).round() / 1e6,
        "achieved_rps": ((c.completed as f64 / duration_s) * 10.0).round() / 10.0,
        "target_rps": (!a.closed).then_some(a.rate),
        "conns": a.conns,
        "threads": a.threads,
        "mode": if a.mode == Mode::Sse { "sse" } else { "full" },
        "p50_us": pct(0.5),
        "p90_us": pct(0.9),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": (c.completed > 0).then(|| us(c.lat_max_ns)),
        "mean_us": (c.completed > 0).then(|| us((c.lat_sum_ns / u128::from(c.completed)) as u64)),
        "send_lag_p50_us": (c.sent > 0).then(|| us(lag.value_at_quantile(0.5))),
        "send_lag_p99_us": (c.sent > 0).then(|| us(lag.value_at_quantile(0.99))),
        "events": c.events,
        "bytes": c.bytes,
    });
    println!("{out}");

    if let Some(w) = &mut series_file {
        series.sort_unstable_by_key(|s| s.sched_ns);
        for s in &series {
            writeln!(
                w,
                "{} {:.1} {}",
                s.sched_ns / 1000,
                s.lat_ns as f64 / 1000.0,
                s.status
            )
            .map_err(|e| format!("--series: {e}"))?;
        }
        w.flush().map_err(|e| format!("--series: {e}"))?;
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
