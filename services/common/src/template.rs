//! URL templates: `{key}` placeholders filled from a postback's data.
//!
//! A placeholder is `{`, one or more characters other than braces, then `}`.
//! Every occurrence is replaced by the value of `data.key`, percent-encoded
//! per RFC 3986: only unreserved characters (`A-Z a-z 0-9 - . _ ~`) are left
//! as they are, everything else becomes `%XX` of its UTF-8 bytes (a space is
//! `%20`, never `+`). A key missing from the data, or whose value is null,
//! gets the configured default, encoded the same way.
//!
//! Placeholders are allowed only after the authority (in the path, query or
//! fragment): a value can choose what to say to the target, never which host
//! the target is.
//!
//! Expansion works within a budget: [`expand_within`] stops before its
//! output would pass a byte limit and never allocates more than it, and
//! [`Lengths`] gives the expanded length of a template for any number of
//! data items in time linear in the template plus the items, without
//! expanding anything. A template of thousands of placeholders times
//! values that encode to three times their size therefore costs what its
//! bytes cost, not their product.

use std::collections::HashMap;
use std::fmt::Write as _;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::data::Data;

/// Characters that are percent-encoded in a value: all but RFC 3986's
/// unreserved set.
pub const VALUE_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A piece of a parsed template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Text copied as it is.
    Literal(&'a str),
    /// The key inside a `{key}` placeholder.
    Placeholder(&'a str),
}

/// Why a URL template is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` with no `}` after it.
    #[error("'{{' at byte {0} is never closed")]
    Unclosed(usize),
    /// `{}`.
    #[error("empty placeholder '{{}}' at byte {0}")]
    Empty(usize),
    /// A `{` inside a placeholder.
    #[error("'{{' at byte {0} is inside another placeholder")]
    Nested(usize),
    /// A `}` that closes nothing.
    #[error("'}}' at byte {0} closes no placeholder")]
    StrayClose(usize),
    /// Not an absolute http or https URL.
    #[error("must be an absolute http:// or https:// URL")]
    NotHttp,
    /// No host after the scheme.
    #[error("has no host")]
    NoHost,
    /// A placeholder in the scheme, host or port.
    #[error("placeholders are allowed only in the path, query and fragment, not in the host (byte {0})")]
    PlaceholderInAuthority(usize),
    /// A control character (CR, LF, TAB, ...) anywhere in the template.
    #[error("contains a control character at byte {0}")]
    ControlCharacter(usize),
    /// The URL does not parse even with its placeholders filled in.
    #[error("is not a valid URL: {0}")]
    Invalid(String),
    /// Expanded, it would be longer than the limit given (in bytes).
    #[error("would expand to more than {0} bytes")]
    TooLong(usize),
}

/// Splits a template into literal text and placeholders, failing on the
/// first unbalanced brace.
pub fn segments(template: &str) -> Segments<'_> {
    Segments { rest: template, offset: 0 }
}

/// Iterator returned by [`segments`].
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a str,
    offset: usize,
}

impl<'a> Iterator for Segments<'a> {
    type Item = Result<Segment<'a>, TemplateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let bytes = self.rest.as_bytes();
        let (item, used) = if bytes[0] == b'{' {
            match self.rest[1..].find(['{', '}']) {
                None => (Err(TemplateError::Unclosed(self.offset)), self.rest.len()),
                Some(i) if bytes[1 + i] == b'{' => (Err(TemplateError::Nested(self.offset + 1 + i)), self.rest.len()),
                Some(0) => (Err(TemplateError::Empty(self.offset)), self.rest.len()),
                Some(i) => (Ok(Segment::Placeholder(&self.rest[1..1 + i])), i + 2),
            }
        } else if bytes[0] == b'}' {
            (Err(TemplateError::StrayClose(self.offset)), self.rest.len())
        } else {
            let end = self.rest.find(['{', '}']).unwrap_or(self.rest.len());
            (Ok(Segment::Literal(&self.rest[..end])), end)
        };
        self.rest = &self.rest[used..];
        self.offset += used;
        if item.is_err() {
            self.rest = "";
        }
        Some(item)
    }
}

