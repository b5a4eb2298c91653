//! The Origin / Host check: any allow-list and any header values, never a
//! panic; `*` lets any single Origin through the Origin part of the check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmux_http::origin::{OriginPolicy, Seen};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let allow: Vec<String> = parts
        .next()
        .map(|a| String::from_utf8_lossy(a).split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let host = parts.next();
    let origin = parts.next();
    let fetch_site = parts.next();
    let flags = parts.next().and_then(|f| f.first().copied()).unwrap_or(0);
    let seen = Seen {
        host,
        origin,
        origins: usize::from(origin.is_some()) + usize::from(flags & 1),
        fetch_site,
    };
    let loopback = flags & 2 == 2;
    if let Ok(policy) = OriginPolicy::new(&allow, loopback) {
        let _ = policy.check(&seen);
    }
    let any = OriginPolicy::new(&["*".to_string()], false).expect("* is valid");
    if seen.origins == 1 {
        assert!(any.check(&seen).is_ok(), "* refused {seen:?}");
    }
});
