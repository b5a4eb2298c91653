//! Request heads: parsing what a client sent (one `httparse` pass, then the
//! RFC 9112 framing and persistence decisions) and rewriting the head for the
//! upstream server (hop-by-hop fields dropped, `Host` replaced, framing
//! re-emitted by us).

use super::{
    connection_tokens, content_length, is_hop_by_hop, list_elements, map_httparse, persistent,
    push_framing, push_header, query, start_line, transfer_coding, BodyKind, Headers, HttpError,
    Parsed, TransferCoding, MAX_HEAD, MAX_HEADERS,
};
use crate::fields::Text;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method ([`RequestHead::method`]).
    method: Text,
    /// The raw request-target as received ([`RequestHead::target`]).
    target: Text,
    /// 0 or 1.
    pub version_minor: u8,
    /// Names as received (original case), values raw bytes, in order.
    pub headers: Headers,
    pub body: BodyKind,
    /// Whether the client connection may carry another request afterwards.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

/// Parses a request head from the front of `buf`.
///
/// `Partial` while the head is incomplete and `buf` is at most [`MAX_HEAD`]
/// bytes; [`HttpError::HeadTooLarge`] once more than that has arrived without
/// the head completing. Only the first `MAX_HEAD` bytes are ever scanned.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<RequestHead>, HttpError> {
    parse_request_into(buf, &mut Headers::default())
}

/// [`parse_request`] storing the head in `store` (its capacity reused: a
/// complete head takes it, leaving an empty one behind; see
/// [`RequestHead::into_store`] for giving it back).
pub fn parse_request_into(
    buf: &[u8],
    store: &mut Headers,
) -> Result<Parsed<RequestHead>, HttpError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let parsed = req.parse(window).map_err(|e| {
        // request-line = method SP request-target SP HTTP-version
        let mut parts = start_line(window).split(|&b| b == b' ');
        let version = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(_), Some(_), Some(v), None) => Some(v),
            _ => None,
        };
        map_httparse(e, version)
    })?;
    let head_len = match parsed {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() > MAX_HEAD => return Err(HttpError::HeadTooLarge),
        httparse::Status::Partial => return Ok(Parsed::Partial),
    };
    let method = req.method.ok_or(HttpError::Malformed("missing method"))?;
    let target = req
        .path
        .ok_or(HttpError::Malformed("missing request-target"))?;
    let version_minor = match req.version {
        Some(v @ (0 | 1)) => v,
        _ => return Err(HttpError::UnsupportedVersion),
    };
    store.fill(req.headers)?;
    let method = store.push_text(method);
    let target = store.push_text(target);
    let headers = std::mem::take(store);

    let hosts = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 || (version_minor == 1 && hosts == 0) {
        return Err(HttpError::Malformed(
            "request needs exactly one Host header",
        ));
    }

    let length = content_length(&headers)?;
    let mut keep_alive = persistent(&headers, version_minor);
    let body = match transfer_coding(&headers) {
        TransferCoding::Absent => length.map_or(BodyKind::None, BodyKind::Length),
        TransferCoding::Other => return Err(HttpError::UnsupportedTransferEncoding),
        TransferCoding::Chunked if version_minor == 0 => {
            // RFC 9112 §6.1: framing of an HTTP/1.0 message with
            // Transfer-Encoding is faulty.
            return Err(HttpError::Malformed(
                "Transfer-Encoding in HTTP/1.0 request",
            ));
        }
        TransferCoding::Chunked => {
            if length.is_some() {
                // RFC 9112 §6.3: chunked wins, but close afterwards.
                keep_alive = false;
            }
            BodyKind::Chunked
        }
    };
    let expect_continue =
        list_elements(&headers, "expect").any(|e| e.eq_ignore_ascii_case(b"100-continue"));

    Ok(Parsed::Complete {
        head: RequestHead {
            method,
            target,
            version_minor,
            headers,
            body,
            keep_alive,
            expect_continue,
        },
        head_len,
    })
}

impl RequestHead {
    /// The method, e.g. `POST`.
    pub fn method(&self) -> &str {
        self.headers.text(self.method)
    }

    /// The raw request-target as received, e.g. `/mcp?vf_state_secret=abc`.
    pub fn target(&self) -> &str {
        self.headers.text(self.target)
    }

    /// The storage of this head, for the next [`parse_request_into`].
    pub fn into_store(self) -> Headers {
        self.headers
    }

