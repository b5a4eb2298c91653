//! Response heads: parsing what the upstream sent (one `httparse` pass, then
//! the RFC 9112 §6.3 body-length decision, which depends on the request
//! method) and rewriting the head for the downstream client; plus the small
//! complete responses the proxy generates itself ([`simple_response`]).

use super::{
    connection_tokens, content_length, find_header, is_hop_by_hop, map_httparse, persistent,
    push_framing, push_header, push_u64, start_line, transfer_coding, BodyKind, Headers, HttpError,
    Parsed, TransferCoding, MAX_HEAD, MAX_HEADERS,
};
use crate::fields::Text;

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// As received ([`ResponseHead::reason`]).
    reason: Text,
    pub version_minor: u8,
    /// Names as received (original case), values raw bytes, in order.
    pub headers: Headers,
    pub body: BodyKind,
    /// Whether the UPSTREAM connection may be reused after this response.
    pub keep_alive: bool,
}

/// Parses a response head from the front of `buf`. `request_was_head`
/// says whether it answers a HEAD request (then it never has a body).
/// Same `Partial` / [`HttpError::HeadTooLarge`] contract as
/// [`parse_request`](super::parse_request).
pub fn parse_response(
    buf: &[u8],
    request_was_head: bool,
) -> Result<Parsed<ResponseHead>, HttpError> {
    parse_response_into(buf, request_was_head, &mut Headers::default())
}

/// [`parse_response`] storing the head in `store` (as
/// [`parse_request_into`](super::request::parse_request_into)).
pub fn parse_response_into(
    buf: &[u8],
    request_was_head: bool,
    store: &mut Headers,
) -> Result<Parsed<ResponseHead>, HttpError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut raw);
    let parsed = res.parse(window).map_err(|e| {
        // status-line = HTTP-version SP status-code SP [ reason-phrase ]
        map_httparse(e, start_line(window).split(|&b| b == b' ').next())
    })?;
    let head_len = match parsed {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() > MAX_HEAD => return Err(HttpError::HeadTooLarge),
        httparse::Status::Partial => return Ok(Parsed::Partial),
    };
    let version_minor = match res.version {
        Some(v @ (0 | 1)) => v,
        _ => return Err(HttpError::UnsupportedVersion),
    };
    let status = match res.code {
        Some(code @ 100..=999) => code,
        _ => return Err(HttpError::Malformed("invalid status code")),
    };
    store.fill(res.headers)?;
    let reason = store.push_text(res.reason.unwrap_or(""));
    let headers = std::mem::take(store);

    let length = content_length(&headers)?;
    let mut keep_alive = persistent(&headers, version_minor);
    let body = if request_was_head || (100..200).contains(&status) || status == 204 || status == 304
    {
        BodyKind::None
    } else {
        match transfer_coding(&headers) {
            TransferCoding::Absent => length.map_or(BodyKind::CloseDelimited, BodyKind::Length),
            // We re-emit framing as plain `chunked`; any other coding would
            // be silently lost, so refuse it.
            TransferCoding::Other => return Err(HttpError::UnsupportedTransferEncoding),
            TransferCoding::Chunked => {
                if length.is_some() || version_minor == 0 {
                    // RFC 9112 §6.1/§6.3: suspicious framing, do not reuse.
                    keep_alive = false;
                }
                BodyKind::Chunked
            }
        }
    };
    if body == BodyKind::CloseDelimited {
        keep_alive = false;
    }

    Ok(Parsed::Complete {
        head: ResponseHead {
            status,
            reason,
            version_minor,
            headers,
            body,
            keep_alive,
        },
        head_len,
    })
}

impl ResponseHead {
    /// The reason phrase as received (empty if absent or not valid UTF-8).
    pub fn reason(&self) -> &str {
        self.headers.text(self.reason)
    }

    /// The storage of this head, for the next [`parse_response_into`].
    pub fn into_store(self) -> Headers {
        self.headers
    }

