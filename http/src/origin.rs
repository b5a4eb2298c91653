//! DNS-rebinding protection for ringmux's own listener: which `Origin` and
//! `Host` headers a request may carry (pure: header values in, a verdict out).
//!
//! A web page the user visits can make the browser send requests to
//! `127.0.0.1:PORT` under a hostile name it controls (DNS rebinding), or
//! straight from its own origin. The MCP transport rules say a server must
//! check `Origin`; ringmux checks it *before* a request is routed, so a refused
//! request never starts a child or closes a rollout. The rules:
//!
//! - **`Origin`** (sent by browsers, not by SDK clients): allowed if it equals
//!   one of `--allow-origin` (scheme, host and port, case-insensitive), or, when
//!   no `--allow-origin` is given, if it is a loopback origin
//!   (`http(s)://localhost|127.0.0.1|[::1]`, any port). `--allow-origin '*'`
//!   turns the check off. A request without `Origin` passes this check, and
//!   so does a request with more than one `Origin` header: it is refused.
//! - **`Sec-Fetch-Site`** (sent by browsers to `http://localhost` and
//!   `http://127.0.0.1`, never by SDKs or curl): `cross-site` or `same-site`
//!   is refused unless the request also carries an allowed `Origin`. This stops
//!   the requests a page can make without an `Origin` header, such as an
//!   `<img>` GET that would start a child per made-up key or close a rollout.
//! - **`Host`**, only when ringmux listens on a loopback address: its host part
//!   must be a loopback name (`localhost`, `127.0.0.1`, `[::1]`, any port) or
//!   the host of an allowed origin. A rebinding page's requests carry its own
//!   name here. Requests without `Host` (HTTP/1.0) pass.
//!
//! Children never see refused requests. ringmux rewrites `Host` for the child,
//! so a child's own Host check cannot do this job behind the proxy.

use std::fmt;

/// What the listener accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Normalised allowed origins (`scheme://host[:port]`, lowercase); empty:
    /// loopback origins only.
    allowed: Vec<String>,
    /// `--allow-origin '*'`: no Origin check.
    any_origin: bool,
    /// Check `Host` (the listener is on a loopback address).
    check_host: bool,
}

/// The request headers the policy looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    /// The `Host` value.
    pub host: Option<&'a [u8]>,
    /// The first `Origin` value.
    pub origin: Option<&'a [u8]>,
    /// How many `Origin` headers the request has.
    pub origins: usize,
    /// The `Sec-Fetch-Site` value.
    pub fetch_site: Option<&'a [u8]>,
}

/// Why a request was refused (the 403 body names it, never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Origin` is not allowed (or given twice).
    Origin,
    /// `Host` is not a loopback name (loopback listener).
    Host,
    /// A browser says the request comes from another site, without an
    /// allowed `Origin`.
    CrossSite,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Origin => "Origin not allowed (see --allow-origin)",
            Refusal::Host => {
                "Host is not a loopback name (DNS-rebinding protection; see --allow-origin)"
            }
            Refusal::CrossSite => {
                "cross-site browser request without an allowed Origin (see --allow-origin)"
            }
        })
    }
}

/// A bad `--allow-origin` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--allow-origin {0:?}: expected `*` or scheme://host[:port] (e.g. http://localhost:3000)")]
pub struct BadOrigin(pub String);

impl OriginPolicy {
    /// A policy from the `--allow-origin` values; `loopback_listener` turns on
    /// the Host check.
    pub fn new(allow: &[String], loopback_listener: bool) -> Result<OriginPolicy, BadOrigin> {
        let mut allowed = Vec::new();
        let mut any_origin = false;
        for a in allow {
            if a == "*" {
                any_origin = true;
                continue;
            }
            match normalise_origin(a) {
                Some(o) => allowed.push(o),
                None => return Err(BadOrigin(a.clone())),
            }
        }
        Ok(OriginPolicy {
            allowed,
            any_origin,
            check_host: loopback_listener,
        })
    }

    /// The same rules for another listener (`loopback`: check Host).
    pub fn for_listener(&self, loopback: bool) -> OriginPolicy {
        OriginPolicy {
            check_host: loopback,
            ..self.clone()
        }
    }

