//! A message's header fields as the proxy keeps them: one copy of all names
//! (a `String`, so reading one back needs no UTF-8 check), one of all values
//! (bytes), and a list of spans into them — a fixed few buffers per head
//! however many fields it has, and none once the storage is reused
//! (`parse_request_into`). Names and values are exactly as received
//! (original case, raw bytes), in order.

use super::{check_field, HttpError};

/// Where one field's name (in `names`) and value (in `values`) lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Where a piece of start-line text (method, target, reason) lies in the
/// `names` text of [`Headers`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Text(u32, u32);

/// The header fields of one head (and the start line's text pieces, which
/// share the names' text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    names: String,
    values: Vec<u8>,
    fields: Vec<Field>,
}

impl Headers {
    /// Empties `self` for another head, keeping its capacity.
    pub fn clear(&mut self) {
        self.names.clear();
        self.values.clear();
        self.fields.clear();
    }

    /// Copies what `httparse` found into `self` (cleared first), validating
    /// each field (no CR, LF or NUL; a name).
    pub(crate) fn fill(&mut self, raw: &[httparse::Header<'_>]) -> Result<(), HttpError> {
        self.clear();
        self.names.reserve(raw.iter().map(|h| h.name.len()).sum());
        self.values.reserve(raw.iter().map(|h| h.value.len()).sum());
        self.fields.reserve(raw.len());
        for h in raw {
            check_field(h.name, h.value)?;
            self.push(h.name, h.value);
        }
        Ok(())
    }

    /// Stores `s` (a start-line piece) beside the fields.
    pub(crate) fn push_text(&mut self, s: &str) -> Text {
        let start = self.names.len() as u32;
        self.names.push_str(s);
        Text(start, self.names.len() as u32)
    }

    /// A piece stored by [`Headers::push_text`].
    pub(crate) fn text(&self, t: Text) -> &str {
        self.names
            .get(t.0 as usize..t.1 as usize)
            .unwrap_or_default()
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
        let n0 = self.names.len() as u32;
        self.names.push_str(name);
        let v0 = self.values.len() as u32;
        self.values.extend_from_slice(value);
        self.fields.push(Field {
            name: (n0, self.names.len() as u32),
            value: (v0, self.values.len() as u32),
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
        // Spans made by `push` lie on the boundaries of what it pushed.
        let name = self.names.get(f.name.0 as usize..f.name.1 as usize);
        let value = self.values.get(f.value.0 as usize..f.value.1 as usize);
        (name.unwrap_or_default(), value.unwrap_or_default())
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
