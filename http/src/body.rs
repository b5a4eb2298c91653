//! Body framing: [`BodyTracker`] finds where a message body ends as the
//! bytes stream past, without copying or altering them (the caller forwards
//! them verbatim). Handles Content-Length, chunked (with chunk extensions and
//! trailers, strictly CRLF-terminated so we never disagree with a strict
//! upstream about where the body ends) and close-delimited bodies.

use super::{BodyKind, HttpError};

/// Longest chunk-size line (size, extensions and CRLF) we accept.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section (including the final empty line) we accept.
pub const MAX_TRAILERS: usize = 64 * 1024;

/// Tracks the end of one message body across arbitrary splits of the stream.
#[derive(Debug, Clone)]
pub struct BodyTracker {
    state: State,
    /// Chunked: payload bytes still allowed (see [`BodyTracker::with_limit`]).
    budget: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Done,
    Failed(&'static str),
    /// A chunk would take the payload past the limit.
    TooLarge,
    /// Close-delimited: everything belongs to the body.
    Close,
    /// Content-Length: this many bytes left.
    Length(u64),
    /// Chunked, at the start of a chunk-size line (`line` bytes seen).
    SizeStart {
        line: usize,
    },
    /// Inside the hex digits.
    Size {
        size: u64,
        line: usize,
    },
    /// After the digits: whitespace, then optionally `;` extensions.
    SizeRest {
        size: u64,
        line: usize,
        ext: bool,
    },
    /// Saw the CR ending the size line.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart {
        total: usize,
    },
    /// Inside a trailer field line.
    TrailerLine {
        total: usize,
    },
    /// Saw the CR ending a trailer field line.
    TrailerLf {
        total: usize,
    },
    /// Saw the CR of the final empty line.
    EndLf,
}

