//! Hop-by-hop header logic: which header fields describe only the current
//! connection (RFC 9110 §7.6.1) and so must not be forwarded by the proxy.
//!
//! The fixed set is `Connection`, `Keep-Alive`, `Transfer-Encoding`, `TE`,
//! `Trailer`, `Upgrade`, `Proxy-Connection` and every `Proxy-*` field
//! (`Proxy-Authenticate`, `Proxy-Authorization`, ...), plus whatever the
//! message's own `Connection` header(s) name. `Content-Length` is not
//! hop-by-hop, but the rewriters re-emit framing themselves and drop the
//! original. Everything else (including the MCP headers `Mcp-Session-Id`,
//! `MCP-Protocol-Version`, `Last-Event-ID`, `Authorization`, `Accept`, `X-*`)
//! is end-to-end and passes unchanged.

/// Header names that are always hop-by-hop (lowercase).
const ALWAYS: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

/// Whether the header `name` is hop-by-hop for a message whose `Connection`
/// header(s) listed `connection_tokens` (as returned by [`connection_tokens`];
/// compared case-insensitively either way).
pub fn is_hop_by_hop(name: &str, connection_tokens: &[String]) -> bool {
    ALWAYS.iter().any(|h| name.eq_ignore_ascii_case(h))
        || is_proxy_field(name)
        || connection_tokens
            .iter()
            .any(|t| name.eq_ignore_ascii_case(t))
}

/// `Proxy-*`: covers Proxy-Connection, Proxy-Authenticate,
/// Proxy-Authorization and any other proxy-scoped field.
fn is_proxy_field(name: &str) -> bool {
    name.len() >= 6 && name.as_bytes()[..6].eq_ignore_ascii_case(b"proxy-")
}

/// The lowercased options listed by every `Connection` header of a message
/// (comma-separated, whitespace-trimmed, empty elements skipped).
pub fn connection_tokens(headers: &crate::Headers) -> Vec<String> {
    super::list_elements(headers, "connection")
        .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(list: &[(&str, &str)]) -> crate::Headers {
        crate::Headers::from_pairs(list)
    }

    #[test]
    fn fixed_set() {
        for name in [
            "Connection",
            "keep-alive",
            "Keep-Alive",
            "Transfer-Encoding",
            "TE",
            "te",
            "Trailer",
            "Upgrade",
            "Proxy-Connection",
            "Proxy-Authenticate",
            "proxy-authorization",
            "PROXY-Whatever",
        ] {
            assert!(is_hop_by_hop(name, &[]), "{name}");
        }
    }

    #[test]
    fn end_to_end() {
        for name in [
            "Mcp-Session-Id",
            "MCP-Protocol-Version",
            "Last-Event-ID",
            "Mcp-Method",
            "Mcp-Name",
            "Authorization",
            "Accept",
            "X-Forwarded-For",
            "Content-Length",
            "Content-Type",
            "Host",
            "Proxy",
            "proxy",
            "Trailers",
            "Tea",
        ] {
            assert!(!is_hop_by_hop(name, &[]), "{name}");
        }
    }

    #[test]
    fn connection_named() {
        let headers = hs(&[
            ("Connection", "keep-alive, X-Secret ,,"),
            ("Accept", "*/*"),
            ("connection", "Mcp-Name"),
        ]);
        let tokens = connection_tokens(&headers);
        assert_eq!(tokens, vec!["keep-alive", "x-secret", "mcp-name"]);
        assert!(is_hop_by_hop("x-secret", &tokens));
        assert!(is_hop_by_hop("X-SECRET", &tokens));
        assert!(is_hop_by_hop("Mcp-Name", &tokens));
        assert!(!is_hop_by_hop("Mcp-Session-Id", &tokens));
        assert!(!is_hop_by_hop("X-Other", &tokens));
    }

    #[test]
    fn no_connection_header() {
        assert!(connection_tokens(&hs(&[("Accept", "a, b")])).is_empty());
    }
}