    /// A head with just a request line and no fields (tests of the target
    /// forms).
    #[cfg(test)]
    fn with_line(method: &str, target: &str) -> RequestHead {
        let mut headers = Headers::default();
        let method = headers.push_text(method);
        let target = headers.push_text(target);
        RequestHead {
            method,
            target,
            version_minor: 1,
            headers,
            body: BodyKind::None,
            keep_alive: true,
            expect_continue: false,
        }
    }

    /// The path component of the target: up to `?` (or `#`). For an
    /// absolute-form target (`http://host/p?q`) the scheme and authority are
    /// skipped.
    pub fn path(&self) -> &str {
        let t = strip_scheme_authority(self.target());
        let end = t.find(['?', '#']).unwrap_or(t.len());
        match &t[..end] {
            "" => "/",
            p => p,
        }
    }

    /// The query string: after the first `?`, before any `#`.
    pub fn query(&self) -> Option<&str> {
        let t = self.target();
        let q = &t[t.find('?')? + 1..];
        Some(q.find('#').map_or(q, |end| &q[..end]))
    }

    /// First value of query parameter `name`, percent-decoded (`+` is a
    /// space); `Some("")` for an empty value.
    pub fn query_param(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        query::query_param(self.query()?, name)
    }

    /// First header called `name` (case-insensitive).
    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        super::find_header(&self.headers, name)
    }

    /// The headers the DNS-rebinding check looks at, in one pass.
    pub fn origin_headers(&self) -> crate::origin::Seen<'_> {
        let mut seen = crate::origin::Seen::default();
        // An absolute-form target's authority takes precedence over Host
        // (RFC 9112, 3.2.2): check the name the request really addresses.
        if let Some((authority, _)) = split_absolute(self.target()) {
            seen.host = Some(authority.as_bytes());
        }
        for (name, value) in self.headers.iter() {
            if name.eq_ignore_ascii_case("host") {
                seen.host.get_or_insert(value);
            } else if name.eq_ignore_ascii_case("origin") {
                seen.origins += 1;
                seen.origin.get_or_insert(value);
            } else if name.eq_ignore_ascii_case("sec-fetch-site") {
                seen.fetch_site.get_or_insert(value);
            }
        }
        seen
    }

    pub fn is_head(&self) -> bool {
        self.method() == "HEAD"
    }

    /// Serializes the head for the upstream (always HTTP/1.1) onto `out`:
    /// the request line with the target unchanged, end-to-end headers byte
    /// for byte in original order and case, hop-by-hop headers (and those
    /// named by `Connection`) dropped, `Host` replaced by `Host: {host}` in
    /// place (or first if absent), and framing re-emitted by us
    /// (`Content-Length: N` or `Transfer-Encoding: chunked`).
    pub fn write_upstream(&self, host: &str, out: &mut Vec<u8>) {
        let (method, target) = (self.method(), self.target());
        let estimate = method.len()
            + target.len()
            + 64
            + host.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>();
        out.reserve(estimate);
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");

        let tokens = connection_tokens(&self.headers);
        let mut host_written = false;
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            push_header(out, b"Host", host.as_bytes());
            host_written = true;
        }
        for (name, value) in self.headers.iter() {
            if name.eq_ignore_ascii_case("host") {
                if !host_written {
                    push_header(out, b"Host", host.as_bytes());
                    host_written = true;
                }
                continue;
            }
            if name.eq_ignore_ascii_case("content-length") || is_hop_by_hop(name, &tokens) {
                continue;
            }
            push_header(out, name.as_bytes(), value);
        }
        push_framing(out, self.body);
        out.extend_from_slice(b"\r\n");
    }
}

/// For an absolute-form target, the part after `scheme://authority`.
fn strip_scheme_authority(target: &str) -> &str {
    match split_absolute(target) {
        Some((_, rest)) => rest,
        None => target,
    }
}