impl BodyTracker {
    pub fn new(kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::None | BodyKind::Length(0) => State::Done,
            BodyKind::Length(n) => State::Length(n),
            BodyKind::Chunked => State::SizeStart { line: 0 },
            BodyKind::CloseDelimited => State::Close,
        };
        BodyTracker {
            state,
            budget: u64::MAX,
        }
    }

    /// Caps a chunked body's payload at `max` bytes: a chunk-size line that
    /// would go past it fails with [`HttpError::BodyTooLarge`] before any of
    /// that chunk's data is counted as body (so the caller forwards none of
    /// it). A Content-Length body is the caller's to check against its head.
    pub fn with_limit(mut self, max: u64) -> Self {
        self.budget = max;
        self
    }

    /// Whether the whole body (including any chunked trailer section) has
    /// been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the body ends only when the connection closes.
    pub fn is_close_delimited(&self) -> bool {
        self.state == State::Close
    }

    /// Feeds the next bytes of the stream, which may extend past the end of
    /// this body. Returns how many leading bytes of `data` belong to the body
    /// (framing and trailers included). After an error every further call
    /// fails the same way.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, HttpError> {
        match self.state {
            State::Failed(why) => return Err(HttpError::BadChunk(why)),
            State::TooLarge => return Err(HttpError::BodyTooLarge),
            _ => {}
        }
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Done => break,
                State::Close => i = data.len(),
                State::Length(left) => {
                    let take = take(left, data.len() - i);
                    i += take;
                    self.state = match left - take as u64 {
                        0 => State::Done,
                        rest => State::Length(rest),
                    };
                }
                State::Data(left) => {
                    let take = take(left, data.len() - i);
                    i += take;
                    self.state = match left - take as u64 {
                        0 => State::DataCr,
                        rest => State::Data(rest),
                    };
                }
                State::TrailerLine { total } => {
                    // Scan a run of field bytes at once.
                    let rest = &data[i..];
                    let run = rest
                        .iter()
                        .position(|&b| !is_field_byte(b))
                        .unwrap_or(rest.len());
                    let total = total + run;
                    if total > MAX_TRAILERS {
                        return Err(self.fail("trailer section too large"));
                    }
                    i += run;
                    self.state = State::TrailerLine { total };
                    if let Some(&b) = data.get(i) {
                        i += 1;
                        self.step(b)?;
                    }
                }
                _ => {
                    let b = data[i];
                    i += 1;
                    self.step(b)?;
                }
            }
        }
        Ok(i)
    }

    fn fail(&mut self, why: &'static str) -> HttpError {
        self.state = State::Failed(why);
        HttpError::BadChunk(why)
    }

    /// Advances the chunked state machine by one byte.
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        let next = match self.state {
            State::SizeStart { line } => match hex_value(b) {
                Some(d) => State::Size {
                    size: u64::from(d),
                    line: line + 1,
                },
                None => return Err(self.fail("chunk size is not hex")),
            },
            State::Size { size, line } => {
                let line = line + 1;
                if line > MAX_CHUNK_LINE {
                    return Err(self.fail("chunk-size line too long"));
                }
                match hex_value(b) {
                    Some(d) => {
                        if size > u64::MAX >> 4 {
                            return Err(self.fail("chunk size overflows"));
                        }
                        State::Size {
                            size: size << 4 | u64::from(d),
                            line,
                        }
                    }
                    None => self.after_size(b, size, line, false)?,
                }
            }
            State::SizeRest { size, line, ext } => {
                let line = line + 1;
                if line > MAX_CHUNK_LINE {
                    return Err(self.fail("chunk-size line too long"));
                }
                self.after_size(b, size, line, ext)?
            }
            State::SizeLf { size } => match (b, size) {
                (b'\n', 0) => State::TrailerStart { total: 0 },
                (b'\n', n) if n > self.budget => {
                    self.state = State::TooLarge;
                    return Err(HttpError::BodyTooLarge);
                }
                (b'\n', n) => {
                    self.budget -= n;
                    State::Data(n)
                }
                _ => return Err(self.fail("chunk-size line: CR without LF")),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(self.fail("missing CRLF after chunk data")),
            },
            State::DataLf => match b {
                b'\n' => State::SizeStart { line: 0 },
                _ => return Err(self.fail("missing CRLF after chunk data")),
            },
            State::TrailerStart { total } => {
                let total = total + 1;
                if total > MAX_TRAILERS {
                    return Err(self.fail("trailer section too large"));
                }
                match b {
                    b'\r' => State::EndLf,
                    b' ' | b'\t' => return Err(self.fail("obsolete line folding in trailers")),
                    b if is_field_byte(b) => State::TrailerLine { total },
                    _ => return Err(self.fail("invalid byte in trailer")),
                }
            }
            State::TrailerLine { total } => {
                let total = total + 1;
                if total > MAX_TRAILERS {
                    return Err(self.fail("trailer section too large"));
                }
                match b {
                    b'\r' => State::TrailerLf { total },
                    b if is_field_byte(b) => State::TrailerLine { total },
                    _ => return Err(self.fail("invalid byte in trailer")),
                }
            }
            State::TrailerLf { total } => match b {
                b'\n' => State::TrailerStart { total: total + 1 },
                _ => return Err(self.fail("trailer line: CR without LF")),
            },
            State::EndLf => match b {
                b'\n' => State::Done,
                _ => return Err(self.fail("trailer section: CR without LF")),
            },
            // Handled in `feed`; never stepped byte-wise.
            State::Done
            | State::Failed(_)
            | State::TooLarge
            | State::Close
            | State::Length(_)
            | State::Data(_) => self.state,
        };
        self.state = next;
        Ok(())
    }

    /// A byte of the size line after the digits: BWS, `;` extensions, CR.
    fn after_size(&mut self, b: u8, size: u64, line: usize, ext: bool) -> Result<State, HttpError> {
        match b {
            b'\r' => Ok(State::SizeLf { size }),
            b';' => Ok(State::SizeRest {
                size,
                line,
                ext: true,
            }),
            b' ' | b'\t' => Ok(State::SizeRest { size, line, ext }),
            b if ext && is_field_byte(b) => Ok(State::SizeRest { size, line, ext }),
            b'\n' => Err(self.fail("bare LF in chunk-size line")),
            _ => Err(self.fail("invalid byte in chunk-size line")),
        }
    }
}

