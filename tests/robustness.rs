//! Robustness tests against the real `ringmux` binary (built-in demo child):
//! hostile and malformed input, pipelining, slowloris, and clients that
//! disconnect in the middle of an SSE stream.
//!
//! std only (plus `serde_json`, already a dependency of the crate). Every
//! socket has read/write timeouts and every loop is bounded in count and time,
//! so a misbehaving daemon makes a test fail, never hang. The daemon is killed
//! in a `Drop` guard, so a failing test never leaks it.

use std::fs;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
const IO_TIMEOUT: Duration = Duration::from_secs(4);

// ---------------------------------------------------------------------------
// The daemon under test
// ---------------------------------------------------------------------------

struct Daemon {
    child: Option<Child>,
    pid: u32,
    port: u16,
    instance_dir: PathBuf,
    base_dir: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
}

static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);

fn fresh_base_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!(
        "ringmux-robustness-{}-{nanos}-{n}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).expect("create base dir");
    dir
}

impl Daemon {
    fn start() -> Daemon {
        let base_dir = fresh_base_dir();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmux"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--base-dir",
            ])
            .arg(&base_dir)
            .arg("--demo")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringmux");
        let pid = child.id();

        // Drain stderr into memory (printed if the test fails).
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let sink = Arc::clone(&stderr);
            let mut err = child.stderr.take().expect("stderr pipe");
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.extend_from_slice(&buf[..n]);
                        // Keep only the tail.
                        if s.len() > 1 << 20 {
                            let cut = s.len() - (1 << 19);
                            s.drain(..cut);
                        }
                    }
                }
            });
        }

        // Read stdout lines on a thread (which keeps draining afterwards, so
        // the daemon and its children never block on a full pipe).
        let (tx, rx) = mpsc::channel::<String>();
        {
            let out = child.stdout.take().expect("stdout pipe");
            thread::spawn(move || {
                let mut reader = BufReader::new(out);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = tx.send(line.trim_end().to_owned());
                        }
                    }
                }
            });
        }

        // From here on the guard owns the process.
        let mut daemon = Daemon {
            child: Some(child),
            pid,
            port: 0,
            instance_dir: PathBuf::new(),
            base_dir,
            stderr,
        };

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "ringmux did not print its listening line within {STARTUP_TIMEOUT:?}; stdout so far: {seen:?}"
            );
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("ringmux closed stdout before listening; stdout so far: {seen:?}")
                }
            };
            if let Some(path) = line.strip_prefix("ringmux: instance dir ") {
                daemon.instance_dir = PathBuf::from(path);
            }
            if let Some(addr) = line.strip_prefix("ringmux: listening on http://127.0.0.1:") {
                daemon.port = addr.parse().expect("port in listening line");
                break;
            }
            seen.push(line);
        }
        assert!(
            !daemon.instance_dir.as_os_str().is_empty(),
            "no `ringmux: instance dir` line before the listening line; stdout: {seen:?}"
        );
        assert!(
            daemon.instance_dir.is_dir(),
            "instance dir {:?} missing",
            daemon.instance_dir
        );
        // Keep draining stdout in the background.
        thread::spawn(move || while rx.recv().is_ok() {});
        daemon
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to ringmux");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        let _ = s.set_nodelay(true);
        s
    }

    fn assert_alive(&mut self, context: &str) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("ringmux exited ({status}) {context}");
            }
        }
    }

    /// A well-formed `GET /healthz?vf_state_secret=<key>` on a fresh
    /// connection must return 200 `ok`.
    fn assert_healthy(&mut self, key: &str, context: &str) {
        self.assert_alive(context);
        let started = Instant::now();
        let mut conn = Conn::new(self.connect());
        conn.send(
            format!("GET /healthz?vf_state_secret={key} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        let resp = conn
            .read_response()
            .unwrap_or_else(|e| panic!("healthz ({context}) failed: {e}"));
        assert_eq!(resp.status, 200, "healthz ({context}): {resp:?}");
        assert_eq!(resp.body, b"ok", "healthz ({context}): {resp:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "healthz ({context}) took {:?}",
            started.elapsed()
        );
    }

    fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("read /proc/<pid>/fd")
            .count()
    }

    /// SIGTERM, exit 0 within the bound, instance dir gone.
    fn stop(mut self) {
        self.assert_alive("before SIGTERM");
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.pid);
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let child = self.child.as_mut().expect("child present");
        let exit = loop {
            match child.try_wait().expect("try_wait") {
                Some(st) => break st,
                None if Instant::now() >= deadline => {
                    panic!("ringmux did not exit within {SHUTDOWN_TIMEOUT:?} after SIGTERM")
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        self.child = None;
        assert_eq!(
            exit.code(),
            Some(0),
            "ringmux exit status after SIGTERM: {exit}"
        );
        assert!(
            !self.instance_dir.exists(),
            "instance dir {:?} still exists after shutdown",
            self.instance_dir
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            if let Ok(s) = self.stderr.lock() {
                let tail = &s[s.len().saturating_sub(8192)..];
                eprintln!(
                    "---- ringmux stderr (tail) ----\n{}\n-------------------------------",
                    String::from_utf8_lossy(tail)
                );
            }
        }
        let _ = fs::remove_dir_all(&self.base_dir);
    }
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 client
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn need(&mut self, n: usize, deadline: Instant) -> io::Result<()> {
        while self.buf.len() < n {
            if Instant::now() >= deadline {
                return Err(io::Error::new(ErrorKind::TimedOut, "response deadline"));
            }
            self.fill()?;
        }
        Ok(())
    }

    fn line(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(ErrorKind::TimedOut, "response deadline"));
            }
            self.fill()?;
        }
    }

    /// Reads one response head.
    fn read_head(&mut self, deadline: Instant) -> io::Result<(u16, Vec<(String, String)>)> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    "response head deadline",
                ));
            }
            if self.buf.len() > 1 << 20 {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        if !status_line.starts_with("HTTP/1.1 ") || status_line.len() < 12 {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            ));
        }
        let status = status_line[9..12]
            .parse()
            .map_err(|_| io::Error::new(ErrorKind::InvalidData, "bad status code"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok((status, headers))
    }

    /// Reads one complete response (Content-Length, chunked, or no body for
    /// 1xx/204/304; close-delimited otherwise).
    fn read_response(&mut self) -> io::Result<Response> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (status, headers) = self.read_head(deadline)?;
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if resp.status == 204 || resp.status == 304 || resp.status < 200 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line = self.line(deadline)?;
                let line = String::from_utf8_lossy(&line).into_owned();
                let size_text = line.split(';').next().unwrap_or("").trim().to_owned();
                let size = usize::from_str_radix(&size_text, 16).map_err(|_| {
                    io::Error::new(ErrorKind::InvalidData, format!("bad chunk size {line:?}"))
                })?;
                if size == 0 {
                    // Trailers until the empty line.
                    while !self.line(deadline)?.is_empty() {}
                    return Ok(resp);
                }
                self.need(size + 2, deadline)?;
                resp.body.extend_from_slice(&self.buf[..size]);
                if &self.buf[size..size + 2] != b"\r\n" {
                    return Err(io::Error::new(ErrorKind::InvalidData, "chunk without CRLF"));
                }
                self.buf.drain(..size + 2);
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::new(ErrorKind::InvalidData, "bad content-length"))?;
            self.need(len, deadline)?;
            resp.body = self.buf.drain(..len).collect();
            Ok(resp)
        } else {
            loop {
                match self.fill() {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
                if Instant::now() >= deadline {
                    return Err(io::Error::new(ErrorKind::TimedOut, "close-delimited body"));
                }
            }
            resp.body = std::mem::take(&mut self.buf);
            Ok(resp)
        }
    }
}