/// Fills every placeholder of `template` from `data`, writing the URL into
/// `out`. Missing keys and nulls get `default`.
pub fn expand_into(template: &str, data: &Data, default: &str, out: &mut String) -> Result<(), TemplateError> {
    for segment in segments(template) {
        match segment? {
            Segment::Literal(text) => out.push_str(text),
            Segment::Placeholder(key) => {
                let value = data.get(key).and_then(|v| v.url_text());
                let text = value.as_deref().unwrap_or(default);
                // Writing to a String cannot fail.
                let _ = write!(out, "{}", utf8_percent_encode(text, VALUE_ENCODE_SET));
            }
        }
    }
    Ok(())
}

/// Fills every placeholder of `template` from `data`; see [`expand_into`].
pub fn expand(template: &str, data: &Data, default: &str) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 64);
    expand_into(template, data, default, &mut out)?;
    Ok(out)
}

/// Like [`expand`], but refuses with [`TemplateError::TooLong`] as soon as
/// the URL would pass `max` bytes: each piece is measured before it is
/// written, so the output never grows past `max` and the work done is at
/// most `max` bytes written plus one value scanned.
pub fn expand_within(template: &str, data: &Data, default: &str, max: usize) -> Result<String, TemplateError> {
    let mut out = String::with_capacity((template.len() + 64).min(max));
    for segment in segments(template) {
        let room = max - out.len();
        match segment? {
            Segment::Literal(text) if text.len() > room => return Err(TemplateError::TooLong(max)),
            Segment::Literal(text) => out.push_str(text),
            Segment::Placeholder(key) => {
                let value = data.get(key).and_then(|v| v.url_text());
                let text = value.as_deref().unwrap_or(default);
                if encoded_len_over(text, room) {
                    return Err(TemplateError::TooLong(max));
                }
                let _ = write!(out, "{}", utf8_percent_encode(text, VALUE_ENCODE_SET));
            }
        }
    }
    Ok(out)
}

/// The length of `text` once percent-encoded for a URL.
pub fn encoded_len(text: &str) -> usize {
    text.bytes().map(|b| if is_unreserved(b) { 1 } else { 3 }).sum()
}