/// Visible characters, SP, HTAB and obs-text: anything but CTLs.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `min(left, avail)` without lossy casts.
fn take(left: u64, avail: usize) -> usize {
    usize::try_from(left).map_or(avail, |l| l.min(avail))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic PRNG (xorshift64*), so tests need no crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const CHUNKED: &[u8] = b"5;name=value;flag\r\nhello\r\n\
        1A ; quoted=\"a b\"\r\nabcdefghijklmnopqrstuvwxyz\r\n\
        000\r\n\
        Expires: never\r\n\
        X-Checksum: abc\r\n\
        \r\n";
    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn a_chunked_body_over_its_limit_fails_before_the_chunk_that_crosses_it() {
        // 5 + 26 = 31 payload bytes: a limit of 31 passes, 30 fails at the
        // second chunk's size line, before any of its data is body.
        let mut ok = BodyTracker::new(BodyKind::Chunked).with_limit(31);
        assert_eq!(ok.feed(CHUNKED), Ok(CHUNKED.len()));
        assert!(ok.is_done());
        let mut t = BodyTracker::new(BodyKind::Chunked).with_limit(30);
        assert_eq!(t.feed(&CHUNKED[..10]), Ok(10));
        assert_eq!(t.feed(&CHUNKED[10..]), Err(HttpError::BodyTooLarge));
        assert_eq!(
            t.feed(b"x"),
            Err(HttpError::BodyTooLarge),
            "the failure sticks"
        );
        assert_eq!(HttpError::BodyTooLarge.status(), 413);
    }

    fn stream() -> Vec<u8> {
        [CHUNKED, NEXT].concat()
    }

    /// Feeds `pieces` in order; returns total consumed and whether done.
    fn feed_all(kind: BodyKind, pieces: &[&[u8]]) -> Result<(usize, bool), HttpError> {
        let mut t = BodyTracker::new(kind);
        let mut total = 0;
        for piece in pieces {
            let n = t.feed(piece)?;
            assert!(n <= piece.len());
            total += n;
            if n < piece.len() {
                assert!(t.is_done(), "stopped early without being done");
            }
            if t.is_done() {
                break;
            }
        }
        Ok((total, t.is_done()))
    }

    #[test]
    fn chunked_whole() {
        let s = stream();
        assert_eq!(
            feed_all(BodyKind::Chunked, &[&s]),
            Ok((CHUNKED.len(), true))
        );
    }

    #[test]
    fn chunked_every_split_point() {
        let s = stream();
        for cut in 0..=s.len() {
            let (a, b) = s.split_at(cut);
            assert_eq!(
                feed_all(BodyKind::Chunked, &[a, b]),
                Ok((CHUNKED.len(), true)),
                "cut at {cut}"
            );
        }
        // Every pair of split points too.
        for x in 0..=s.len() {
            for y in x..=s.len() {
                let pieces = [&s[..x], &s[x..y], &s[y..]];
                assert_eq!(
                    feed_all(BodyKind::Chunked, &pieces),
                    Ok((CHUNKED.len(), true)),
                    "cuts at {x},{y}"
                );
            }
        }
    }

    #[test]
    fn chunked_one_byte_at_a_time() {
        let s = stream();
        let mut t = BodyTracker::new(BodyKind::Chunked);
        let mut total = 0;
        for (i, byte) in s.iter().enumerate() {
            let n = t.feed(std::slice::from_ref(byte)).unwrap();
            total += n;
            assert_eq!(t.is_done(), i + 1 >= CHUNKED.len(), "byte {i}");
            assert_eq!(n, usize::from(i < CHUNKED.len()));
        }
        assert_eq!(total, CHUNKED.len());
        // Done trackers consume nothing more.
        assert_eq!(t.feed(b"more"), Ok(0));
    }

    #[test]
    fn empty_feeds_are_harmless() {
        let mut t = BodyTracker::new(BodyKind::Chunked);
        assert_eq!(t.feed(b""), Ok(0));
        assert_eq!(t.feed(b"0\r"), Ok(2));
        assert_eq!(t.feed(b""), Ok(0));
        assert_eq!(t.feed(b"\n\r\nX"), Ok(3));
        assert!(t.is_done());
    }

    fn random_chunked(rng: &mut Rng) -> Vec<u8> {
        let mut body = Vec::new();
        for _ in 0..rng.below(6) {
            let size = 1 + rng.below(300);
            if rng.below(2) == 0 {
                body.extend_from_slice(format!("{size:x}").as_bytes());
            } else {
                body.extend_from_slice(format!("{:0>4X}", size).as_bytes());
            }
            for _ in 0..rng.below(3) {
                body.extend_from_slice(b" ;ext");
                if rng.below(2) == 0 {
                    body.extend_from_slice(format!("={}", rng.next()).as_bytes());
                }
            }
            body.extend_from_slice(b"\r\n");
            // Data deliberately full of framing-looking bytes.
            for _ in 0..size {
                body.push(b"0\r\n;: aZ"[rng.below(8)]);
            }
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0");
        if rng.below(2) == 0 {
            body.extend_from_slice(b";last=1");
        }
        body.extend_from_slice(b"\r\n");
        for i in 0..rng.below(3) {
            body.extend_from_slice(format!("X-T{i}: v {}\r\n", rng.next()).as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body
    }

    fn random_pieces<'a>(rng: &mut Rng, s: &'a [u8]) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < s.len() {
            let len = match rng.below(4) {
                0 => 1,
                1 => rng.below(8),
                _ => rng.below(200),
            }
            .min(s.len() - at);
            pieces.push(&s[at..at + len]);
            at += len;
        }
        pieces
    }

    #[test]
    fn random_splits_many_bodies() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..2000 {
            let body = random_chunked(&mut rng);
            let s = [&body[..], NEXT].concat();
            let pieces = random_pieces(&mut rng, &s);
            assert_eq!(
                feed_all(BodyKind::Chunked, &pieces),
                Ok((body.len(), true)),
                "round {round}: {:?}",
                String::from_utf8_lossy(&body)
            );

            let len = rng.below(1000);
            let s: Vec<u8> = (0..len + NEXT.len()).map(|_| rng.next() as u8).collect();
            let pieces = random_pieces(&mut rng, &s);
            let expected_done = true;
            assert_eq!(
                feed_all(BodyKind::Length(len as u64), &pieces),
                Ok((len, expected_done)),
                "round {round}"
            );
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = Rng(42);
        let alphabet = b"0123456789abcdefABCDEF;= \t\r\n:xX\0\x7f\xff";
        for _ in 0..5000 {
            let len = rng.below(64);
            let s: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let mut t = BodyTracker::new(BodyKind::Chunked);
            for piece in random_pieces(&mut rng, &s) {
                match t.feed(piece) {
                    Ok(n) => assert!(n <= piece.len()),
                    Err(e) => {
                        assert_eq!(e.status(), 400);
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn content_length() {
        let mut t = BodyTracker::new(BodyKind::Length(5));
        assert!(!t.is_done());
        assert_eq!(t.feed(b"he"), Ok(2));
        assert_eq!(t.feed(b"lloGET"), Ok(3));
        assert!(t.is_done());
        assert_eq!(t.feed(b"GET"), Ok(0));

        let mut big = BodyTracker::new(BodyKind::Length(u64::MAX));
        assert_eq!(big.feed(&[0; 1000]), Ok(1000));
        assert!(!big.is_done());
    }

    #[test]
    fn none_and_zero_are_done() {
        for kind in [BodyKind::None, BodyKind::Length(0)] {
            let mut t = BodyTracker::new(kind);
            assert!(t.is_done());
            assert_eq!(t.feed(b"GET / HTTP/1.1"), Ok(0));
        }
    }

    #[test]
    fn close_delimited_never_done() {
        let mut t = BodyTracker::new(BodyKind::CloseDelimited);
        assert!(!t.is_done());
        assert_eq!(t.feed(b"anything\r\n0\r\n\r\n"), Ok(15));
        assert_eq!(t.feed(b""), Ok(0));
        assert!(!t.is_done());
    }

    #[test]
    fn minimal_chunked() {
        assert_eq!(feed_all(BodyKind::Chunked, &[b"0\r\n\r\n"]), Ok((5, true)));
        assert_eq!(
            feed_all(
                BodyKind::Chunked,
                &[b"0000000000000000000000001\r\nx\r\n0\r\n\r\n"]
            ),
            Ok((35, true))
        );
        assert_eq!(
            feed_all(BodyKind::Chunked, &[b"ffffffffffffffff\r\nabc"]),
            Ok((21, false))
        );
    }

    fn chunk_err(input: &[u8]) -> HttpError {
        // Whole, and one byte at a time: same verdict.
        let whole = BodyTracker::new(BodyKind::Chunked).feed(input);
        let mut t = BodyTracker::new(BodyKind::Chunked);
        let mut bytewise = Ok(0);
        for b in input {
            bytewise = t.feed(std::slice::from_ref(b));
            if bytewise.is_err() {
                break;
            }
        }
        assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(input));
        let e = whole.unwrap_err();
        assert!(matches!(e, HttpError::BadChunk(_)));
        assert_eq!(e.status(), 400);
        // Sticky.
        assert_eq!(t.feed(b"0\r\n\r\n"), Err(e.clone()));
        assert_eq!(t.feed(b""), Err(e.clone()));
        e
    }

    #[test]
    fn chunk_errors() {
        chunk_err(b"x\r\n");
        chunk_err(b"\r\n");
        chunk_err(b" 5\r\nhello\r\n");
        chunk_err(b"-5\r\n");
        chunk_err(b"0x5\r\n");
        chunk_err(b"5 x\r\nhello\r\n");
        chunk_err(b"5\nhello\r\n");
        chunk_err(b"5\rhello\r\n");
        chunk_err(b"5;a\nhello\r\n");
        chunk_err(b"5;a\0\r\nhello\r\n");
        chunk_err(b"5\r\nhelloX\r\n");
        chunk_err(b"5\r\nhello\rX");
        chunk_err(b"5\r\nhello\n0\r\n\r\n");
        chunk_err(b"10000000000000000\r\n");
        chunk_err(b"0\r\nX-T: a\nb\r\n\r\n");
        chunk_err(b"0\r\nX-T: a\r\n folded\r\n\r\n");
        chunk_err(b"0\r\nX-T: a\0\r\n\r\n");
        chunk_err(b"0\r\n\rX");
        chunk_err(b"0\r\nX-T: a\rX");
    }

    #[test]
    fn chunk_line_limit() {
        let mut ok = b"5;".to_vec();
        ok.resize(MAX_CHUNK_LINE - 2, b'a');
        ok.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(feed_all(BodyKind::Chunked, &[&ok]), Ok((ok.len(), true)));

        let mut long = b"5;".to_vec();
        long.resize(MAX_CHUNK_LINE + 1, b'a');
        chunk_err(&long);
        let zeros = vec![b'0'; MAX_CHUNK_LINE + 1];
        chunk_err(&zeros);
    }

    #[test]
    fn trailer_limit() {
        let mut ok = b"0\r\n".to_vec();
        while ok.len() < MAX_TRAILERS - 100 {
            ok.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        ok.extend_from_slice(b"\r\n");
        assert_eq!(feed_all(BodyKind::Chunked, &[&ok]), Ok((ok.len(), true)));

        let mut big = b"0\r\n".to_vec();
        while big.len() < MAX_TRAILERS + 100 {
            big.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        big.extend_from_slice(b"\r\n");
        chunk_err(&big);
        let mut one_line = b"0\r\nX: ".to_vec();
        one_line.resize(MAX_TRAILERS + 10, b'v');
        chunk_err(&one_line);
    }
}
