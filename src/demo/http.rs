//! The demo's HTTP/1.1 server side: reading a request (head, `Content-Length`
//! or chunked body, `Expect: 100-continue`, pipelining) and writing a
//! response. Deliberately simple: blocking I/O on one connection per thread.

use std::io::{self, ErrorKind, Read, Write};

use serde_json::Value;

use super::*;

/// A parsed request with its complete body.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: String,
    /// HTTP minor version (0 or 1).
    pub(super) minor: u8,
    pub(super) keep_alive: bool,
    pub(super) body: Vec<u8>,
}

/// What reading the next request produced.
pub(super) enum Incoming {
    Request(Request),
    /// Clean EOF, idle timeout, or peer vanished mid-request: just close.
    Closed,
    /// The request is unacceptable: answer with this status and close.
    Reject(u16),
}

#[derive(Debug)]
pub(super) enum BodyError {
    Io(io::Error),
    Eof,
    Malformed,
    TooLarge,
}

impl From<io::Error> for BodyError {
    fn from(e: io::Error) -> Self {
        BodyError::Io(e)
    }
}

/// A blocking stream plus the bytes read from it but not yet consumed.
pub(super) struct Conn<S> {
    pub(super) stream: S,
    pub(super) buf: Vec<u8>,
}

impl<S: Read + Write> Conn<S> {
    pub(super) fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(8 * 1024),
        }
    }

    /// Reads once more from the stream into `buf`; returns the byte count (0 = EOF).
    pub(super) fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes sure at least `n` bytes are buffered.
    pub(super) fn need(&mut self, n: usize) -> Result<(), BodyError> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(BodyError::Eof);
            }
        }
        Ok(())
    }

    /// Takes one line (without its CRLF or bare LF) off the buffer.
    pub(super) fn read_line(&mut self) -> Result<Vec<u8>, BodyError> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + pos;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            scanned = self.buf.len();
            if scanned > MAX_LINE {
                return Err(BodyError::Malformed);
            }
            if self.fill()? == 0 {
                return Err(BodyError::Eof);
            }
        }
    }

    /// Decodes a chunked body (the head must already be consumed).
    pub(super) fn read_chunked(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_field = line.split(|&b| b == b';').next().unwrap_or_default();
            let size_field = trim_ows(size_field);
            if size_field.is_empty() || size_field.len() > 15 {
                return Err(BodyError::Malformed);
            }
            let size_str = std::str::from_utf8(size_field).map_err(|_| BodyError::Malformed)?;
            if !size_str.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BodyError::Malformed);
            }
            let size = usize::from_str_radix(size_str, 16).map_err(|_| BodyError::Malformed)?;
            if size == 0 {
                for _ in 0..=MAX_TRAILERS {
                    if self.read_line()?.is_empty() {
                        return Ok(body);
                    }
                }
                return Err(BodyError::Malformed);
            }
            if body.len().saturating_add(size) > limit {
                return Err(BodyError::TooLarge);
            }
            self.need(size + 2)?;
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(BodyError::Malformed);
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// Reads exactly `len` body bytes.
    pub(super) fn read_fixed(&mut self, len: usize) -> Result<Vec<u8>, BodyError> {
        self.need(len)?;
        Ok(self.buf.drain(..len).collect())
    }
}

pub(super) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The request head, copied out of the parse buffer.
pub(super) struct Head {
    pub(super) method: String,
    pub(super) target: String,
    pub(super) minor: u8,
    pub(super) content_length: Option<usize>,
    /// `Some(true)` when the final transfer coding is chunked, `Some(false)` for
    /// any other transfer coding, `None` without `Transfer-Encoding`.
    pub(super) chunked: Option<bool>,
    pub(super) conn_close: bool,
    pub(super) conn_keep_alive: bool,
    pub(super) expect_continue: bool,
}

/// Parses the complete head at the start of `buf`. `Ok(None)` = incomplete.
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(431),
        Err(_) => return Err(400),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(400);
    };
    let mut head = Head {
        method: method.to_owned(),
        target: target.to_owned(),
        minor,
        content_length: None,
        chunked: None,
        conn_close: false,
        conn_keep_alive: false,
        expect_continue: false,
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| 400u16)?.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(400);
            }
            let len: usize = value.parse().map_err(|_| 400u16)?;
            match head.content_length {
                Some(prev) if prev != len => return Err(400),
                _ => head.content_length = Some(len),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            head.chunked = Some(last.eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.conn_close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    head.conn_keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            if value.eq_ignore_ascii_case("100-continue") {
                head.expect_continue = true;
            } else {
                return Err(417);
            }
        }
    }
    Ok(Some((head, consumed)))
}

