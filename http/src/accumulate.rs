//! Heads that arrive in pieces: [`HeadAcc`] keeps what came so far and runs
//! the parser again only once the empty line that ends a head may have
//! arrived, so a head dribbled a byte at a time costs time linear in its
//! size, not quadratic (each re-parse starts from the first byte).

use super::{HttpError, Parsed, MAX_HEAD};

/// The bytes of a head received so far (empty between heads).
#[derive(Debug, Default)]
pub struct HeadAcc {
    bytes: Vec<u8>,
    /// Full parses run (for the tests that prove the above).
    parses: usize,
}

impl HeadAcc {
    /// Bytes held: how much of the head came before the next piece.
    pub fn held(&self) -> usize {
        self.bytes.len()
    }

    /// Forgets the held bytes (keeps the allocation for the next head).
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// How many times `feed` ran the parser.
    #[cfg(test)]
    pub fn parses(&self) -> usize {
        self.parses
    }

    /// Adds the next received `piece` and parses what is held when it can
    /// be complete: at once for the first piece of a head (so garbage is
    /// refused at once), later only when the piece brought a line end
    /// followed by an empty line (or the limit is passed, to refuse it).
    ///
    /// On `Complete { head_len }`, the head's bytes in `piece` are the first
    /// `head_len - held()` (with `held()` read before this call). The caller
    /// clears the accumulator after `Complete` or an error.
    pub fn feed<T>(
        &mut self,
        piece: &[u8],
        parse: impl FnOnce(&[u8]) -> Result<Parsed<T>, HttpError>,
    ) -> Result<Parsed<T>, HttpError> {
        let prev = self.bytes.len();
        if prev == 0 {
            self.parses += 1;
            let r = parse(piece);
            if let Ok(Parsed::Partial) = r {
                self.bytes.extend_from_slice(piece);
            }
            return r;
        }
        self.bytes.extend_from_slice(piece);
        if self.bytes.len() <= MAX_HEAD && !may_end(&self.bytes, prev) {
            return Ok(Parsed::Partial);
        }
        self.parses += 1;
        parse(&self.bytes)
    }
}

/// Whether `buf` holds an LF followed by an empty line (`LF LF` or
/// `LF CR LF`) that ends at or after `from`: only then can a head that was
/// incomplete at `from` bytes be complete now. Scans from three bytes before
/// `from`, so a terminator split across pieces is found.
pub fn may_end(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(3);
    let region = &buf[start..];
    region.iter().enumerate().any(|(i, &b)| {
        b == b'\n'
            && match region.get(i + 1) {
                Some(b'\n') => true,
                Some(b'\r') => region.get(i + 2) == Some(&b'\n'),
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_request, parse_response};

    fn big_head(fields: usize) -> Vec<u8> {
        let mut h = b"POST /mcp?vf_state_secret=k HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..fields {
            h.extend_from_slice(format!("X-Field-{i}: {}\r\n", "v".repeat(400)).as_bytes());
        }
        h.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        h
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_is_parsed_a_constant_number_of_times() {
        let head = big_head(100); // ~41 KiB, under MAX_HEAD and MAX_HEADERS
        let mut acc = HeadAcc::default();
        let mut done = None;
        for (i, b) in head.iter().enumerate() {
            match acc.feed(std::slice::from_ref(b), parse_request) {
                Ok(Parsed::Partial) => {}
                Ok(Parsed::Complete { head, head_len }) => {
                    done = Some((i, head, head_len));
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let (i, parsed, head_len) = done.expect("the head completes");
        assert_eq!(i, head.len() - 1, "completes on its last byte");
        assert_eq!(head_len, head.len());
        assert_eq!(parsed.headers.len(), 102);
        // The first byte, and the final empty line: nothing in between.
        assert_eq!(acc.parses(), 2);
    }

    #[test]
    fn lines_that_end_without_an_empty_line_do_not_trigger_a_parse() {
        let mut acc = HeadAcc::default();
        let _ = acc.feed(b"GET / HTTP/1.1\r\n", parse_request);
        for _ in 0..100 {
            assert_eq!(acc.feed(b"A: b\r\n", parse_request), Ok(Parsed::Partial));
        }
        assert_eq!(acc.parses(), 1);
        let r = acc.feed(b"Host: h\r\n\r\n", parse_request);
        assert!(matches!(r, Ok(Parsed::Complete { .. })), "{r:?}");
        assert_eq!(acc.parses(), 2);
    }

    #[test]
    fn a_terminator_split_over_pieces_is_found() {
        for cut in 1..4 {
            let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
            let (a, b) = whole.split_at(whole.len() - cut);
            let mut acc = HeadAcc::default();
            let first = acc.feed(&whole[..10], |x| parse_response(x, false));
            assert_eq!(first, Ok(Parsed::Partial));
            assert_eq!(
                acc.feed(&a[10..], |x| parse_response(x, false)),
                Ok(Parsed::Partial)
            );
            let prev = acc.held();
            match acc.feed(b, |x| parse_response(x, false)) {
                Ok(Parsed::Complete { head_len, .. }) => assert_eq!(head_len - prev, cut),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn bare_lf_heads_and_the_limit_still_end_a_head() {
        assert!(may_end(b"GET / HTTP/1.1\nHost: h\n\n", 10));
        assert!(may_end(b"a\n\r\n", 4));
        assert!(!may_end(b"a\r\nb\r\n", 0));
        // A head that never ends is refused once past the limit, not held.
        let mut acc = HeadAcc::default();
        let _ = acc.feed(b"GET / HTTP/1.1\r\n", parse_request);
        let line = format!("X: {}\r\n", "v".repeat(1000));
        let mut last = Ok(Parsed::Partial);
        for _ in 0..70 {
            last = acc.feed(line.as_bytes(), parse_request);
            if last.is_err() {
                break;
            }
        }
        assert_eq!(last, Err(HttpError::HeadTooLarge));
    }
}