/// Whether `text` percent-encoded is longer than `room`, reading no further
/// than needed to know.
fn encoded_len_over(text: &str, room: usize) -> bool {
    if text.len() > room {
        return true;
    }
    let mut len = 0;
    text.bytes().any(|b| {
        len += if is_unreserved(b) { 1 } else { 3 };
        len > room
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What the expanded length of a template depends on: its literal bytes
/// and how often each key appears. Built once per request; then
/// [`Lengths::expanded_len`] costs one look-up per key of a data item,
/// however many placeholders the template has.
#[derive(Debug, Clone)]
pub struct Lengths<'t> {
    literal: usize,
    placeholders: usize,
    counts: HashMap<&'t str, usize>,
}

impl<'t> Lengths<'t> {
    /// Measures `template`; fails where [`segments`] does.
    pub fn of(template: &'t str) -> Result<Self, TemplateError> {
        let mut lengths = Self { literal: 0, placeholders: 0, counts: HashMap::new() };
        for segment in segments(template) {
            match segment? {
                Segment::Literal(text) => lengths.literal += text.len(),
                Segment::Placeholder(key) => {
                    lengths.placeholders += 1;
                    *lengths.counts.entry(key).or_default() += 1;
                }
            }
        }
        Ok(lengths)
    }

    /// The length of the template expanded with `data`, missing keys and
    /// nulls getting `default`: exactly `expand(…).len()` when the data has
    /// no repeated key (a repeated key is counted once per occurrence, so
    /// the figure is never short).
    pub fn expanded_len(&self, data: &Data, default: &str) -> u64 {
        let (mut filled, mut values) = (0u64, 0u64);
        for (key, value) in &data.0 {
            let Some(&count) = self.counts.get(key.as_str()) else { continue };
            if let Some(text) = value.url_text() {
                filled += count as u64;
                values += count as u64 * encoded_len(&text) as u64;
            }
        }
        let defaults = (self.placeholders as u64).saturating_sub(filled);
        self.literal as u64 + values + defaults * encoded_len(default) as u64
    }
}

/// Checks, at ingest, that a template will expand into an absolute http(s)
/// URL whatever the data: balanced braces, a literal scheme and host, and a
/// URL that parses once its placeholders are filled in.
pub fn validate(template: &str) -> Result<(), TemplateError> {
    // URL parsers silently drop tabs and newlines; a request line or header
    // built from one could be split. Refuse them outright.
    if let Some(at) = template.find(|c: char| c.is_control()) {
        return Err(TemplateError::ControlCharacter(at));
    }
    let mut first_placeholder = None;
    let mut offset = 0;
    for segment in segments(template) {
        match segment? {
            Segment::Literal(text) => offset += text.len(),
            Segment::Placeholder(key) => {
                first_placeholder.get_or_insert(offset);
                offset += key.len() + 2;
            }
        }
    }
    let after_scheme = strip_http_scheme(template).ok_or(TemplateError::NotHttp)?;
    let scheme_len = template.len() - after_scheme.len();
    let authority_len = after_scheme.find(['/', '?', '#']).unwrap_or(after_scheme.len());
    if authority_len == 0 {
        // `url` would read `http:///x` as `http://x/`; refuse rather than guess.
        return Err(TemplateError::NoHost);
    }
    if let Some(at) = first_placeholder
        && at < scheme_len + authority_len
    {
        return Err(TemplateError::PlaceholderInAuthority(at));
    }
    let filled = expand(template, &Data::default(), "x")?;
    let url = url::Url::parse(&filled).map_err(|e| TemplateError::Invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TemplateError::NotHttp);
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(TemplateError::NoHost);
    }
    Ok(())
}

/// Splits fuzz input into a template and a value (at the first NUL) and
/// checks what must hold whatever they are: no panic, and the value appears
/// in the expansion only percent-encoded. Used by the fuzz target and the
/// regression corpus test.
pub fn check_fuzz_input(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let (template, value) = text.split_once('\0').unwrap_or((&text, ""));
    let _ = validate(template);
    let data: Data = [("k", crate::Scalar::Str(value.to_owned()))].into_iter().collect();
    if let Ok(url) = expand_within(&format!("http://h/?v={{k}}&{template}"), &data, value, 1 << 16) {
        let encoded = url.strip_prefix("http://h/?v=").and_then(|rest| rest.split('&').next()).unwrap_or_default();
        assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)), "{encoded:?}");
    }
}

/// Splits fuzz input at NULs into a template tail and the values of keys
/// `a`, `b` and `c`, and checks the budgeted expansion against the plain
/// one: under a small budget it returns the whole URL or refuses, never
/// something longer, and [`Lengths`] agrees with both. Used by the
/// `expansion` fuzz target and the regression corpus test.
pub fn check_expansion_fuzz_input(input: &[u8]) {
    const MAX: usize = 512;
    let text = String::from_utf8_lossy(input);
    let mut parts = text.split('\0');
    let template = format!("http://h/{}", parts.next().unwrap_or_default());
    let data: Data =
        ["a", "b", "c"].into_iter().zip(parts.by_ref()).map(|(k, v)| (k, crate::Scalar::Str(v.into()))).collect();
    let default = parts.next().unwrap_or_default();
    let Ok(lengths) = Lengths::of(&template) else {
        assert!(expand_within(&template, &data, default, MAX).is_err());
        return;
    };
    let measured = lengths.expanded_len(&data, default);
    match expand_within(&template, &data, default, MAX) {
        Ok(url) => {
            assert_eq!(url.len() as u64, measured, "measured length");
            assert_eq!(expand(&template, &data, default).as_deref(), Ok(url.as_str()));
        }
        Err(TemplateError::TooLong(max)) => assert!(measured > max as u64, "refused at {measured} bytes"),
        Err(e) => panic!("{template:?} segmented once, then failed: {e}"),
    }
}