    /// 1xx: the caller forwards it and parses the next head.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// First header called `name` (case-insensitive).
    #[allow(dead_code, reason = "codec API, used by tests")]
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// Serializes the head for the downstream client onto `out`, always as
    /// `HTTP/1.1 {status} {reason}`: end-to-end headers byte for byte in
    /// order, hop-by-hop ones dropped, framing re-emitted
    /// (`Content-Length` / `Transfer-Encoding: chunked`), and
    /// `Connection: close` added when `!client_keep_alive` or the body is
    /// close-delimited. For 1xx only the status line and end-to-end headers.
    ///
    /// A bodiless response to HEAD or a 304 keeps the upstream's first
    /// `Content-Length` verbatim (it describes the representation, not this
    /// message's framing); 1xx and 204 never carry one.
    pub fn write_downstream(&self, client_keep_alive: bool, out: &mut Vec<u8>) {
        let estimate = 64
            + self.reason().len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>();
        out.reserve(estimate);
        out.extend_from_slice(b"HTTP/1.1 ");
        push_u64(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(self.reason().as_bytes());
        out.extend_from_slice(b"\r\n");

        let informational = self.is_informational();
        let mut keep_length = self.body == BodyKind::None && !informational && self.status != 204;
        let tokens = connection_tokens(&self.headers);
        for (name, value) in self.headers.iter() {
            if name.eq_ignore_ascii_case("content-length") {
                if keep_length {
                    push_header(out, name.as_bytes(), value);
                    keep_length = false;
                }
                continue;
            }
            if is_hop_by_hop(name, &tokens) {
                continue;
            }
            push_header(out, name.as_bytes(), value);
        }
        if !informational {
            push_framing(out, self.body);
            if !client_keep_alive || self.body == BodyKind::CloseDelimited {
                out.extend_from_slice(b"Connection: close\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// A complete small response generated by the proxy itself:
/// `HTTP/1.1 {status} {reason}`, `content-type: text/plain; charset=utf-8`,
/// `content-length`, the `extra_headers` (CR/LF/NUL stripped), and
/// `connection: close` when `close`, then `body`.
pub fn simple_response(
    status: u16,
    body: &str,
    extra_headers: &[(&str, &str)],
    close: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(&mut out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    push_u64(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    let clean = |s: &str, out: &mut Vec<u8>| {
        out.extend(s.bytes().filter(|b| !matches!(b, b'\r' | b'\n' | 0)));
    };
    for (name, value) in extra_headers {
        clean(name, &mut out);
        out.extend_from_slice(b": ");
        clean(value, &mut out);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// The standard reason phrase for `status` ("Unknown" if unregistered).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        511 => "Network Authentication Required",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8], head: bool) -> (ResponseHead, usize) {
        match parse_response(buf, head) {
            Ok(Parsed::Complete { head, head_len }) => (head, head_len),
            other => panic!("expected complete head, got {other:?}"),
        }
    }

    fn down(head: &ResponseHead, keep: bool) -> String {
        let mut out = Vec::new();
        head.write_downstream(keep, &mut out);
        String::from_utf8(out).unwrap()
    }

    const SSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
        content-type: text/event-stream\r\n\
        mcp-session-id: abc\r\n\
        Transfer-Encoding: chunked\r\n\
        \r\n\
        5\r\nhello\r\n";

    #[test]
    fn chunked_sse() {
        let (head, len) = complete(SSE, false);
        assert_eq!(&SSE[len..], b"5\r\nhello\r\n");
        assert_eq!(head.status, 200);
        assert_eq!(head.reason(), "OK");
        assert_eq!(head.body, BodyKind::Chunked);
        assert!(head.keep_alive);
        assert_eq!(head.header("Mcp-Session-Id"), Some(&b"abc"[..]));
        assert_eq!(
            down(&head, true),
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nmcp-session-id: abc\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            down(&head, false),
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nmcp-session-id: abc\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn partial_at_every_split() {
        let head_len = SSE.len() - b"5\r\nhello\r\n".len();
        for cut in 0..head_len {
            assert_eq!(
                parse_response(&SSE[..cut], false),
                Ok(Parsed::Partial),
                "cut {cut}"
            );
        }
        for cut in head_len..=SSE.len() {
            assert_eq!(complete(&SSE[..cut], false).1, head_len);
        }
    }

    #[test]
    fn content_length_body() {
        let buf = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";
        let (head, len) = complete(buf, false);
        assert_eq!(len, buf.len());
        assert_eq!(head.body, BodyKind::Length(0));
        assert!(head.keep_alive);
        assert_eq!(
            down(&head, true),
            "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
        );
        let buf =
            b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nContent-Type: application/json\r\n\r\n";
        let (head, _) = complete(buf, false);
        assert_eq!(head.body, BodyKind::Length(12));
        assert_eq!(
            down(&head, true),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n"
        );
    }

    #[test]
    fn head_response_has_no_body() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n";
        let (head, _) = complete(buf, true);
        assert_eq!(head.body, BodyKind::None);
        assert!(head.keep_alive);
        // C-L of the representation is kept for HEAD.
        assert_eq!(
            down(&head, true),
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n"
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (head, _) = complete(chunked, true);
        assert_eq!(head.body, BodyKind::None);
        assert_eq!(down(&head, true), "HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn no_body_statuses() {
        let (head, _) = complete(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n",
            false,
        );
        assert_eq!(head.body, BodyKind::None);
        assert!(head.keep_alive);
        assert_eq!(
            down(&head, true),
            "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
        );

        let (head, _) = complete(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: \"x\"\r\n\r\n",
            false,
        );
        assert_eq!(head.body, BodyKind::None);
        assert_eq!(
            down(&head, false),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: \"x\"\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn informational() {
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (head, len) = complete(buf, false);
        assert!(head.is_informational());
        assert_eq!(head.body, BodyKind::None);
        assert_eq!(down(&head, false), "HTTP/1.1 100 Continue\r\n\r\n");
        let (next, len2) = complete(&buf[len..], false);
        assert!(!next.is_informational());
        assert_eq!(next.body, BodyKind::Length(2));
        assert_eq!(&buf[len + len2..], b"ok");

        let (hints, _) = complete(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\nConnection: keep-alive\r\n\r\n",
            false,
        );
        assert!(hints.is_informational());
        assert_eq!(
            down(&hints, false),
            "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
        );
    }

    #[test]
    fn close_delimited() {
        let (head, _) = complete(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
            false,
        );
        assert_eq!(head.body, BodyKind::CloseDelimited);
        assert!(!head.keep_alive);
        assert_eq!(
            down(&head, true),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            down(&head, false).matches("Connection: close").count(),
            1,
            "connection: close added once"
        );
    }

    #[test]
    fn upstream_keep_alive() {
        let (h, _) = complete(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!h.keep_alive);
        assert_eq!(
            down(&h, true),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        );
        let (h, _) = complete(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!(h.version_minor, 0);
        assert!(!h.keep_alive);
        let (h, _) = complete(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(h.keep_alive);
        assert_eq!(
            down(&h, true),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        );
        let (h, _) = complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.body, BodyKind::Chunked);
        assert!(!h.keep_alive);
        assert_eq!(
            down(&h, true),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_dropped() {
        let buf = b"HTTP/1.1 200 OK\r\n\
            Connection: keep-alive, X-Internal\r\n\
            Keep-Alive: timeout=5\r\n\
            X-Internal: secret\r\n\
            Proxy-Authenticate: Basic\r\n\
            Upgrade: h2c\r\n\
            Trailer: X-T\r\n\
            Mcp-Session-Id: s\r\n\
            X-Other: 1\r\n\
            Content-Length: 3\r\n\
            \r\n";
        let (head, _) = complete(buf, false);
        assert_eq!(
            down(&head, true),
            "HTTP/1.1 200 OK\r\nMcp-Session-Id: s\r\nX-Other: 1\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn reason_kept_or_empty() {
        let (h, _) = complete(
            b"HTTP/1.1 404 Nope Not Here\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!(h.reason(), "Nope Not Here");
        assert!(down(&h, true).starts_with("HTTP/1.1 404 Nope Not Here\r\n"));
        let (h, _) = complete(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!(h.reason(), "");
        assert!(down(&h, true).starts_with("HTTP/1.1 200 \r\n"));
    }

    #[test]
    fn errors() {
        let bad = |buf: &[u8]| parse_response(buf, false).unwrap_err();
        assert_eq!(
            bad(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            HttpError::BadContentLength
        );
        assert_eq!(
            bad(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            HttpError::BadContentLength
        );
        assert_eq!(
            bad(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            HttpError::UnsupportedTransferEncoding
        );
        assert_eq!(
            bad(b"HTTP/2.0 200 OK\r\n\r\n"),
            HttpError::UnsupportedVersion
        );
        assert_eq!(bad(b"HTTX/1.1 200 OK\r\n\r\n").status(), 400);
        assert_eq!(bad(b"HTTP/1.1 099 Low\r\n\r\n").status(), 400);
        assert_eq!(bad(b"HTTP/1.1 2000 OK\r\n\r\n").status(), 400);
        assert_eq!(bad(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n").status(), 400);
        assert_eq!(bad(b"HTTP/1.1 200 OK\r\nX: a\0\r\n\r\n").status(), 400);
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 1, b'a');
        assert_eq!(bad(&big), HttpError::HeadTooLarge);
    }

    #[test]
    fn simple_response_format() {
        let r = simple_response(404, "no such session", &[("mcp-session-id", "abc")], false);
        assert_eq!(
            r,
            b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\n\
              content-length: 15\r\nmcp-session-id: abc\r\n\r\nno such session"
        );
        let r = simple_response(400, "", &[], true);
        assert_eq!(
            r,
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
              content-length: 0\r\nconnection: close\r\n\r\n"
        );
        let r = simple_response(200, "é", &[("x-a", "b\r\nInjected: 1")], false);
        let text = String::from_utf8(r.clone()).unwrap();
        assert!(text.contains("content-length: 2\r\n"));
        assert!(text.contains("x-a: bInjected: 1\r\n"));
        // It parses back.
        let (head, len) = complete(&r, false);
        assert_eq!(head.body, BodyKind::Length(2));
        assert_eq!(&r[len..], "é".as_bytes());
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(502), "Bad Gateway");
        assert_eq!(reason_phrase(799), "Unknown");
    }
}