    /// The verdict for one request's headers.
    pub fn check(&self, seen: &Seen<'_>) -> Result<(), Refusal> {
        if seen.origins > 1 {
            return Err(Refusal::Origin);
        }
        let origin_ok = match seen.origin {
            Some(origin) => {
                if !self.any_origin && !self.origin_allowed(origin) {
                    return Err(Refusal::Origin);
                }
                true
            }
            None => false,
        };
        if !self.any_origin && !origin_ok {
            if let Some(site) = seen.fetch_site {
                let site = site.trim_ascii();
                if site.eq_ignore_ascii_case(b"cross-site")
                    || site.eq_ignore_ascii_case(b"same-site")
                {
                    return Err(Refusal::CrossSite);
                }
            }
        }
        if self.check_host {
            if let Some(host) = seen.host {
                if !self.host_allowed(host) {
                    return Err(Refusal::Host);
                }
            }
        }
        Ok(())
    }

    fn origin_allowed(&self, origin: &[u8]) -> bool {
        let Some(o) = std::str::from_utf8(origin).ok().and_then(normalise_origin) else {
            return false; // "null", garbage: refused
        };
        if self.allowed.is_empty() {
            return origin_host(&o).is_some_and(is_loopback_name);
        }
        self.allowed.contains(&o)
    }

    fn host_allowed(&self, host: &[u8]) -> bool {
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        let Some(name) = host_name(host.trim()) else {
            return false;
        };
        is_loopback_name(name)
            || self
                .allowed
                .iter()
                .any(|a| origin_host(a).is_some_and(|h| h.eq_ignore_ascii_case(name)))
    }
}

/// `scheme://host[:port]` lowercased, without a trailing `/`; `None` if it is
/// not of that shape (a path, query, user info or empty host).
fn normalise_origin(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = s.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    host_name(rest)?;
    // A browser leaves the scheme's default port out of `Origin`.
    let s = match (scheme, rest.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => format!("{scheme}://{h}"),
        _ => s.clone(),
    };
    Some(s)
}

/// The host part of a normalised origin.
fn origin_host(origin: &str) -> Option<&str> {
    host_name(origin.split_once("://")?.1)
}

/// The host part of `host[:port]` or `[v6][:port]`; `None` if malformed.
fn host_name(authority: &str) -> Option<&str> {
    let name = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        &authority[..end + 2]
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if is_port(p) => h,
            Some(_) => return None,
            None => authority,
        }
    };
    (!name.is_empty()).then_some(name)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Case-insensitive, without allocating (it runs on every request).
