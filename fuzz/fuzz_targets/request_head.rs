//! The request head parser: any bytes, whole or split anywhere, give the
//! same answer; a parsed head rewritten for the child parses again to the
//! same method, target and framing. (The rewrite may add one field, `Host`
//! for an HTTP/1.0 request without one: at the field limit that re-parse is
//! refused as too many fields, which is checked to be the only reason.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmux_http::{parse_request, HeadAcc, HttpError, Parsed};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let whole = parse_request(input);
    // The same bytes in pieces of `cut` (1..=256) bytes, as a slow client sends them.
    let step = usize::from(cut) + 1;
    let mut acc = HeadAcc::default();
    let mut split = Ok(Parsed::Partial);
    let mut at = 0;
    for piece in input.chunks(step) {
        let prev = acc.held();
        split = acc.feed(piece, parse_request);
        match &split {
            Ok(Parsed::Partial) => at += piece.len(),
            Ok(Parsed::Complete { head_len, .. }) => {
                assert!(*head_len >= prev && *head_len - prev <= piece.len());
                break;
            }
            Err(_) => break,
        }
    }
    match (&whole, &split) {
        (Ok(Parsed::Complete { head: a, head_len: la }), Ok(Parsed::Complete { head: b, head_len: lb })) => {
            assert_eq!(a, b);
            assert_eq!(la, lb);
        }
        // Incremental parsing may report a head-size error only once the
        // limit is passed, and an error in an incomplete head only once more
        // bytes arrive; but it must never accept what the whole refuses.
        (Err(_), Ok(Parsed::Complete { .. })) => panic!("split accepted what whole refused"),
        (Ok(Parsed::Complete { .. }), Err(e)) => panic!("split refused a valid head: {e}"),
        _ => {}
    }
    let _ = at;
    if let Ok(Parsed::Complete { head, .. }) = whole {
        let mut out = Vec::new();
        head.write_upstream("127.0.0.1:1", &mut out);
        match parse_request(&out) {
            Ok(Parsed::Complete { head: again, .. }) => {
                assert_eq!(again.method(), head.method());
                assert_eq!(again.target(), head.target());
                assert_eq!(again.body, head.body);
            }
            Err(HttpError::TooManyHeaders) => {
                let fields = out.split(|&b| b == b'\n').count() - 3;
                assert!(fields <= head.headers.len() + 1, "the rewrite made {fields} fields of {}", head.headers.len());
            }
            other => panic!("rewritten head does not parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
        }
    }
});
