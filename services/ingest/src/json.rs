//! A loose, order-keeping view of a JSON document, parsed with simd-json.
//!
//! Validation needs to see what a caller actually sent (an object where a
//! string belongs, a key given twice, the order of keys), so the body is
//! first read into this permissive tree and judged afterwards; strings are
//! borrowed from the request buffer where possible.
//!
//! Nesting is checked before parsing: a valid request is at most three levels
//! deep, and a hostile `[[[[…` must not exhaust the stack.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting accepted before parsing; valid requests need 3.
pub const MAX_DEPTH: usize = 8;

/// A JSON value; objects keep their keys in document order, duplicates
/// included.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // The variants are JSON's own kinds.
pub enum Json<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl Json<'_> {
    /// The kind of value, as named in error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Int(_) | Json::UInt(_) | Json::Float(_) => "a number",
            Json::Str(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// Why a body is not JSON this service can read.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Not JSON at all, or not UTF-8.
    #[error("malformed JSON: {0}")]
    Malformed(String),
}

/// Parses `buf` (modified in place by simd-json) into a [`Json`] tree.
/// A syntax error is worded for people, with its line and column
/// ("expected `,` or `}` at line 3 column 14"), not in the parser's own
/// terms: the body is copied first (a memcpy, small beside parsing), and
/// a body simd-json refuses is read again by serde_json for the message.
pub fn parse(buf: &mut [u8]) -> Result<Json<'_>, JsonError> {
    check_depth(buf)?;
    let original = buf.to_vec();
    simd_json::serde::from_slice(buf).map_err(|e| JsonError::Malformed(describe(&original, &e)))
}

/// Says what is wrong with `body`, which simd-json refused with `error`.
fn describe(body: &[u8], error: &simd_json::Error) -> String {
    if std::str::from_utf8(body).is_err() {
        return "the body is not UTF-8".into();
    }
    match serde_json::from_slice::<de::IgnoredAny>(body) {
        Err(e) => e.to_string(),
        Ok(_) => error.to_string(),
    }
}

/// Refuses documents nested deeper than [`MAX_DEPTH`], scanning bytes
/// without recursion. Brackets inside strings do not count.
fn check_depth(buf: &[u8]) -> Result<(), JsonError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in buf {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(JsonError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Json::deserialize(deserializer)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Json::UInt(v), Json::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Json::Float(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let value = map.next_value()?;
            pairs.push((key, value));
        }
        Ok(Json::Object(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Json<'static>, JsonError> {
        let mut buf = text.as_bytes().to_vec();
        // Leak for the test's convenience: the tree borrows from the buffer.
        let buf: &'static mut [u8] = Box::leak(buf.split_off(0).into_boxed_slice());
        parse(buf)
    }

    #[test]
    fn keeps_key_order_and_duplicates() {
        let json = parsed(r#"{"b":1,"a":[true,null,"x"],"b":2.5}"#).expect("parse");
        let Json::Object(pairs) = json else { panic!("not an object") };
        let keys: Vec<_> = pairs.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["b", "a", "b"]);
        assert_eq!(pairs[2].1, Json::Float(2.5));
        assert_eq!(pairs[1].1, Json::Array(vec![Json::Bool(true), Json::Null, Json::Str("x".into())]));
    }

    #[test]
    fn numbers_keep_their_kind() {
        assert_eq!(parsed("-1").expect("parse"), Json::Int(-1));
        assert_eq!(parsed("18446744073709551615").expect("parse"), Json::UInt(u64::MAX));
        assert_eq!(parsed("1.0").expect("parse"), Json::Float(1.0));
    }

    #[test]
    fn unescapes_strings() {
        assert_eq!(parsed(r#""a\"b\u00e9""#).expect("parse"), Json::Str("a\"bé".into()));
    }

    #[test]
    fn refuses_deep_nesting_without_recursing() {
        let deep = "[".repeat(1_000_000);
        assert!(matches!(parsed(&deep), Err(JsonError::TooDeep)));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parsed(&ok).is_ok());
        // Brackets inside strings are text, not nesting.
        let in_string = format!(r#"["{}"]"#, "[".repeat(100));
        assert!(parsed(&in_string).is_ok());
    }

    #[test]
    fn refuses_malformed_documents() {
        for bad in ["", "{", r#"{"a":}"#, "[1,]", "nul", "{\"a\":1}x", "\u{1}"] {
            assert!(matches!(parsed(bad), Err(JsonError::Malformed(_))), "{bad:?}");
        }
    }
}
