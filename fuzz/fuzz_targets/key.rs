//! Key extraction from a request target's query: never panics, and a plain
//! first value comes back as written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmux_http::query::{decode, query_param};

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let got = query_param(query, "vf_state_secret");
    let _ = decode(query);
    // `vf_state_secret=<plain>` first: exactly that value.
    if let Some(rest) = query.strip_prefix("vf_state_secret=") {
        let value = rest.split('&').next().unwrap_or("");
        if value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            assert_eq!(got.as_deref(), Some(value));
        }
    }
});
