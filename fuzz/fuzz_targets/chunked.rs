//! Chunked framing, as a request body (with a payload limit) and as a
//! response body: however the stream is split, the tracker finds the same
//! end (or the same failure), and a limited body never passes its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmux_http::{BodyKind, BodyTracker};

fn run(t: &mut BodyTracker, input: &[u8], step: usize) -> Result<usize, ringmux_http::HttpError> {
    let mut used = 0;
    for piece in input.chunks(step) {
        let n = t.feed(piece)?;
        assert!(n <= piece.len());
        used += n;
        if t.is_done() {
            break;
        }
        assert_eq!(n, piece.len(), "stopped early without being done");
    }
    Ok(used)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let step = usize::from(data[0]) + 1;
    let limit = u64::from(u16::from_le_bytes([data[1], data[2]]));
    let input = &data[3..];
    // Response direction: no limit.
    let mut whole = BodyTracker::new(BodyKind::Chunked);
    let a = whole.feed(input);
    let mut split = BodyTracker::new(BodyKind::Chunked);
    let b = run(&mut split, input, step);
    match (&a, &b) {
        (Ok(x), Ok(y)) => {
            if whole.is_done() || split.is_done() {
                assert_eq!(x, y);
                assert_eq!(whole.is_done(), split.is_done());
            }
        }
        (Err(x), Err(y)) => assert_eq!(x, y),
        _ => panic!("whole {a:?} vs split {b:?}"),
    }
    // Request direction: with a payload limit.
    let mut limited = BodyTracker::new(BodyKind::Chunked).with_limit(limit);
    if let Ok(n) = run(&mut limited, input, step) {
        if limited.is_done() {
            let payload = payload_len(&input[..n]);
            assert!(payload <= limit, "payload {payload} over the limit {limit}");
        }
    }
});

/// Sum of the chunk sizes of a complete, valid chunked body.
fn payload_len(body: &[u8]) -> u64 {
    let mut total = 0u64;
    let mut rest = body;
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return total;
        };
        let line = &rest[..eol];
        let digits: Vec<u8> = line.iter().copied().take_while(|b| b.is_ascii_hexdigit()).collect();
        let size = u64::from_str_radix(std::str::from_utf8(&digits).unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            return total;
        }
        total += size;
        let skip = eol + 2 + size as usize + 2;
        if skip > rest.len() {
            return total;
        }
        rest = &rest[skip..];
    }
}
