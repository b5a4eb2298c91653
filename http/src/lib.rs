//! ringmux's HTTP/1.1 codec, as a crate of its own (pure: bytes in, heads
//! and body events out; never touches a socket), so the fuzz targets build
//! it alone. The daemon uses it as `crate::http` and `crate::origin`.
//!
//! This module owns the shared vocabulary of the codec: the [`HttpError`] type
//! (with the status code the proxy answers each error with), the [`Parsed`]
//! result of head parsing, the [`BodyKind`] framing decision and the limits
//! ([`MAX_HEAD`], [`MAX_HEADERS`]). The concepts live in the submodules:
//! request heads ([`request`]), response heads ([`response`]), heads that
//! arrive in pieces ([`accumulate`]), body framing
//! ([`body`]), hop-by-hop headers ([`hop`]) and query strings ([`query`]);
//! the Origin / Host policy, the DNS-rebinding check on request heads,
//! lives beside them ([`origin`]).
#![forbid(unsafe_code)]

pub mod accumulate;
pub mod body;
pub mod fields;
pub mod hop;
pub mod origin;
pub mod query;
pub mod request;
pub mod response;

pub use accumulate::HeadAcc;
#[allow(unused_imports)]
pub use body::BodyTracker;
pub use fields::Headers;
pub use hop::{connection_tokens, is_hop_by_hop};
#[allow(unused_imports)]
pub use query::query_param;
#[allow(unused_imports)]
pub use request::{parse_request, parse_request_into, RequestHead};
#[allow(unused_imports)]
pub use response::{
    parse_response, parse_response_into, reason_phrase, simple_response, ResponseHead,
};

/// Largest head (request or status line plus header section) we accept.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest number of header fields we accept in one head.
pub const MAX_HEADERS: usize = 128;

/// Outcome of parsing a head from the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The head is complete; it occupied the first `head_len` bytes of the
    /// buffer (whatever follows is body or a pipelined message).
    Complete { head: T, head_len: usize },
    /// More bytes are needed.
    Partial,
}

/// Everything that can be wrong with the bytes of an HTTP/1.x message.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum HttpError {
    #[error("malformed HTTP message: {0}")]
    Malformed(&'static str),
    #[error("HTTP head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("invalid chunked encoding: {0}")]
    BadChunk(&'static str),
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    #[error("request body larger than the limit (--max-body)")]
    BodyTooLarge,
}

impl HttpError {
    /// The status code the proxy answers with when a client's message has
    /// this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::BadContentLength | HttpError::BadChunk(_) => 400,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::UnsupportedTransferEncoding => 501,
            HttpError::BodyTooLarge => 413,
            HttpError::UnsupportedVersion => 505,
        }
    }
}

/// How the body following a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the connection closes (responses only).
    CloseDelimited,
}

/// Maps an `httparse` error onto ours. `start_line_version` is the
/// HTTP-version token of the start line, used to tell a well-formed but
/// unsupported version (505) from a garbled start line (400).
pub(crate) fn map_httparse(err: httparse::Error, start_line_version: Option<&[u8]>) -> HttpError {
    match err {
        httparse::Error::Version => match start_line_version {
            Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor])
                if major.is_ascii_digit() && minor.is_ascii_digit() =>
            {
                HttpError::UnsupportedVersion
            }
            _ => HttpError::Malformed("invalid HTTP version"),
        },
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::HeaderName => HttpError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HttpError::Malformed("invalid header value"),
        httparse::Error::NewLine => HttpError::Malformed("invalid line ending"),
        httparse::Error::Status => HttpError::Malformed("invalid status code"),
        httparse::Error::Token => HttpError::Malformed("invalid token in start line"),
    }
}

/// The first line of `buf` after any leading empty lines (without its line
/// ending), as the start-line parser sees it.
pub(crate) fn start_line(buf: &[u8]) -> &[u8] {
    let mut rest = buf;
    while let [b'\r', b'\n', tail @ ..] | [b'\n', tail @ ..] = rest {
        rest = tail;
    }
    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let line = &rest[..end];
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Case-insensitive lookup of the first header called `name`.
pub(crate) fn find_header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Trims optional whitespace (SP / HTAB) from both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Iterates the non-empty, OWS-trimmed elements of a comma-separated list
/// spread over every header called `name`.
pub(crate) fn list_elements<'a>(
    headers: &'a Headers,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Validates a stored header: no CR, LF or NUL anywhere in name or value,
/// and a non-empty name.
pub(crate) fn check_field(name: &str, value: &[u8]) -> Result<(), HttpError> {
    if name.is_empty() || name.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(HttpError::Malformed("invalid header name"));
    }
    if value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(HttpError::Malformed("invalid header value"));
    }
    Ok(())
}