/// `(authority, rest)` of an absolute-form target (`http://host:port/path`).
fn split_absolute(target: &str) -> Option<(&str, &str)> {
    let b = target.as_bytes();
    let after_scheme = if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return None;
    };
    let rest = &target[after_scheme..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((&rest[..auth_end], &rest[auth_end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (RequestHead, usize) {
        match parse_request(buf) {
            Ok(Parsed::Complete { head, head_len }) => (head, head_len),
            other => panic!("expected complete head, got {other:?}"),
        }
    }

    fn err(buf: &[u8]) -> HttpError {
        match parse_request(buf) {
            Err(e) => e,
            other => panic!("expected error, got {other:?}"),
        }
    }

    fn upstream(head: &RequestHead) -> String {
        let mut out = Vec::new();
        head.write_upstream("127.0.0.1:9000", &mut out);
        String::from_utf8(out).unwrap()
    }

    const POST: &[u8] = b"POST /mcp?vf_state_secret=abc HTTP/1.1\r\n\
        Host: proxy.example\r\n\
        Content-Type: application/json\r\n\
        Accept: application/json, text/event-stream\r\n\
        Mcp-Session-Id: s-1\r\n\
        MCP-Protocol-Version: 2025-06-18\r\n\
        Content-Length: 5\r\n\
        \r\n\
        hello";

    #[test]
    fn basic_post() {
        let (head, len) = complete(POST);
        assert_eq!(&POST[len..], b"hello");
        assert_eq!(head.method(), "POST");
        assert_eq!(head.target(), "/mcp?vf_state_secret=abc");
        assert_eq!(head.path(), "/mcp");
        assert_eq!(head.query(), Some("vf_state_secret=abc"));
        assert_eq!(head.query_param("vf_state_secret").as_deref(), Some("abc"));
        assert_eq!(head.version_minor, 1);
        assert_eq!(head.body, BodyKind::Length(5));
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
        assert!(!head.is_head());
        assert_eq!(head.header("mcp-session-id"), Some(&b"s-1"[..]));
        assert_eq!(head.header("MCP-SESSION-ID"), Some(&b"s-1"[..]));
        assert_eq!(head.header("missing"), None);
        assert_eq!(head.headers.get(0).map(|h| h.0), Some("Host"));
        assert_eq!(head.headers.len(), 6);
    }

    #[test]
    fn pipelined_requests() {
        let mut buf = Vec::new();
        buf.extend_from_slice(POST);
        buf.extend_from_slice(b"GET /mcp HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n");
        buf.extend_from_slice(b"DELETE /mcp HTTP/1.1\r\nHost: h\r\nMcp-Session-Id: s\r\n\r\n");

        let (first, len1) = complete(&buf);
        assert_eq!(first.body, BodyKind::Length(5));
        let rest = &buf[len1 + 5..];
        let (second, len2) = complete(rest);
        assert_eq!(second.method(), "GET");
        assert_eq!(second.body, BodyKind::None);
        assert_eq!(
            len2,
            b"GET /mcp HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n".len()
        );
        let (third, len3) = complete(&rest[len2..]);
        assert_eq!(third.method(), "DELETE");
        assert_eq!(len3, rest.len() - len2);
    }

    #[test]
    fn pipelined_chunked_then_next() {
        use crate::BodyTracker;
        let buf = b"POST /mcp HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
            2;x=y\r\n{}\r\n0\r\nX-T: 1\r\n\r\n\
            GET /mcp HTTP/1.1\r\nHost: h\r\n\r\n";
        let (first, len) = complete(buf);
        let mut tracker = BodyTracker::new(first.body);
        let body_len = tracker.feed(&buf[len..]).unwrap();
        assert!(tracker.is_done());
        assert_eq!(body_len, b"2;x=y\r\n{}\r\n0\r\nX-T: 1\r\n\r\n".len());
        let (second, len2) = complete(&buf[len + body_len..]);
        assert_eq!(second.method(), "GET");
        assert_eq!(len + body_len + len2, buf.len());
    }

    #[test]
    fn partial_at_every_split() {
        let head_len = POST.len() - 5;
        for cut in 0..head_len {
            assert_eq!(
                parse_request(&POST[..cut]),
                Ok(Parsed::Partial),
                "cut {cut}"
            );
        }
        for cut in head_len..=POST.len() {
            let (head, len) = complete(&POST[..cut]);
            assert_eq!(len, head_len);
            assert_eq!(head.body, BodyKind::Length(5));
        }
    }

    #[test]
    fn head_too_large() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
        buf.resize(MAX_HEAD, b'a');
        assert_eq!(parse_request(&buf), Ok(Parsed::Partial));
        buf.push(b'a');
        assert_eq!(parse_request(&buf), Err(HttpError::HeadTooLarge));
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&buf), Err(HttpError::HeadTooLarge));
        assert_eq!(HttpError::HeadTooLarge.status(), 431);

        // A head that completes just under the limit is fine.
        let mut ok = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
        ok.resize(MAX_HEAD - 4, b'a');
        ok.extend_from_slice(b"\r\n\r\n");
        let (_, len) = complete(&ok);
        assert_eq!(len, MAX_HEAD);
    }

    #[test]
    fn too_many_headers() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(err(&buf), HttpError::TooManyHeaders);
        assert_eq!(HttpError::TooManyHeaders.status(), 431);

        let mut ok = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..MAX_HEADERS - 1 {
            ok.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        ok.extend_from_slice(b"\r\n");
        assert_eq!(complete(&ok).0.headers.len(), MAX_HEADERS);
    }

    #[test]
    fn bad_content_length() {
        for cl in ["-1", "abc", "1.5", "", "+3", "0x1", "99999999999999999999"] {
            let buf = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(err(buf.as_bytes()), HttpError::BadContentLength, "{cl:?}");
        }
        let two = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(err(two), HttpError::BadContentLength);
        let list = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 4\r\n\r\n";
        assert_eq!(err(list), HttpError::BadContentLength);
        let same = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n";
        assert_eq!(complete(same).0.body, BodyKind::Length(3));
        assert_eq!(HttpError::BadContentLength.status(), 400);
    }

    #[test]
    fn content_length_zero_and_none() {
        let zero = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n";
        let (head, _) = complete(zero);
        assert_eq!(head.body, BodyKind::Length(0));
        assert!(upstream(&head).contains("\r\nContent-Length: 0\r\n"));
        let none = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let (head, _) = complete(none);
        assert_eq!(head.body, BodyKind::None);
        assert!(!upstream(&head)
            .to_ascii_lowercase()
            .contains("content-length"));
    }

    #[test]
    fn chunked_and_both() {
        let chunked = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (head, _) = complete(chunked);
        assert_eq!(head.body, BodyKind::Chunked);
        assert!(head.keep_alive);
        let up = upstream(&head);
        assert_eq!(up.matches("Transfer-Encoding: chunked\r\n").count(), 1);

        let both = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nTransfer-Encoding: Chunked\r\n\r\n";
        let (head, _) = complete(both);
        assert_eq!(head.body, BodyKind::Chunked);
        assert!(!head.keep_alive, "ambiguous framing: close afterwards");
        let up = upstream(&head);
        assert!(!up.to_ascii_lowercase().contains("content-length"), "{up}");
        assert!(up.contains("Transfer-Encoding: chunked\r\n"));
        assert!(!up.contains("Chunked"));
    }

    #[test]
    fn unsupported_transfer_encoding() {
        for te in ["gzip", "gzip, chunked", "chunked, gzip", "identity"] {
            let buf = format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n");
            let e = err(buf.as_bytes());
            assert_eq!(e, HttpError::UnsupportedTransferEncoding, "{te}");
            assert_eq!(e.status(), 501);
        }
        let split = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(err(split), HttpError::UnsupportedTransferEncoding);
        let te10 = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(err(te10).status(), 400);
    }

    #[test]
    fn http10_keep_alive() {
        let (head, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(head.version_minor, 0);
        assert!(!head.keep_alive);
        let (head, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(head.keep_alive);
        let (head, _) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n");
        assert!(!head.keep_alive);
        // Upstream always gets HTTP/1.1 and a Host.
        let up = upstream(&complete(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").0);
        assert_eq!(up, "GET /x HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n");
    }

    #[test]
    fn http11_close() {
        let (head, _) = complete(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        assert!(!head.keep_alive);
        assert!(!head.keep_alive);
        let (head, _) =
            complete(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n");
        assert!(!head.keep_alive);
    }

    #[test]
    fn versions() {
        assert_eq!(
            err(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n"),
            HttpError::UnsupportedVersion
        );
        assert_eq!(
            err(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n"),
            HttpError::UnsupportedVersion
        );
        assert_eq!(
            err(b"GET / HTTP/0.9\r\n\r\n"),
            HttpError::UnsupportedVersion
        );
        assert_eq!(HttpError::UnsupportedVersion.status(), 505);
        // A garbled request line is 400, not 505.
        assert_eq!(err(b"GET / http/1.1\r\nHost: h\r\n\r\n").status(), 400);
        assert_eq!(err(b"GET / HTTP/1.1x\r\nHost: h\r\n\r\n").status(), 400);
        assert_eq!(err(b"GET / HTTP/11\r\nHost: h\r\n\r\n").status(), 400);
        assert_eq!(err(b"\r\nGET / HTTP/3.0\r\n\r\n").status(), 505);
    }

    #[test]
    fn host_count() {
        assert_eq!(err(b"GET / HTTP/1.1\r\n\r\n").status(), 400);
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n").status(),
            400
        );
        assert_eq!(
            err(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n").status(),
            400
        );
        assert!(complete(b"GET / HTTP/1.1\r\nHost:\r\n\r\n")
            .0
            .header("host")
            .is_some());
    }

    #[test]
    fn malformed() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        ];
        for case in cases {
            let e = err(case);
            assert_eq!(
                e.status(),
                400,
                "{:?}: {e:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn expect_continue() {
        let (head, _) = complete(
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
        );
        assert!(head.expect_continue);
        let (head, _) = complete(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: other\r\n\r\n");
        assert!(!head.expect_continue);
    }

    #[test]
    fn head_method() {
        assert!(complete(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n").0.is_head());
    }

    #[test]
    fn host_rewrite_in_place() {
        let (head, _) = complete(
            b"GET /p?q=1 HTTP/1.1\r\nAccept: */*\r\nhOsT: client.example\r\nX-Z: z\r\n\r\n",
        );
        assert_eq!(
            upstream(&head),
            "GET /p?q=1 HTTP/1.1\r\nAccept: */*\r\nHost: 127.0.0.1:9000\r\nX-Z: z\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_removed() {
        let buf = b"POST /mcp?vf_state_secret=x%2By&b=2 HTTP/1.1\r\n\
            Host: client\r\n\
            Connection: keep-alive, X-Drop-Me\r\n\
            Keep-Alive: timeout=5\r\n\
            X-Drop-Me: secret\r\n\
            TE: trailers\r\n\
            Trailer: X-T\r\n\
            Upgrade: h2c\r\n\
            Proxy-Authorization: Basic abc\r\n\
            Proxy-Connection: keep-alive\r\n\
            Authorization: Bearer tok\r\n\
            Mcp-Session-Id: abc-123\r\n\
            MCP-Protocol-Version: 2025-06-18\r\n\
            Last-Event-ID: 42\r\n\
            Mcp-Method: tools/call\r\n\
            Mcp-Name: echo\r\n\
            X-Keep: Weird  Value\r\n\
            Accept: application/json, text/event-stream\r\n\
            Content-Length: 2\r\n\
            \r\n{}";
        let (head, len) = complete(buf);
        assert_eq!(&buf[len..], b"{}");
        assert_eq!(
            upstream(&head),
            "POST /mcp?vf_state_secret=x%2By&b=2 HTTP/1.1\r\n\
             Host: 127.0.0.1:9000\r\n\
             Authorization: Bearer tok\r\n\
             Mcp-Session-Id: abc-123\r\n\
             MCP-Protocol-Version: 2025-06-18\r\n\
             Last-Event-ID: 42\r\n\
             Mcp-Method: tools/call\r\n\
             Mcp-Name: echo\r\n\
             X-Keep: Weird  Value\r\n\
             Accept: application/json, text/event-stream\r\n\
             Content-Length: 2\r\n\
             \r\n"
        );
    }

    #[test]
    fn write_upstream_appends() {
        let (head, _) = complete(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let mut out = b"prefix".to_vec();
        head.write_upstream("u", &mut out);
        assert_eq!(out, b"prefixGET / HTTP/1.1\r\nHost: u\r\n\r\n");
        // The rewritten head parses back to the same thing.
        let (again, len) = complete(&out[6..]);
        assert_eq!(len, out.len() - 6);
        assert_eq!(again.header("host"), Some(&b"u"[..]));
    }

    #[test]
    fn query_and_path_forms() {
        let mk = |target: &str| RequestHead::with_line("GET", target);
        let h = mk("/mcp?a=1&vf_state_secret=x%2By+z&vf_state_secret=second");
        assert_eq!(h.path(), "/mcp");
        assert_eq!(h.query_param("vf_state_secret").as_deref(), Some("x+y z"));
        assert_eq!(h.query_param("a").as_deref(), Some("1"));
        assert_eq!(h.query_param("nope"), None);
        assert_eq!(mk("/mcp").query(), None);
        assert_eq!(mk("/mcp").query_param("a"), None);
        assert_eq!(mk("/mcp?").query(), Some(""));
        assert_eq!(mk("/mcp?a=&b").query_param("a").as_deref(), Some(""));
        assert_eq!(mk("/mcp?a=1#frag").query(), Some("a=1"));
        assert_eq!(mk("/mcp#frag").path(), "/mcp");
        assert_eq!(mk("http://host:1/mcp?a=1").path(), "/mcp");
        assert_eq!(mk("HTTPS://host").path(), "/");
        assert_eq!(mk("http://host?a=2").path(), "/");
        assert_eq!(mk("http://host?a=2").query_param("a").as_deref(), Some("2"));
        assert_eq!(mk("*").path(), "*");
    }

    #[test]
    fn leading_empty_lines_counted() {
        let buf = b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let (head, len) = complete(buf);
        assert_eq!(head.method(), "GET");
        assert_eq!(len, buf.len());
    }
}
