//! The values a postback's data may hold: strings, numbers, booleans and null.
//!
//! The same type serialises to MessagePack (the wire format) and to JSON (the
//! body of a POST delivery), so a value keeps its kind end to end: a number
//! stays a number in the JSON body, and is only turned into text where it is
//! placed into a URL.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One value of a postback's `data` object.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// JSON `null`: treated as missing when a URL is expanded.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer that fits in an `i64` (negative ones always land here).
    Int(i64),
    /// A non-negative integer above `i64::MAX`.
    UInt(u64),
    /// Any other number. Never NaN or infinite: JSON cannot express those.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
}

impl Scalar {
    /// The text that replaces a `{key}` placeholder, before percent-encoding,
    /// or `None` for null (which gets the configured default instead).
    ///
    /// Numbers are written in their shortest exact decimal form without an
    /// exponent: `1.50` arrives as `1.5`, `1e3` as `1000`. A caller who needs
    /// a particular spelling sends the value as a string.
    pub fn url_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Scalar::Null => None,
            Scalar::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Scalar::Int(n) => Some(Cow::Owned(n.to_string())),
            Scalar::UInt(n) => Some(Cow::Owned(n.to_string())),
            Scalar::Float(x) => Some(Cow::Owned(x.to_string())),
            Scalar::Str(s) => Some(Cow::Borrowed(s)),
        }
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Scalar::Null => serializer.serialize_unit(),
            Scalar::Bool(b) => serializer.serialize_bool(*b),
            Scalar::Int(n) => serializer.serialize_i64(*n),
            Scalar::UInt(n) => serializer.serialize_u64(*n),
            Scalar::Float(x) => serializer.serialize_f64(*x),
            Scalar::Str(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number, boolean or null")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(i64::try_from(v).map_or(Scalar::UInt(v), Scalar::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        if v.is_finite() { Ok(Scalar::Float(v)) } else { Err(E::custom("numbers must be finite")) }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_text_of_each_kind() {
        assert_eq!(Scalar::Null.url_text(), None);
        assert_eq!(Scalar::Bool(true).url_text().as_deref(), Some("true"));
        assert_eq!(Scalar::Int(-42).url_text().as_deref(), Some("-42"));
        assert_eq!(Scalar::UInt(u64::MAX).url_text().as_deref(), Some("18446744073709551615"));
        assert_eq!(Scalar::Float(1.5).url_text().as_deref(), Some("1.5"));
        assert_eq!(Scalar::Float(1e3).url_text().as_deref(), Some("1000"));
        assert_eq!(Scalar::Str("a b".into()).url_text().as_deref(), Some("a b"));
    }

    #[test]
    fn json_round_trip_keeps_kinds() {
        let values = vec![
            Scalar::Null,
            Scalar::Bool(false),
            Scalar::Int(-7),
            Scalar::UInt(u64::MAX),
            Scalar::Float(0.25),
            Scalar::Str("x".into()),
        ];
        let json = serde_json::to_string(&values).expect("serialise");
        assert_eq!(json, r#"[null,false,-7,18446744073709551615,0.25,"x"]"#);
        let back: Vec<Scalar> = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, values);
    }

    #[test]
    fn small_unsigned_numbers_become_int() {
        let v: Scalar = serde_json::from_str("5").expect("deserialise");
        assert_eq!(v, Scalar::Int(5));
    }
}
