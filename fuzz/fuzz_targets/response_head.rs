//! The response head parser: whole or split, the same answer; a parsed head
//! rewritten for the client parses again to the same status and framing.
//! (The rewrite may add one field, `Connection: close`: at the field limit
//! that re-parse is refused as too many fields, checked to be the only
//! reason.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmux_http::{parse_response, HeadAcc, HttpError, Parsed};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let req_is_head = flags & 1 == 1;
    let keep_alive = flags & 2 == 2;
    let step = usize::from(flags >> 2) + 1;
    let whole = parse_response(input, req_is_head);
    let mut acc = HeadAcc::default();
    let mut split = Ok(Parsed::Partial);
    for piece in input.chunks(step) {
        split = acc.feed(piece, |b| parse_response(b, req_is_head));
        if !matches!(split, Ok(Parsed::Partial)) {
            break;
        }
    }
    match (&whole, &split) {
        (Ok(Parsed::Complete { head: a, head_len: la }), Ok(Parsed::Complete { head: b, head_len: lb })) => {
            assert_eq!(a, b);
            assert_eq!(la, lb);
        }
        (Err(_), Ok(Parsed::Complete { .. })) => panic!("split accepted what whole refused"),
        (Ok(Parsed::Complete { .. }), Err(e)) => panic!("split refused a valid head: {e}"),
        _ => {}
    }
    if let Ok(Parsed::Complete { head, .. }) = whole {
        let mut out = Vec::new();
        head.write_downstream(keep_alive, &mut out);
        match parse_response(&out, req_is_head) {
            Ok(Parsed::Complete { head: again, .. }) => {
                assert_eq!(again.status, head.status);
                if !head.is_informational() {
                    assert_eq!(again.body, head.body);
                }
            }
            Err(HttpError::TooManyHeaders) => {
                let fields = out.split(|&b| b == b'\n').count() - 3;
                assert!(fields <= head.headers.len() + 1, "the rewrite made {fields} fields of {}", head.headers.len());
            }
            other => panic!("rewritten head does not parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
        }
    }
});
