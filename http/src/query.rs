//! Query-string parameter extraction, matching Python's
//! `urllib.parse.parse_qsl(qs, keep_blank_values=True)` (what Starlette's
//! `request.query_params.get` uses): fields split on `&`, empty fields
//! skipped, a field without `=` has the empty value, names and values are
//! percent-decoded with `+` meaning space, malformed `%` escapes are kept
//! literally, and invalid UTF-8 is replaced (lossy).

use std::borrow::Cow;

/// The decoded value of the FIRST field called `name` (compared after
/// decoding) in `query` (the text after `?`, without a fragment); borrowed
/// from `query` when it needs no decoding (no allocation).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    for field in query.split('&') {
        if field.is_empty() {
            continue;
        }
        let (raw_name, raw_value) = match field.split_once('=') {
            Some((n, v)) => (n, v),
            None => (field, ""),
        };
        if decode(raw_name) == name {
            return Some(decode(raw_value));
        }
    }
    None
}

/// Percent-decodes one component (`+` → space). Borrows when nothing needs
/// decoding.
pub fn decode(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn hex(b: Option<&u8>) -> Option<u8> {
    let b = *b?;
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_decoded() {
        let q = "a=1&vf_state_secret=x%2By+z&vf_state_secret=second";
        assert_eq!(query_param(q, "vf_state_secret").as_deref(), Some("x+y z"));
        assert_eq!(query_param(q, "a").as_deref(), Some("1"));
        assert_eq!(query_param(q, "b"), None);
    }

    #[test]
    fn blank_and_missing_values() {
        assert_eq!(query_param("a=&b=2", "a").as_deref(), Some(""));
        assert_eq!(query_param("a&b=2", "a").as_deref(), Some(""));
        assert_eq!(query_param("&&a=1&&", "a").as_deref(), Some("1"));
        assert_eq!(query_param("", "a"), None);
        assert_eq!(query_param("=x", "").as_deref(), Some("x"));
    }

    #[test]
    fn value_with_equals() {
        assert_eq!(query_param("k=a=b", "k").as_deref(), Some("a=b"));
    }

    #[test]
    fn names_are_decoded() {
        assert_eq!(query_param("my%20key=1", "my key").as_deref(), Some("1"));
        assert_eq!(query_param("my+key=2", "my key").as_deref(), Some("2"));
        assert_eq!(query_param("%61=3", "a").as_deref(), Some("3"));
    }

    #[test]
    fn malformed_escapes_kept() {
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=100%", "a").as_deref(), Some("100%"));
        assert_eq!(query_param("a=%%41", "a").as_deref(), Some("%A"));
    }

    #[test]
    fn utf8_and_lossy() {
        assert_eq!(query_param("a=%C3%A9t%C3%A9", "a").as_deref(), Some("été"));
        assert_eq!(query_param("a=%FFok", "a").as_deref(), Some("\u{FFFD}ok"));
    }

    #[test]
    fn semicolon_is_not_a_separator() {
        // Python >= 3.10 (CVE-2021-23336) splits on '&' only.
        assert_eq!(query_param("a=1;b=2", "a").as_deref(), Some("1;b=2"));
        assert_eq!(query_param("a=1;b=2", "b"), None);
    }

    #[test]
    fn decode_borrows_when_clean() {
        assert!(matches!(decode("plain"), Cow::Borrowed("plain")));
    }
}