fn is_loopback_name(name: &str) -> bool {
    const SUFFIX: &str = ".localhost";
    name.eq_ignore_ascii_case("localhost")
        || (name.len() > SUFFIX.len()
            && name.is_char_boundary(name.len() - SUFFIX.len())
            && name[name.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX))
        || name == "[::1]"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(allow: &[&str], loopback: bool) -> OriginPolicy {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        OriginPolicy::new(&allow, loopback).expect("valid policy")
    }

    fn check(pol: &OriginPolicy, host: Option<&str>, origin: Option<&str>) -> Result<(), Refusal> {
        pol.check(&Seen {
            host: host.map(str::as_bytes),
            origin: origin.map(str::as_bytes),
            origins: usize::from(origin.is_some()),
            fetch_site: None,
        })
    }

    fn fetch(pol: &OriginPolicy, origin: Option<&str>, site: &str) -> Result<(), Refusal> {
        pol.check(&Seen {
            host: Some(b"127.0.0.1:8000"),
            origin: origin.map(str::as_bytes),
            origins: usize::from(origin.is_some()),
            fetch_site: Some(site.as_bytes()),
        })
    }

    #[test]
    fn browser_requests_without_origin() {
        let pol = p(&[], true);
        // An <img> GET from another site: no Origin, Sec-Fetch-Site says so.
        assert_eq!(fetch(&pol, None, "cross-site"), Err(Refusal::CrossSite));
        assert_eq!(fetch(&pol, None, "Same-Site"), Err(Refusal::CrossSite));
        assert_eq!(fetch(&pol, None, "same-origin"), Ok(()));
        assert_eq!(fetch(&pol, None, "none"), Ok(()));
        // A cross-site request with an allowed Origin is fine.
        assert_eq!(
            fetch(&pol, Some("http://localhost:3000"), "cross-site"),
            Ok(())
        );
        assert_eq!(
            fetch(&pol, Some("http://evil.example"), "cross-site"),
            Err(Refusal::Origin)
        );
        assert_eq!(fetch(&p(&["*"], true), None, "cross-site"), Ok(()));
        // Two Origin headers.
        let two = Seen {
            host: Some(b"127.0.0.1"),
            origin: Some(b"http://localhost"),
            origins: 2,
            fetch_site: None,
        };
        assert_eq!(pol.check(&two), Err(Refusal::Origin));
    }

    #[test]
    fn default_ports_match_what_browsers_send() {
        let pol = p(&["http://app.example:80", "https://ui.example:443"], true);
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("http://app.example")),
            Ok(())
        );
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("https://ui.example")),
            Ok(())
        );
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("http://app.example:80")),
            Ok(())
        );
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("https://app.example")),
            Err(Refusal::Origin)
        );
    }

    #[test]
    fn default_loopback_listener() {
        let pol = p(&[], true);
        // SDK clients: no Origin, loopback Host.
        assert_eq!(check(&pol, Some("127.0.0.1:8000"), None), Ok(()));
        assert_eq!(check(&pol, Some("localhost:8000"), None), Ok(()));
        assert_eq!(check(&pol, Some("[::1]:8000"), None), Ok(()));
        assert_eq!(check(&pol, Some("LOCALHOST"), None), Ok(()));
        assert_eq!(check(&pol, None, None), Ok(()));
        // Browser on a loopback page.
        assert_eq!(
            check(&pol, Some("localhost:8000"), Some("http://localhost:3000")),
            Ok(())
        );
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("https://127.0.0.1")),
            Ok(())
        );
        // DNS rebinding: the attacker's name in Host and Origin.
        assert_eq!(
            check(
                &pol,
                Some("evil.example.com"),
                Some("http://evil.example.com")
            ),
            Err(Refusal::Origin)
        );
        assert_eq!(
            check(&pol, Some("evil.example.com:8000"), None),
            Err(Refusal::Host)
        );
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("null")),
            Err(Refusal::Origin)
        );
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("http://localhost.evil.com")),
            Err(Refusal::Origin)
        );
        assert_eq!(check(&pol, Some("127.0.0.2"), None), Ok(()));
        assert_eq!(
            check(&pol, Some("127.0.0.1:notaport"), None),
            Err(Refusal::Host)
        );
        assert_eq!(check(&pol, Some(""), None), Err(Refusal::Host));
    }

    #[test]
    fn allow_list() {
        let pol = p(&["https://App.Example.com", "http://localhost:3000/"], true);
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("https://app.example.com")),
            Ok(())
        );
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("http://localhost:3000")),
            Ok(())
        );
        // The list replaces the loopback default for Origin.
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("http://localhost:3001")),
            Err(Refusal::Origin)
        );
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("http://app.example.com")),
            Err(Refusal::Origin)
        );
        // An allowed origin's host is an allowed Host.
        assert_eq!(check(&pol, Some("app.example.com:443"), None), Ok(()));
        assert_eq!(
            check(&pol, Some("other.example.com"), None),
            Err(Refusal::Host)
        );
    }

    #[test]
    fn wildcard_and_public_listener() {
        let pol = p(&["*"], true);
        assert_eq!(
            check(&pol, Some("127.0.0.1"), Some("http://anything.example")),
            Ok(())
        );
        assert_eq!(check(&pol, Some("evil.example"), None), Err(Refusal::Host));
        // Not on loopback: Host is not checked (clients use the node's name).
        let pol = p(&[], false);
        assert_eq!(check(&pol, Some("node17.cluster:8000"), None), Ok(()));
        assert_eq!(
            check(
                &pol,
                Some("node17.cluster:8000"),
                Some("http://evil.example")
            ),
            Err(Refusal::Origin)
        );
        assert_eq!(
            check(&p(&["*"], false), Some("x"), Some("http://evil.example")),
            Ok(())
        );
    }

    #[test]
    fn bad_values() {
        for bad in [
            "localhost:3000",
            "http://",
            "http://a/b",
            "http://u@h",
            "://h",
            "http://h:99999999",
        ] {
            assert!(
                OriginPolicy::new(&[bad.to_string()], true).is_err(),
                "{bad}"
            );
        }
        assert!(OriginPolicy::new(&["http://[::1]:3000".to_string()], true).is_ok());
    }
}