/// How reading everything a connection returns ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Eof,
    Timeout,
    Error(String),
}

/// Reads until EOF, an error, or the deadline (bounded size too).
fn read_all(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, End) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || out.len() > 4 << 20 {
            return (out, End::Timeout);
        }
        let _ = stream.set_read_timeout(Some(left.min(IO_TIMEOUT)));
        match stream.read(&mut chunk) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, End::Timeout)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (out, End::Error(e.to_string())),
        }
    }
}

/// How many status lines a raw reply contains.
fn responses_in(bytes: &[u8]) -> usize {
    bytes.windows(9).filter(|w| *w == b"HTTP/1.1 ").count()
}

/// The status code at the front of `bytes`, if it starts with a status line.
fn status_of(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < 12 || !bytes.starts_with(b"HTTP/1.1 ") {
        return None;
    }
    std::str::from_utf8(&bytes[9..12]).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------
// Deterministic PRNG
// ---------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------
// 1. garbage
// ---------------------------------------------------------------------------

/// What a garbage case may get back.
#[derive(Debug, Clone)]
enum Expect {
    /// Exactly one of these statuses, and the daemon closes the connection.
    Exactly(&'static [u16]),
    /// Nothing, or one of these statuses.
    NothingOr(&'static [u16]),
    /// Nothing, or any 4xx/5xx.
    NothingOrError,
    /// Nothing, or any 2xx/4xx/5xx (the corruption may have left a valid request).
    Anything,
}

struct Case {
    class: &'static str,
    bytes: Vec<u8>,
    /// Half-close after writing (for inputs that are incomplete on purpose,
    /// so the daemon sees EOF instead of waiting for more).
    half_close: bool,
    expect: Expect,
}

const KEY_QS: &str = "vf_state_secret=g";

fn valid_get() -> Vec<u8> {
    format!("GET /healthz?{KEY_QS} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

fn post_head(extra: &str) -> String {
    format!(
        "POST /mcp?{KEY_QS} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}\r\n"
    )
}

fn hdr_req(extra: &str) -> Vec<u8> {
    format!("GET /healthz?{KEY_QS} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").into_bytes()
}

const RPC_BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;

/// Appended after some malformed messages: after a framing error the
/// connection must close, so this must never get its own response.
const SMUGGLED: &[u8] = b"GET /healthz?vf_state_secret=g HTTP/1.1\r\nHost: localhost\r\n\r\n";

const NUM_CLASSES: usize = 18;

fn gen_case(rng: &mut XorShift, i: usize) -> Case {
    const S400: &[u16] = &[400];
    const S431: &[u16] = &[431];
    const S501: &[u16] = &[501];
    const S505: &[u16] = &[505];
    match i % NUM_CLASSES {
        0 => {
            // Pure random bytes (never starting with a token char followed by
            // a valid request, in practice).
            let n = rng.range(1, 2048);
            Case {
                class: "random bytes",
                bytes: rng.bytes(n),
                half_close: true,
                expect: Expect::NothingOrError,
            }
        }
        1 => {
            // A valid request with a few random bytes overwritten (outside the
            // target, so no new keys get children).
            let mut b = valid_get();
            let target_end = find(&b, b" HTTP/1.1").unwrap();
            let flips = rng.range(1, 4);
            for _ in 0..flips {
                let mut pos = rng.below(b.len());
                if pos > 3 && pos < target_end {
                    pos = target_end + rng.below(b.len() - target_end);
                }
                // Half the flips are printable (often still a valid request).
                b[pos] = if rng.below(2) == 0 {
                    b'a' + rng.below(26) as u8
                } else {
                    rng.next() as u8
                };
            }
            Case {
                class: "corrupted valid request",
                bytes: b,
                half_close: true,
                expect: Expect::Anything,
            }
        }
        2 => {
            // Bad character in the method.
            let bad: &[u8] = b"()<>@,;:\\\"/[]?={}\x01\x7f\x80\xff";
            let c = *rng.pick(bad);
            let method = *rng.pick(&["GET", "POST", "DELETE"]);
            let at = rng.range(0, method.len());
            let mut m = method.as_bytes().to_vec();
            m.insert(at, c);
            let mut b = m;
            b.extend_from_slice(
                format!(" /healthz?{KEY_QS} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
            );
            Case {
                class: "bad method char",
                bytes: b,
                half_close: false,
                expect: Expect::Exactly(S400),
            }
        }
        3 => {
            // Space(s) inside the request-target.
            let target = format!("/healthz?{KEY_QS}");
            let at = rng.range(1, target.len() - 1);
            let spaces = " ".repeat(rng.range(1, 2));
            let b = format!(
                "GET {}{}{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
                &target[..at],
                spaces,
                &target[at..]
            );
            Case {
                class: "space in target",
                bytes: b.into_bytes(),
                half_close: false,
                expect: Expect::Exactly(S400),
            }
        }
        4 => {
            // Well-formed but unsupported version → 505; garbled version → 400.
            let (v, expect): (&str, &'static [u16]) = *rng.pick(&[
                ("HTTP/9.9", S505),
                ("HTTP/2.0", S505),
                ("HTTP/1.2", S505),
                ("HTTP/0.9", S505),
                ("HTTP/3.1", S505),
                ("HTTX/1.1", S400),
                ("HTTP/1.1.1", S400),
                ("HTTP/11", S400),
                ("http/1.1", S400),
            ]);
            Case {
                class: "bad version",
                bytes: format!("GET /healthz?{KEY_QS} {v}\r\nHost: localhost\r\n\r\n").into_bytes(),
                half_close: false,
                expect: Expect::Exactly(expect),
            }
        }
        5 => {
            // NUL / bare CR / bare LF / other controls in a header value.
            let ctl: &[u8] = &[0, b'\r', b'\n', 0x01, 0x1b, 0x7f];
            let c = *rng.pick(ctl);
            let mut b = format!("GET /healthz?{KEY_QS} HTTP/1.1\r\nHost: localhost\r\nX-Evil: abc")
                .into_bytes();
            b.push(c);
            // After a bare LF, a line without a colon follows; after a bare
            // CR, more value bytes.
            b.extend_from_slice(b"def\r\n\r\n");
            Case {
                class: "control byte in header value",
                bytes: b,
                half_close: false,
                expect: Expect::Exactly(S400),
            }
        }
        6 => {
            // Header line without a colon.
            let junk = *rng.pick(&["NoColonHere", "X-Foo bar", "just words", "X-A=1"]);
            Case {
                class: "header without colon",
                bytes: hdr_req(&format!("{junk}\r\n")),
                half_close: false,
                expect: Expect::Exactly(S400),
            }
        }
        7 => {
            // obs-fold continuation line.
            let ws = *rng.pick(&[" ", "\t", "   "]);
            Case {
                class: "obs-fold",
                bytes: hdr_req(&format!("X-Folded: first\r\n{ws}second\r\n")),
                half_close: false,
                expect: Expect::Exactly(S400),
            }
        }
        8 => {
            // Too many header fields.
            let n = rng.range(200, 400);
            let extra: String = (0..n).map(|k| format!("X-H{k}: v\r\n")).collect();
            Case {
                class: "too many headers",
                bytes: hdr_req(&extra),
                half_close: false,
                expect: Expect::Exactly(S431),
            }
        }
        9 => {
            // One 100 KiB header line.
            let n = 100 * 1024 + rng.below(1024);
            Case {
                class: "100 KiB header line",
                bytes: hdr_req(&format!("X-Big: {}\r\n", "a".repeat(n))),
                half_close: false,
                expect: Expect::Exactly(S431),
            }
        }
        10 => {
            // Invalid Content-Length values, including conflicting duplicates.
            let cl = *rng.pick(&[
                "Content-Length: -1\r\n",
                "Content-Length: -5\r\n",
                "Content-Length: abc\r\n",
                "Content-Length: 1.5\r\n",
                "Content-Length: 0x10\r\n",
                "Content-Length: +5\r\n",
                "Content-Length: 5 5\r\n",
                "Content-Length: \r\n",
                "Content-Length: 99999999999999999999999999\r\n",
                "Content-Length: 18446744073709551616\r\n",
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                "Content-Length: 5, 6\r\n",
                "Content-Length: 0\r\nContent-Length: 1\r\n",
            ]);
            let mut b = post_head(cl).into_bytes();
            b.extend_from_slice(b"hello");
            // A request smuggled behind it must never be answered.
            b.extend_from_slice(SMUGGLED);
            Case {
                class: "bad Content-Length",
                bytes: b,
                half_close: false,
                expect: Expect::Exactly(S400),
            }
        }
        11 => {
            // A huge (valid u64) Content-Length with a short body, then EOF:
            // a truncated body.
            let cl = *rng.pick(&["18446744073709551615", "9999999999", "1000000"]);
            let mut b = post_head(&format!("Content-Length: {cl}\r\n")).into_bytes();
            b.extend_from_slice(&RPC_BODY.as_bytes()[..rng.range(0, RPC_BODY.len())]);
            Case {
                class: "huge Content-Length, truncated body",
                bytes: b,
                half_close: true,
                // The child may refuse the announced size (the demo answers
                // 413 above 16 MiB) before the half-close reaches ringmux.
                expect: Expect::NothingOr(&[400, 413]),
            }
        }
        12 => {
            // Unsupported transfer codings.
            let (te, expect): (&str, &'static [u16]) = *rng.pick(&[
                ("gzip", S501),
                ("deflate", S501),
                ("gzip, chunked", S501),
                ("chunked, gzip", &[400, 501]),
                ("chunked, chunked", &[400, 501]),
                ("identity", &[400, 501]),
            ]);
            let mut b = post_head(&format!("Transfer-Encoding: {te}\r\n")).into_bytes();
            b.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
            Case {
                class: "unsupported Transfer-Encoding",
                bytes: b,
                half_close: false,
                expect: Expect::Exactly(expect),
            }
        }
        13 => {
            // Chunked body with a bad hex size.
            let size = *rng.pick(&[
                "zz",
                "g",
                "-5",
                "0x5",
                "ffffffffffffffffffffffffffffffff",
                "5 5",
                "",
            ]);
            let mut b = post_head("Transfer-Encoding: chunked\r\n").into_bytes();
            b.extend_from_slice(format!("{size}\r\nhello\r\n0\r\n\r\n").as_bytes());
            b.extend_from_slice(SMUGGLED);
            Case {
                class: "chunked: bad size",
                bytes: b,
                half_close: false,
                expect: Expect::Exactly(S400),
            }
        }
        14 => {
            // Chunked body with chunk data not followed by CRLF.
            let after = *rng.pick(&[
                "XX0\r\n\r\n",
                "\n0\r\n\r\n",
                "\r0\r\n\r\n",
                "abc\r\n0\r\n\r\n",
            ]);
            let mut b = post_head("Transfer-Encoding: chunked\r\n").into_bytes();
            b.extend_from_slice(format!("5\r\nhello{after}").as_bytes());
            b.extend_from_slice(SMUGGLED);
            Case {
                class: "chunked: missing CRLF after data",
                bytes: b,
                half_close: false,
                expect: Expect::Exactly(S400),
            }
        }
        15 => {
            // Truncated head, then EOF.
            let full = if rng.below(2) == 0 {
                valid_get()
            } else {
                post_head("Content-Length: 2\r\n").into_bytes()
            };
            let cut = rng.range(1, full.len() - 2);
            Case {
                class: "truncated head",
                bytes: full[..cut].to_vec(),
                half_close: true,
                expect: Expect::NothingOr(S400),
            }
        }
        16 => {
            // Half a chunked body, then EOF.
            let body = format!("{:x}\r\n{RPC_BODY}\r\n0\r\n\r\n", RPC_BODY.len());
            let cut = rng.range(1, body.len() - 1);
            let mut b = post_head("Transfer-Encoding: chunked\r\n").into_bytes();
            b.extend_from_slice(&body.as_bytes()[..cut]);
            Case {
                class: "half a chunked body",
                bytes: b,
                half_close: true,
                expect: Expect::NothingOr(S400),
            }
        }
        _ => {
            // Missing / duplicate Host in HTTP/1.1.
            let b = if rng.below(2) == 0 {
                format!("GET /healthz?{KEY_QS} HTTP/1.1\r\nUser-Agent: x\r\n\r\n")
            } else {
                format!("GET /healthz?{KEY_QS} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            };
            Case {
                class: "missing or duplicate Host",
                bytes: b.into_bytes(),
                half_close: false,
                expect: Expect::Exactly(S400),
            }
        }
    }
}

fn printable(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let mut s = String::from_utf8_lossy(cut).escape_debug().to_string();
    if bytes.len() > max {
        s.push_str(&format!("... ({} bytes total)", bytes.len()));
    }
    s
}

#[test]
fn garbage_never_kills_the_daemon() {
    let mut d = Daemon::start();
    d.assert_healthy("k", "before any garbage");
    d.assert_healthy("g", "before any garbage"); // the garbage key's child
    thread::sleep(Duration::from_millis(200));
    let fds_before = d.fd_count();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    const CASES: usize = 306; // 17 rounds over the 18 classes
    let started = Instant::now();
    let mut failures = Vec::new();
    // class -> outcomes seen (status or "none"), printed with --nocapture.
    let mut tally: std::collections::BTreeMap<&str, std::collections::BTreeMap<String, u32>> =
        Default::default();
    for i in 0..CASES {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "garbage loop exceeded its time bound at case {i}"
        );
        let case = gen_case(&mut rng, i);
        let mut s = d.connect();
        let _ = s.write_all(&case.bytes); // the daemon may close early
        if case.half_close {
            let _ = s.shutdown(Shutdown::Write);
        }
        let (got, end) = read_all(&mut s, Duration::from_secs(6));
        drop(s);
        let status = status_of(&got);
        let describe = || {
            format!(
                "case {i} [{}] sent {:?}\n  expected {:?}; got status {status:?}, end {end:?}, reply {:?}",
                case.class,
                printable(&case.bytes, 300),
                case.expect,
                printable(&got, 300)
            )
        };
        let ok = match &case.expect {
            Expect::Exactly(codes) => {
                status.is_some_and(|c| codes.contains(&c))
                    && end == End::Eof
                    && responses_in(&got) == 1
            }
            Expect::NothingOr(codes) => {
                (got.is_empty() && end != End::Timeout)
                    || status.is_some_and(|c| codes.contains(&c))
            }
            Expect::NothingOrError => {
                (got.is_empty() && end != End::Timeout)
                    || status.is_some_and(|c| (400..600).contains(&c))
            }
            Expect::Anything => {
                got.is_empty()
                    || status.is_some_and(|c| (200..300).contains(&c) || (400..600).contains(&c))
            }
        };
        let outcome = match status {
            Some(c) => c.to_string(),
            None if got.is_empty() => format!("nothing/{end:?}"),
            None => "junk".to_owned(),
        };
        *tally
            .entry(case.class)
            .or_default()
            .entry(outcome)
            .or_default() += 1;
        if !ok {
            eprintln!("FAIL {}", describe());
            failures.push(describe());
        }
        if (i + 1) % 25 == 0 {
            d.assert_healthy("k", &format!("after garbage case {i}"));
        }
    }
    for (class, outcomes) in &tally {
        eprintln!("garbage {class:<36} {outcomes:?}");
    }
    d.assert_healthy("k", "after all garbage");
    d.assert_healthy("other-key", "after all garbage, new key");
    // Nothing leaked from aborted or rejected requests (settle up to 3 s).
    let settle = Instant::now();
    let mut fds_after = d.fd_count();
    while fds_after > fds_before + 10 && settle.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(100));
        fds_after = d.fd_count();
    }
    eprintln!("garbage: ringmux fds before {fds_before}, after {fds_after}");
    assert!(
        fds_after <= fds_before + 10,
        "ringmux fd count grew from {fds_before} to {fds_after} over {CASES} garbage cases"
    );
    assert!(
        failures.is_empty(),
        "{} of {CASES} garbage cases got an unacceptable answer:\n{}",
        failures.len(),
        failures.join("\n")
    );
    d.stop();
}

// ---------------------------------------------------------------------------
// 2. pipelining
// ---------------------------------------------------------------------------

#[test]
fn pipelined_requests_answer_in_order() {
    let mut d = Daemon::start();
    let mut all = Vec::new();
    const N: usize = 20;
    for i in 0..N {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{i}"}}}}}}"#
        );
        all.extend_from_slice(
            format!(
                "POST /mcp?vf_state_secret=p HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let mut conn = Conn::new(d.connect());
    conn.send(&all); // one write
    let started = Instant::now();
    for i in 0..N {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "pipelined responses took too long (at {i})"
        );
        let resp = conn
            .read_response()
            .unwrap_or_else(|e| panic!("pipelined response {i}: {e}"));
        assert_eq!(resp.status, 200, "pipelined response {i}: {resp:?}");
        let v: serde_json::Value = serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("response {i} is not JSON ({e}): {resp:?}"));
        assert_eq!(
            v["id"],
            serde_json::json!(i),
            "response {i} has the wrong id: {v}"
        );
        let text = v["result"]["content"][0]["text"].as_str();
        assert_eq!(
            text,
            Some(i.to_string().as_str()),
            "response {i} answers out of order: {v}"
        );
    }
    // Nothing extra arrived.
    assert!(
        conn.buf.is_empty(),
        "extra bytes after 20 responses: {:?}",
        printable(&conn.buf, 200)
    );
    drop(conn);
    d.assert_healthy("p", "after pipelining");
    d.stop();
}

// ---------------------------------------------------------------------------
// 3. slowloris
// ---------------------------------------------------------------------------

#[test]
fn slowloris_does_not_block_others() {
    let mut d = Daemon::start();
    d.assert_healthy("k", "warm-up");
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = d.connect();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHo")
            .expect("write stalled prefix");
        stalled.push(s);
    }
    thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    for i in 0..20 {
        let t = Instant::now();
        let key = if i % 2 == 0 { "k" } else { "k2" };
        d.assert_healthy(key, &format!("normal request {i} during slowloris"));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "normal request {i} took {:?} while 50 connections stall",
            t.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "20 normal requests took {:?}",
        started.elapsed()
    );
    // The stalled connections are still open (not answered, not closed):
    // a short read must time out, not see EOF or data.
    for (i, s) in stalled.iter_mut().enumerate().take(5) {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("stalled connection {i}: expected no answer yet, got {other:?}"),
        }
    }
    drop(stalled);
    thread::sleep(Duration::from_millis(100));
    d.assert_healthy("k", "after closing the stalled connections");
    d.stop();
}

// ---------------------------------------------------------------------------
// 4. client disconnect mid-SSE
// ---------------------------------------------------------------------------

fn mcp_echo(d: &Daemon, key: &str, text: &str) -> Response {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}}}}}}"#
    );
    let mut conn = Conn::new(d.connect());
    conn.send(
        format!(
            "POST /mcp?vf_state_secret={key} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    conn.read_response().expect("echo response")
}

#[test]
fn client_disconnect_mid_sse_frees_upstream() {
    let mut d = Daemon::start();
    // Warm up key `s` (spawns its child) so the baseline includes it.
    d.assert_healthy("s", "warm-up");
    thread::sleep(Duration::from_millis(200));
    let before = d.fd_count();
    let started = Instant::now();
    for round in 0..30 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "SSE loop exceeded its time bound at round {round}"
        );
        let mut conn = Conn::new(d.connect());
        conn.send(
            b"GET /sse?n=1000&interval_ms=10&vf_state_secret=s HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let (status, headers) = conn
            .read_head(deadline)
            .unwrap_or_else(|e| panic!("SSE round {round}: head: {e}"));
        assert_eq!(
            status, 200,
            "SSE round {round}: status {status} {headers:?}"
        );
        // Read until the first complete event (`data: ...\n\n`).
        while find(&conn.buf, b"\n\n").is_none() {
            assert!(
                Instant::now() < deadline,
                "SSE round {round}: no first event within 5 s"
            );
            conn.fill()
                .unwrap_or_else(|e| panic!("SSE round {round}: reading first event: {e}"));
        }
        let text = String::from_utf8_lossy(&conn.buf).into_owned();
        assert!(
            text.contains("data: {\"i\": 0}"),
            "SSE round {round}: first event {text:?}"
        );
        drop(conn); // disconnect mid-stream
    }
    // The key still works.
    d.assert_healthy("s", "after 30 SSE disconnects");
    let resp = mcp_echo(&d, "s", "still-here");
    assert_eq!(resp.status, 200, "echo after SSE disconnects: {resp:?}");
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("echo JSON");
    assert_eq!(v["result"]["content"][0]["text"], "still-here", "{v}");

    // No fd leak: settle for up to 3 s.
    let settle = Instant::now();
    let mut after = d.fd_count();
    while after > before + 10 && settle.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(100));
        after = d.fd_count();
    }
    eprintln!("sse: ringmux fds before {before}, after {after}");
    assert!(
        after <= before + 10,
        "ringmux fd count grew from {before} to {after} after 30 SSE client disconnects"
    );
    d.stop();
}
