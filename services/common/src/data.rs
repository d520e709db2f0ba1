//! A postback's `data` object: an ordered list of key/value pairs.
//!
//! Order is kept as the caller sent it, so a POST delivery's JSON body lists
//! the keys in the same order as the ingest request did.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::scalar::Scalar;

/// The flat data object of one postback. Keys are unique (ingest refuses
/// duplicates), so a lookup by key is unambiguous.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Data(pub Vec<(String, Scalar)>);

impl Data {
    /// The value stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Scalar> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>> FromIterator<(K, Scalar)> for Data {
    fn from_iter<I: IntoIterator<Item = (K, Scalar)>>(iter: I) -> Self {
        Data(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Data;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of strings to scalars")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Data, A::Error> {
        // Cap the pre-allocation: the size hint comes from outside data.
        let mut pairs = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
        while let Some((k, v)) = access.next_entry::<String, Scalar>()? {
            pairs.push((k, v));
        }
        Ok(Data(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_in_json() {
        let data: Data = [("z", Scalar::Int(1)), ("a", Scalar::Bool(true))].into_iter().collect();
        assert_eq!(serde_json::to_string(&data).expect("json"), r#"{"z":1,"a":true}"#);
        assert_eq!(data.get("a"), Some(&Scalar::Bool(true)));
        assert_eq!(data.get("missing"), None);
    }
}
