//! A message's header fields as the proxy keeps them: one copy of all names
//! and values, back to back in one buffer, and a list of spans into it — two
//! allocations per head however many fields it has (one owned `String` and
//! `Vec` per name and value before). Names and values are exactly as
//! received (original case, raw bytes), in order.

use super::{check_field, HttpError};

/// Where one field's name and value lie in [`Headers`]' buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Where a piece of start-line text (method, target, reason) lies in the
/// buffer of [`Headers`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Text(u32, u32);

/// The header fields of one head (and the start line's text pieces, which
/// share the buffer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    buf: Vec<u8>,
    fields: Vec<Field>,
}

impl Headers {
    /// Empties `self` for another head, keeping its capacity.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.fields.clear();
    }

    /// Copies what `httparse` found into `self` (cleared first), validating
    /// each field (no CR, LF or NUL; a name).
    pub(crate) fn fill(&mut self, raw: &[httparse::Header<'_>]) -> Result<(), HttpError> {
        self.clear();
        let bytes = raw.iter().map(|h| h.name.len() + h.value.len()).sum();
        self.buf.reserve(bytes);
        self.fields.reserve(raw.len());
        for h in raw {
            check_field(h.name, h.value)?;
            self.push(h.name, h.value);
        }
        Ok(())
    }

    /// Stores `s` (a start-line piece) beside the fields.
    pub(crate) fn push_text(&mut self, s: &str) -> Text {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(s.as_bytes());
        Text(start, self.buf.len() as u32)
    }

    /// A piece stored by [`Headers::push_text`].
    pub(crate) fn text(&self, t: Text) -> &str {
        let b = self.buf.get(t.0 as usize..t.1 as usize).unwrap_or_default();
        // Pushed from `&str`, so this never falls back.
        std::str::from_utf8(b).unwrap_or_default()
    }

    /// Fields from `(name, value)` pairs, unvalidated (tests, and heads the
    /// proxy builds itself).
    pub fn from_pairs<V: AsRef<[u8]>>(pairs: &[(&str, V)]) -> Headers {
        let mut out = Headers::default();
        for (n, v) in pairs {
            out.push(n, v.as_ref());
        }
        out
    }

    fn push(&mut self, name: &str, value: &[u8]) {
        // Heads are at most MAX_HEAD (64 KiB) long, so offsets fit in u32.
        let at = |b: &Vec<u8>| b.len() as u32;
        let n0 = at(&self.buf);
        self.buf.extend_from_slice(name.as_bytes());
        let v0 = at(&self.buf);
        self.buf.extend_from_slice(value);
        self.fields.push(Field {
            name: (n0, v0),
            value: (v0, at(&self.buf)),
        });
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// No fields at all.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Field `i`: name and value.
    pub fn get(&self, i: usize) -> Option<(&str, &[u8])> {
        self.fields.get(i).map(|f| self.field(f))
    }

    fn field(&self, f: &Field) -> (&str, &[u8]) {
        let name = &self.buf[f.name.0 as usize..f.name.1 as usize];
        // Names were pushed from `&str`, so this never falls back.
        let name = std::str::from_utf8(name).unwrap_or_default();
        (name, &self.buf[f.value.0 as usize..f.value.1 as usize])
    }

    /// The fields in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + Clone + '_ {
        self.fields.iter().map(|f| self.field(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_order_case_and_bytes() {
        let h = Headers::from_pairs(&[
            ("Host", &b"a"[..]),
            ("X-Bin", &b"\xff\x01"[..]),
            ("host", &b""[..]),
        ]);
        assert_eq!(h.len(), 3);
        let mut h = h;
        let t = h.push_text("GET");
        assert_eq!(h.text(t), "GET");
        assert_eq!(h.len(), 3, "text is not a field");
        let all: Vec<_> = h.iter().collect();
        assert_eq!(
            all,
            [
                ("Host", &b"a"[..]),
                ("X-Bin", &b"\xff\x01"[..]),
                ("host", &b""[..])
            ]
        );
        assert_eq!(h.get(1), Some(("X-Bin", &b"\xff\x01"[..])));
        assert_eq!(h.get(3), None);
        assert!(Headers::default().is_empty());
    }
}