/// Parses all Content-Length values of a message. `Ok(None)` when absent;
/// every element (across repeated headers and comma lists) must be the same
/// non-negative decimal number that fits in a `u64`.
pub(crate) fn content_length(headers: &Headers) -> Result<Option<u64>, HttpError> {
    let mut found: Option<u64> = None;
    for (name, value) in headers.iter() {
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        for element in value.split(|&b| b == b',') {
            let n = parse_decimal(trim_ows(element)).ok_or(HttpError::BadContentLength)?;
            match found {
                Some(prev) if prev != n => return Err(HttpError::BadContentLength),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// What the Transfer-Encoding header(s) say about framing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TransferCoding {
    /// No Transfer-Encoding header.
    Absent,
    /// Exactly `chunked`.
    Chunked,
    /// Anything else (other codings, chunked not last, chunked twice, empty).
    Other,
}

pub(crate) fn transfer_coding(headers: &Headers) -> TransferCoding {
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
    {
        return TransferCoding::Absent;
    }
    let mut elements = list_elements(headers, "transfer-encoding");
    match (elements.next(), elements.next()) {
        (Some(only), None) if only.eq_ignore_ascii_case(b"chunked") => TransferCoding::Chunked,
        _ => TransferCoding::Other,
    }
}

/// Whether a `Connection` header of the message lists `token`.
pub(crate) fn connection_has(headers: &Headers, token: &str) -> bool {
    list_elements(headers, "connection").any(|e| e.eq_ignore_ascii_case(token.as_bytes()))
}

/// Persistence per RFC 9112 §9.3 for a message of version 1.`minor`.
pub(crate) fn persistent(headers: &Headers, version_minor: u8) -> bool {
    if connection_has(headers, "close") {
        false
    } else if version_minor >= 1 {
        true
    } else {
        connection_has(headers, "keep-alive")
    }
}

/// Appends `name: value\r\n`.
pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the decimal form of `n`.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends the framing header we re-emit for a forwarded body: the length, or
/// `Transfer-Encoding: chunked` (the chunked bytes themselves pass verbatim).
pub(crate) fn push_framing(out: &mut Vec<u8>, body: BodyKind) {
    match body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::None | BodyKind::CloseDelimited => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(list: &[(&str, &str)]) -> crate::Headers {
        crate::Headers::from_pairs(list)
    }

    #[test]
    fn status_codes() {
        assert_eq!(HttpError::Malformed("x").status(), 400);
        assert_eq!(HttpError::BadContentLength.status(), 400);
        assert_eq!(HttpError::BadChunk("x").status(), 400);
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
        assert_eq!(HttpError::UnsupportedTransferEncoding.status(), 501);
        assert_eq!(HttpError::UnsupportedVersion.status(), 505);
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(content_length(&hs(&[])), Ok(None));
        assert_eq!(
            content_length(&hs(&[("Content-Length", "42")])),
            Ok(Some(42))
        );
        assert_eq!(
            content_length(&hs(&[("content-length", "007")])),
            Ok(Some(7))
        );
        assert_eq!(
            content_length(&hs(&[("Content-Length", "5"), ("content-length", "5")])),
            Ok(Some(5))
        );
        assert_eq!(
            content_length(&hs(&[("Content-Length", "5, 5")])),
            Ok(Some(5))
        );
        for bad in [
            "-1",
            "+5",
            "abc",
            "",
            "5 5",
            "0x10",
            "5,6",
            "5,",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            assert_eq!(
                content_length(&hs(&[("Content-Length", bad)])),
                Err(HttpError::BadContentLength),
                "{bad:?}"
            );
        }
        assert_eq!(
            content_length(&hs(&[("Content-Length", "5"), ("Content-Length", "6")])),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            content_length(&hs(&[("Content-Length", "18446744073709551615")])),
            Ok(Some(u64::MAX))
        );
    }

    #[test]
    fn transfer_coding_rules() {
        assert_eq!(transfer_coding(&hs(&[])), TransferCoding::Absent);
        assert_eq!(
            transfer_coding(&hs(&[("Transfer-Encoding", "chunked")])),
            TransferCoding::Chunked
        );
        assert_eq!(
            transfer_coding(&hs(&[("transfer-encoding", " Chunked ")])),
            TransferCoding::Chunked
        );
        for other in [
            "gzip",
            "gzip, chunked",
            "chunked, gzip",
            "chunked, chunked",
            "",
            "identity",
        ] {
            assert_eq!(
                transfer_coding(&hs(&[("Transfer-Encoding", other)])),
                TransferCoding::Other,
                "{other:?}"
            );
        }
        assert_eq!(
            transfer_coding(&hs(&[
                ("Transfer-Encoding", "gzip"),
                ("Transfer-Encoding", "chunked")
            ])),
            TransferCoding::Other
        );
    }

    #[test]
    fn persistence() {
        assert!(persistent(&hs(&[]), 1));
        assert!(!persistent(&hs(&[]), 0));
        assert!(persistent(&hs(&[("Connection", "Keep-Alive")]), 0));
        assert!(!persistent(&hs(&[("Connection", "close")]), 1));
        assert!(!persistent(&hs(&[("Connection", "keep-alive, Close")]), 0));
        assert!(!persistent(
            &hs(&[("Connection", "upgrade"), ("connection", "CLOSE")]),
            1
        ));
    }

    #[test]
    fn decimal_output() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn start_lines() {
        assert_eq!(start_line(b"GET / HTTP/1.1\r\nHost: h"), b"GET / HTTP/1.1");
        assert_eq!(start_line(b"\r\n\nGET / HTTP/1.1\n"), b"GET / HTTP/1.1");
        assert_eq!(start_line(b"partial"), b"partial");
        assert_eq!(start_line(b""), b"");
    }

    #[test]
    fn field_checks() {
        assert!(check_field("a", b"b").is_ok());
        assert!(check_field("", b"b").is_err());
        assert!(check_field("a\r", b"b").is_err());
        assert!(check_field("a", b"b\nc").is_err());
        assert!(check_field("a", b"b\0").is_err());
    }
}