impl<S: Read + Write> Conn<S> {
    /// Reads the next request (head and complete body) off the connection.
    pub(super) fn read_request(&mut self) -> io::Result<Incoming> {
        let (head, consumed) = loop {
            if !self.buf.is_empty() {
                match parse_head(&self.buf) {
                    Ok(Some(done)) => break done,
                    Ok(None) if self.buf.len() > MAX_HEAD => return Ok(Incoming::Reject(431)),
                    Ok(None) => {}
                    Err(status) => return Ok(Incoming::Reject(status)),
                }
            }
            match self.fill() {
                Ok(0) => return Ok(Incoming::Closed),
                Ok(_) => {}
                Err(e) if is_disconnect(&e) => return Ok(Incoming::Closed),
                Err(e) => return Err(e),
            }
        };
        self.buf.drain(..consumed);

        let mut keep_alive = if head.minor >= 1 {
            !head.conn_close
        } else {
            head.conn_keep_alive && !head.conn_close
        };
        let framing = match (head.chunked, head.content_length) {
            (Some(false), _) => return Ok(Incoming::Reject(501)),
            (Some(true), _) if head.minor == 0 => return Ok(Incoming::Reject(400)),
            (Some(true), cl) => {
                // Transfer-Encoding wins over Content-Length, but such a message
                // is suspicious (RFC 9112 §6.1): close after answering it.
                if cl.is_some() {
                    keep_alive = false;
                }
                None
            }
            (None, cl) => Some(cl.unwrap_or(0)),
        };
        if matches!(framing, Some(len) if len > MAX_BODY) {
            return Ok(Incoming::Reject(413));
        }
        let has_body = framing != Some(0);
        if head.expect_continue && head.minor >= 1 && has_body {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = match framing {
            Some(len) => self.read_fixed(len),
            None => self.read_chunked(MAX_BODY),
        };
        let body = match body {
            Ok(body) => body,
            Err(BodyError::Malformed) => return Ok(Incoming::Reject(400)),
            Err(BodyError::TooLarge) => return Ok(Incoming::Reject(413)),
            Err(BodyError::Eof) => return Ok(Incoming::Closed),
            Err(BodyError::Io(e)) if is_disconnect(&e) => return Ok(Incoming::Closed),
            Err(BodyError::Io(e)) => return Err(e),
        };

        let (path, query) = match head.target.split_once('?') {
            Some((p, q)) => (p.to_owned(), q.to_owned()),
            None => (head.target, String::new()),
        };
        Ok(Incoming::Request(Request {
            method: head.method,
            path,
            query,
            minor: head.minor,
            keep_alive,
            body,
        }))
    }
}

/// A complete (non-streaming) response.
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) content_type: Option<&'static str>,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: Vec<u8>,
}

impl Response {
    pub(super) fn new(status: u16) -> Self {
        Response {
            status,
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub(super) fn text(status: u16, body: &str) -> Self {
        Response {
            content_type: Some("text/plain; charset=utf-8"),
            body: body.as_bytes().to_vec(),
            ..Response::new(status)
        }
    }

    pub(super) fn json(status: u16, body: &Value) -> Self {
        Response {
            content_type: Some("application/json"),
            body: body.to_string().into_bytes(),
            ..Response::new(status)
        }
    }

    pub(super) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

pub(super) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// The connection header to send: `close`, `keep-alive` (HTTP/1.0 only), or none.
pub(super) fn connection_header(out: &mut String, keep_alive: bool, minor: u8) {
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    } else if minor == 0 {
        out.push_str("Connection: keep-alive\r\n");
    }
}

pub(super) fn write_response(
    stream: &mut impl Write,
    resp: &Response,
    keep_alive: bool,
    minor: u8,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    if let Some(ct) = resp.content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    for (name, value) in &resp.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    connection_header(&mut head, keep_alive, minor);
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&resp.body);
    stream.write_all(&out)?;
    stream.flush()
}
