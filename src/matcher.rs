//! Value matching for rules (Istio's `StringMatch`: exact, prefix, regex) and
//! cookie lookup in a `Cookie` header. Everything works on raw bytes: header
//! values are not guaranteed to be UTF-8 and must never cause a panic.

use regex_lite::Regex;

/// Cookie headers longer than this are only searched in their first bytes;
/// cookies past the bound are treated as absent. Envoy's own header limit
/// (60 KiB by default) is the outer bound; this one keeps the per-request scan
/// small and predictable.
pub const MAX_COOKIE_HEADER_SCAN: usize = 16 * 1024;

/// The longest value a regex condition is matched against; longer values
/// never match it.
pub const MAX_REGEX_INPUT: usize = 4096;

#[derive(Debug)]
pub enum StringMatch {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    /// Anchored at both ends, as Istio's (RE2) regex match is a full match
    /// (see [`crate::config::whole_value_regex`]). Only UTF-8 values can
    /// match a regex.
    Regex(Regex),
}

impl StringMatch {
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            StringMatch::Exact(want) => value == &**want,
            StringMatch::Prefix(prefix) => value.starts_with(prefix),
            // Regex time grows with the value's length times the pattern's
            // size: values longer than the bound never match, so no request
            // can make a rule expensive.
            StringMatch::Regex(re) => {
                value.len() <= MAX_REGEX_INPUT
                    && std::str::from_utf8(value).is_ok_and(|s| re.is_match(s))
            }
        }
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`), if present.
/// The first occurrence wins. Surrounding whitespace and one pair of double
/// quotes around the value are removed (RFC 6265 allows quoted values).
/// Malformed pairs (no `=`) are skipped.
pub fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let scanned = match header.get(..MAX_COOKIE_HEADER_SCAN) {
        // Cut at the bound: drop the pair the cut went through, so a cookie
        // that straddles it is absent rather than read short.
        Some(head)
            if header.len() > MAX_COOKIE_HEADER_SCAN
                && header.get(MAX_COOKIE_HEADER_SCAN) != Some(&b';') =>
        {
            let cut = head.iter().rposition(|&b| b == b';').unwrap_or(0);
            head.get(..cut).unwrap_or_default()
        }
        Some(head) => head,
        None => header,
    };
    for pair in scanned.split(|&b| b == b';') {
        let pair = trim(pair);
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, rest) = pair.split_at(eq);
        if trim(key) != name {
            continue;
        }
        let value = trim(rest.get(1..).unwrap_or_default());
        return Some(strip_quotes(value));
    }
    None
}

fn strip_quotes(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Trims spaces and tabs (the only whitespace HTTP allows in field values).
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re(p: &str) -> StringMatch {
        StringMatch::Regex(crate::config::whole_value_regex(p).unwrap())
    }

    #[test]
    fn exact_prefix_regex() {
        let exact = StringMatch::Exact(b"true".to_vec().into());
        assert!(exact.matches(b"true"));
        assert!(!exact.matches(b"true "));
        assert!(!exact.matches(b"TRUE"));
        let prefix = StringMatch::Prefix(b"qa-".to_vec().into());
        assert!(prefix.matches(b"qa-alice"));
        assert!(prefix.matches(b"qa-"));
        assert!(!prefix.matches(b"q"));
        let r = re("qa-[a-z]+|admin");
        assert!(r.matches(b"qa-bob"));
        assert!(r.matches(b"admin"));
        assert!(!r.matches(b"xadmin"), "regex is a full match");
        assert!(!r.matches(b"qa-bob\xff"), "non-UTF-8 never matches a regex");
    }

    #[test]
    fn cookies() {
        let h = b"a=1; user_id=alice ;  b = 2;bare; q=\"quoted\"; user_id=second";
        assert_eq!(cookie_value(h, b"a"), Some(&b"1"[..]));
        assert_eq!(cookie_value(h, b"user_id"), Some(&b"alice"[..]));
        assert_eq!(cookie_value(h, b"b"), Some(&b"2"[..]));
        assert_eq!(cookie_value(h, b"q"), Some(&b"quoted"[..]));
        assert_eq!(cookie_value(h, b"bare"), None);
        assert_eq!(cookie_value(h, b"missing"), None);
        assert_eq!(cookie_value(b"", b"a"), None);
        assert_eq!(cookie_value(b";;;==;", b""), Some(&b"="[..]));
        assert_eq!(cookie_value(b"a=", b"a"), Some(&b""[..]));
        assert_eq!(cookie_value(b"a=\"", b"a"), Some(&b"\""[..]));
        assert_eq!(cookie_value(b"a=\xff\xfe", b"a"), Some(&b"\xff\xfe"[..]));
    }

    #[test]
    fn cookie_scan_is_bounded() {
        let mut h = vec![b'x'; MAX_COOKIE_HEADER_SCAN];
        h.extend_from_slice(b"; late=1");
        assert_eq!(cookie_value(&h, b"late"), None);
        let mut h = b"early=1; ".to_vec();
        h.extend(std::iter::repeat_n(b'x', 100_000));
        assert_eq!(cookie_value(&h, b"early"), Some(&b"1"[..]));
    }

    #[test]
    fn a_cookie_straddling_the_scan_bound_is_absent_not_cut_short() {
        let mut h = vec![b'x'; MAX_COOKIE_HEADER_SCAN - 8];
        h.extend_from_slice(b"; uid=alice; later=1");
        assert_eq!(cookie_value(&h, b"uid"), None);
        // Ending exactly at the bound, it is whole and found.
        let mut h = vec![b'x'; MAX_COOKIE_HEADER_SCAN - 11];
        h.extend_from_slice(b"; uid=alice; later=1");
        assert_eq!(h.get(MAX_COOKIE_HEADER_SCAN), Some(&b';'));
        assert_eq!(cookie_value(&h, b"uid"), Some(&b"alice"[..]));
    }

    #[test]
    fn long_values_never_match_a_regex() {
        let r = re("a+");
        assert!(r.matches(&vec![b'a'; MAX_REGEX_INPUT]));
        assert!(!r.matches(&vec![b'a'; MAX_REGEX_INPUT + 1]));
    }

    #[test]
    fn trim_edges() {
        assert_eq!(trim(b""), b"");
        assert_eq!(trim(b"  \t "), b"");
        assert_eq!(trim(b" a b\t"), b"a b");
    }
}