fn strip_http_scheme(template: &str) -> Option<&str> {
    ["http://", "https://"].into_iter().find_map(|scheme| {
        let head = template.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme).then(|| &template[scheme.len()..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::Scalar;
    use proptest::prelude::*;

    fn data(pairs: &[(&str, Scalar)]) -> Data {
        pairs.iter().cloned().collect()
    }

    fn s(v: &str) -> Scalar {
        Scalar::Str(v.into())
    }

    #[test]
    fn seed_sample_expands_exactly() {
        let d = data(&[("mascot", s("Gopher")), ("location", s("https://blog.golang.org/gopher/gopher.png"))]);
        let url = expand("http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}", &d, "")
            .expect("expand");
        assert_eq!(
            url,
            "http://sample_domain_endpoint.com/data?title=Gopher&image=https%3A%2F%2Fblog.golang.org%2Fgopher%2Fgopher.png&foo="
        );
    }

    #[test]
    fn encodes_reserved_characters_spaces_and_utf8() {
        let d = data(&[("v", s("a b&c=d+e#f/g?h%i~j-k.l_m")), ("u", s("é☃"))]);
        assert_eq!(
            expand("http://h/?x={v}&y={u}", &d, "").expect("expand"),
            "http://h/?x=a%20b%26c%3Dd%2Be%23f%2Fg%3Fh%25i~j-k.l_m&y=%C3%A9%E2%98%83"
        );
    }

    #[test]
    fn replaces_every_occurrence_and_uses_the_default() {
        let d = data(&[("a", s("1")), ("n", Scalar::Null)]);
        assert_eq!(
            expand("http://h/{a}/{a}?m={missing}&n={n}", &d, "none here").expect("expand"),
            "http://h/1/1?m=none%20here&n=none%20here"
        );
    }

    #[test]
    fn renders_numbers_and_booleans() {
        let d = data(&[("i", Scalar::Int(-3)), ("f", Scalar::Float(2.5)), ("b", Scalar::Bool(false))]);
        assert_eq!(expand("http://h/?{i}{f}{b}", &d, "").expect("expand"), "http://h/?-32.5false");
    }

    #[test]
    fn keys_may_hold_any_character_but_braces() {
        let d = data(&[("a key/é", s("v"))]);
        assert_eq!(expand("http://h/{a key/é}", &d, "").expect("expand"), "http://h/v");
    }

    #[test]
    fn unbalanced_braces_are_errors() {
        assert_eq!(expand("http://h/{a", &Data::default(), ""), Err(TemplateError::Unclosed(9)));
        assert_eq!(expand("http://h/{}", &Data::default(), ""), Err(TemplateError::Empty(9)));
        assert_eq!(expand("http://h/{a{b}}", &Data::default(), ""), Err(TemplateError::Nested(11)));
        assert_eq!(expand("http://h/a}", &Data::default(), ""), Err(TemplateError::StrayClose(10)));
    }

    #[test]
    fn expansion_within_a_budget_stops_before_passing_it() {
        let d = data(&[("a", s("&&&&")), ("n", Scalar::Int(42))]);
        let template = "http://h/?x={a}&y={n}&z={missing}";
        let full = expand(template, &d, "~").expect("expand");
        assert_eq!(full.len(), 33);
        assert_eq!(expand_within(template, &d, "~", 33).as_deref(), Ok(full.as_str()));
        for max in [0, 9, 12, 23, 32] {
            assert_eq!(expand_within(template, &d, "~", max), Err(TemplateError::TooLong(max)), "{max}");
        }
        // A hostile template: thousands of placeholders, each worth 12 KiB.
        let hostile = format!("http://h/{}", "{a}".repeat(2_720));
        let d = data(&[("a", s(&"&".repeat(4_096)))]);
        let started = std::time::Instant::now();
        assert_eq!(expand_within(&hostile, &d, "", 8_192), Err(TemplateError::TooLong(8_192)));
        assert_eq!(Lengths::of(&hostile).expect("lengths").expanded_len(&d, ""), 9 + 2_720 * 3 * 4_096);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn lengths_agree_with_expansion() {
        let d = data(&[("a", s("a b")), ("n", Scalar::Null), ("i", Scalar::Int(-7)), ("unused", s("zzz"))]);
        for template in ["http://h/", "http://h/{a}{a}?{n}&{i}&{missing}#{a}", "http://h/{missing}{missing}"] {
            for default in ["", "d", "é é"] {
                let lengths = Lengths::of(template).expect("lengths");
                let want = expand(template, &d, default).expect("expand").len() as u64;
                assert_eq!(lengths.expanded_len(&d, default), want, "{template} / {default:?}");
            }
        }
        assert_eq!(Lengths::of("http://h/{a").map(|_| ()), Err(TemplateError::Unclosed(9)));
    }

    #[test]
    fn validate_accepts_good_templates() {
        for ok in [
            "http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}",
            "HTTPS://example.com",
            "http://127.0.0.1:8080/{a}",
            "http://[::1]:9/x?{a}#{b}",
            "https://user:pw@example.com/p",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn validate_refuses_bad_templates() {
        assert_eq!(validate("ftp://example.com/"), Err(TemplateError::NotHttp));
        assert_eq!(validate("example.com/{a}"), Err(TemplateError::NotHttp));
        assert_eq!(validate("/relative"), Err(TemplateError::NotHttp));
        assert_eq!(validate("http://{host}/x"), Err(TemplateError::PlaceholderInAuthority(7)));
        assert_eq!(validate("http://example.com:{port}/x"), Err(TemplateError::PlaceholderInAuthority(19)));
        assert_eq!(validate("http:///x"), Err(TemplateError::NoHost));
        assert_eq!(validate("http://?q={a}"), Err(TemplateError::NoHost));
        assert!(matches!(validate("http://exa mple.com/"), Err(TemplateError::Invalid(_))));
        assert_eq!(validate("http://h/{"), Err(TemplateError::Unclosed(9)));
        assert_eq!(validate("http://h/a\r\nHost: evil"), Err(TemplateError::ControlCharacter(10)));
        assert_eq!(validate("http://h/\t"), Err(TemplateError::ControlCharacter(9)));
    }

    proptest! {
        /// Whatever a value holds, expansion leaves only unreserved characters
        /// and well-formed `%XX` escapes in its place, and decoding them gives
        /// the value back byte for byte.
        #[test]
        fn values_never_leak_reserved_characters(value in ".*", default in ".*") {
            let d = data(&[("k", s(&value))]);
            let url = expand("http://h/?a={k}&b={missing}", &d, &default).expect("expand");
            let rest = url.strip_prefix("http://h/?a=").expect("prefix");
            let (a, b) = rest.split_once("&b=").expect("separator");
            for (encoded, original) in [(a, &value), (b, &default)] {
                let bytes = encoded.as_bytes();
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] == b'%' {
                        prop_assert!(bytes.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)));
                        i += 3;
                    } else {
                        prop_assert!(bytes[i].is_ascii_alphanumeric() || b"-._~".contains(&bytes[i]), "{:?} in {encoded}", bytes[i] as char);
                        i += 1;
                    }
                }
                let decoded = percent_encoding::percent_decode_str(encoded).decode_utf8().expect("utf8");
                prop_assert_eq!(decoded.as_ref(), original.as_str());
            }
        }

        /// The budgeted expansion gives the whole URL when it fits and a
        /// refusal when it does not, and the measured length agrees.
        #[test]
        fn budgeted_expansion_agrees_with_expansion(
            template in "http://h/[a-z{}&%é]{0,40}",
            values in prop::collection::vec(".{0,8}", 3),
            max in 0usize..120,
        ) {
            let d = data(&[("a", s(&values[0])), ("b", s(&values[1])), ("c", s(&values[2]))]);
            if let Ok(full) = expand(&template, &d, "~") {
                let within = expand_within(&template, &d, "~", max);
                if full.len() <= max {
                    prop_assert_eq!(within, Ok(full.clone()));
                } else {
                    prop_assert_eq!(within, Err(TemplateError::TooLong(max)));
                }
                let lengths = Lengths::of(&template).expect("same segments");
                prop_assert_eq!(lengths.expanded_len(&d, "~"), full.len() as u64);
            }
        }

        #[test]
        fn segmenting_never_panics(template in ".*") {
            let _ = expand(&template, &Data::default(), "");
            let _ = validate(&template);
        }
    }
}
