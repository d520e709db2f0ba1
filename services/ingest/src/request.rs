//! Validating an ingest request and turning it into postbacks.
//!
//! The whole request is checked before anything is enqueued (all or
//! nothing). Every problem found is reported with the path of the offending
//! field (`endpoint.method`, `data[3].foo`), so a caller can fix them all in
//! one go.
//!
//! Accepted shape (see `schemas/ingest-request.schema.json`):
//! `{"endpoint": {"method": "GET", "url": "http://…{key}…"}, "data": [{…}, …]}`
//! with `data` a non-empty array of flat objects whose values are strings,
//! numbers, booleans or null, and optionally `"delivery": {"max_attempts",
//! "delay_ms", "timeout_ms"}` ([`postback_common::delivery`]). Unknown fields are refused, so a misspelt
//! field never passes silently.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;

use postback_common::delivery::{self, Delivery};
use postback_common::{Data, Method, Postback, Scalar, records::request as request_entry, template};

use crate::json::Json;

/// At most this many problems are reported for one request.
pub const MAX_REPORTED: usize = 50;

/// Bounds on what one request may hold (`POSTBACK_MAX_*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Data items per request.
    pub max_items: usize,
    /// Keys per data item.
    pub max_keys: usize,
    /// Bytes per key or string value.
    pub max_value_bytes: usize,
    /// Bytes of the URL template, and of the URL expanded with missing keys
    /// empty.
    pub max_url_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_items: 1_000, max_keys: 100, max_value_bytes: 4_096, max_url_bytes: 8_192 }
    }
}

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Path of the field, e.g. `data[3].foo`; `body` for the document itself.
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

/// The problems that make a request unacceptable, in document order (never
/// empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub Vec<Violation>);

#[derive(Default)]
struct Report(Vec<Violation>);

impl Report {
    fn add(&mut self, field: impl Into<String>, detail: impl Into<String>) {
        if self.0.len() < MAX_REPORTED {
            self.0.push(Violation { field: field.into(), detail: detail.into() });
        }
    }
}

/// Checks a parsed request body and builds one postback per data item, each
/// with a fresh UUIDv7 and `accepted_at_ms`.
pub fn postbacks(body: &Json<'_>, accepted_at_ms: u64, limits: &Limits) -> Result<Vec<Postback>, Invalid> {
    let mut report = Report::default();
    let Json::Object(fields) = body else {
        report.add("body", format!("must be a JSON object, got {}", body.kind()));
        return Err(Invalid(report.0));
    };
    let [endpoint, data, policy] = take_fields(fields, ["endpoint", "data", "delivery"], "", &mut report);
    let policy = policy.and_then(|value| check_delivery(value, &mut report));
    let endpoint =
        required(endpoint, "endpoint", &mut report).and_then(|value| check_endpoint(value, limits, &mut report));
    let items =
        required(data, "data", &mut report).map(|value| check_data(value, limits, &mut report)).unwrap_or_default();
    if let Some(lengths) = endpoint.and_then(|(_, url)| template::Lengths::of(url).ok()) {
        for (i, data) in items.iter().enumerate() {
            // The longest the URL can get before deliver's default for
            // missing keys, which deliver checks again. Measured, not
            // expanded: linear in the template plus the item.
            let expanded = lengths.expanded_len(data, "");
            if expanded > limits.max_url_bytes as u64 {
                report.add(
                    format!("data[{i}]"),
                    format!(
                        "makes endpoint.url {expanded} bytes long, over POSTBACK_MAX_URL_BYTES ({})",
                        limits.max_url_bytes
                    ),
                );
            }
        }
    }
    match endpoint {
        Some((method, url)) if report.0.is_empty() => {
            // Consecutive ids from one UUIDv7 of the acceptance time, so a
            // version 3 entry stores neither ids nor times per postback.
            let first = request_entry::first_id(accepted_at_ms, items.len());
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, data)| Postback {
                    id: request_entry::nth_id(first, i),
                    accepted_at_ms,
                    method,
                    url: url.to_owned(),
                    data,
                    trace: None,
                    delivery: policy,
                })
                .collect())
        }
        _ => Err(Invalid(report.0)),
    }
}

/// The delivery policy, each field an integer within its range.
fn check_delivery(value: &Json<'_>, report: &mut Report) -> Option<Delivery> {
    let Json::Object(fields) = value else {
        report.add("delivery", format!("must be an object, got {}", value.kind()));
        return None;
    };
    let before = report.0.len();
    let [max_attempts, delay_ms, timeout_ms] =
        take_fields(fields, ["max_attempts", "delay_ms", "timeout_ms"], "delivery", report);
    let mut number = |value: Option<&Json<'_>>, name: &str, range: std::ops::RangeInclusive<u64>| {
        let got = match value? {
            Json::UInt(n) if range.contains(n) => return Some(*n as u32),
            Json::Int(n) if u64::try_from(*n).is_ok_and(|n| range.contains(&n)) => return Some(*n as u32),
            Json::Int(n) => n.to_string(),
            Json::UInt(n) => n.to_string(),
            other => other.kind().to_owned(),
        };
        let (low, high) = range.into_inner();
        report.add(format!("delivery.{name}"), format!("must be a whole number from {low} to {high}, got {got}"));
        None
    };
    let policy = Delivery {
        max_attempts: number(max_attempts, "max_attempts", delivery::MAX_ATTEMPTS),
        delay_ms: number(delay_ms, "delay_ms", delivery::DELAY_MS),
        timeout_ms: number(timeout_ms, "timeout_ms", delivery::TIMEOUT_MS),
    };
    // An empty object asks for nothing: stored as no policy at all.
    (report.0.len() == before && policy != Delivery::default()).then_some(policy)
}

/// Picks the fields called `names` out of an object's pairs, reporting
/// unknown and repeated ones.
fn take_fields<'a, 'j, const N: usize>(
    pairs: &'a [(Cow<'j, str>, Json<'j>)],
    names: [&str; N],
    parent: &str,
    report: &mut Report,
) -> [Option<&'a Json<'j>>; N] {
    let mut found = [None; N];
    for (key, value) in pairs {
        let at = path(&[Cow::Borrowed(parent)], key);
        match names.iter().position(|name| name == key) {
            None => report.add(at, "unknown field"),
            Some(i) if found[i].is_some() => report.add(at, "given more than once"),
            Some(i) => found[i] = Some(value),
        }
    }
    found
}

/// The value of a required field, reporting it when absent.
fn required<'a, 'j>(value: Option<&'a Json<'j>>, field: &str, report: &mut Report) -> Option<&'a Json<'j>> {
    if value.is_none() {
        report.add(field, "is required");
    }
    value
}

/// A required string field, checked by `check`.
fn required_str<'a, T>(
    value: Option<&'a Json<'_>>,
    field: &str,
    report: &mut Report,
    check: impl FnOnce(&'a str) -> Result<T, String>,
) -> Option<T> {
    match required(value, field, report)? {
        Json::Str(text) => check(text).map_err(|e| report.add(field, e)).ok(),
        other => {
            report.add(field, format!("must be a string, got {}", other.kind()));
            None
        }
    }
}

fn check_endpoint<'a>(value: &'a Json<'a>, limits: &Limits, report: &mut Report) -> Option<(Method, &'a str)> {
    let Json::Object(fields) = value else {
        report.add("endpoint", format!("must be an object, got {}", value.kind()));
        return None;
    };
    let [method, url] = take_fields(fields, ["method", "url"], "endpoint", report);
    let method =
        required_str(method, "endpoint.method", report, |name| name.parse::<Method>().map_err(|e| e.to_string()));
    let url = required_str(url, "endpoint.url", report, |text| {
        if text.len() > limits.max_url_bytes {
            return Err(format!("is {} bytes, over POSTBACK_MAX_URL_BYTES ({})", text.len(), limits.max_url_bytes));
        }
        template::validate(text).map(|()| text).map_err(|e| e.to_string())
    });
    Some((method?, url?))
}

fn check_data(value: &Json<'_>, limits: &Limits, report: &mut Report) -> Vec<Data> {
    let Json::Array(items) = value else {
        report.add("data", format!("must be an array of objects, got {}", value.kind()));
        return Vec::new();
    };
    if items.is_empty() {
        report.add("data", "must hold at least one object");
    }
    if items.len() > limits.max_items {
        report.add("data", format!("holds {} items, over POSTBACK_MAX_ITEMS ({})", items.len(), limits.max_items));
        return Vec::new();
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("data[{i}]");
        let Json::Object(pairs) = item else {
            report.add(at, format!("must be an object, got {}", item.kind()));
            continue;
        };
        if pairs.len() > limits.max_keys {
            report.add(at, format!("holds {} keys, over POSTBACK_MAX_KEYS ({})", pairs.len(), limits.max_keys));
            continue;
        }
        let mut data = Vec::with_capacity(pairs.len());
        let mut seen = HashSet::with_capacity(pairs.len());
        for (key, value) in pairs {
            let too_long = |what: &str, len: usize| {
                format!("{what} is {len} bytes, over POSTBACK_MAX_VALUE_BYTES ({})", limits.max_value_bytes)
            };
            if key.len() > limits.max_value_bytes {
                report.add(path(&[Cow::Borrowed(at.as_str())], key), too_long("key", key.len()));
                continue;
            }
            if let Json::Str(text) = value
                && text.len() > limits.max_value_bytes
            {
                report.add(path(&[Cow::Borrowed(at.as_str())], key), too_long("value", text.len()));
                continue;
            }
            let scalar = match value {
                Json::Null => Scalar::Null,
                Json::Bool(b) => Scalar::Bool(*b),
                Json::Int(n) => Scalar::Int(*n),
                Json::UInt(n) => Scalar::UInt(*n),
                Json::Float(x) => Scalar::Float(*x),
                Json::Str(s) => Scalar::Str(s.as_ref().to_owned()),
                Json::Array(_) | Json::Object(_) => {
                    report.add(
                        path(&[Cow::Borrowed(at.as_str())], key),
                        format!("must be a string, number, boolean or null, got {}", value.kind()),
                    );
                    continue;
                }
            };
            if !seen.insert(key.as_ref()) {
                report.add(path(&[Cow::Borrowed(at.as_str())], key), "given more than once");
                continue;
            }
            data.push((key.as_ref().to_owned(), scalar));
        }
        out.push(Data(data));
    }
    out
}

/// Runs a raw body through parsing and validation and checks what must
/// hold whatever the input: a refusal names at least one field, and an
/// acceptance gives one postback per data item whose postbacks survive the
/// wire format, whose URLs stay within the limit and whose JSON bodies
/// (what a POST sends) are within a small multiple of the request's size.
/// Used by the fuzz target and the regression corpus test.
pub fn check_body(body: &[u8]) {
    let mut buf = body.to_vec();
    let Ok(json) = crate::json::parse(&mut buf) else { return };
    let limits = Limits::default();
    match postbacks(&json, 0, &limits) {
        Err(Invalid(violations)) => assert!(!violations.is_empty(), "a refusal names a field"),
        Ok(accepted) => {
            assert!(!accepted.is_empty());
            let mut json_bytes = 0;
            for postback in &accepted {
                let decoded =
                    postback_common::records::postback::decode(&postback_common::records::postback::encode(postback));
                assert_eq!(decoded.as_ref().ok(), Some(postback), "wire round trip");
                let url = template::expand_within(&postback.url, &postback.data, "", limits.max_url_bytes);
                assert!(url.is_ok(), "an accepted URL expands within the limit: {url:?}");
                json_bytes += serde_json::to_vec(&postback.data).expect("data is JSON").len();
            }
            // A number is the one thing that grows on the way out (`1e15`
            // is written `1000000000000000.0`), by a bounded factor.
            assert!(json_bytes <= 8 * body.len(), "{json_bytes} bytes of JSON bodies from {} bytes", body.len());
        }
    }
}

/// `parent.key`, or `parent["key"]` when the key is not a plain identifier.
fn path(parents: &[Cow<'_, str>], key: &str) -> String {
    let mut out = parents.join(".");
    let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
    } else {
        let _ = write!(out, "[{}]", serde_json::Value::from(key));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Vec<Postback>, Invalid> {
        let mut buf = text.as_bytes().to_vec();
        let json = crate::json::parse(&mut buf).expect("test bodies are JSON");
        postbacks(&json, 1_000, &Limits::default())
    }

    fn fields(text: &str) -> Vec<(String, String)> {
        check(text).expect_err("must be invalid").0.into_iter().map(|v| (v.field, v.detail)).collect()
    }

    const SEED: &str = include_str!("../../../schemas/examples/seed-request.json");

    #[test]
    fn the_seed_sample_is_one_postback() {
        let postbacks = check(SEED).expect("valid");
        assert_eq!(postbacks.len(), 1);
        let p = &postbacks[0];
        assert_eq!(p.method, Method::Get);
        assert_eq!(p.accepted_at_ms, 1_000);
        assert_eq!(p.url, "http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}");
        assert_eq!(p.data.get("mascot"), Some(&Scalar::Str("Gopher".into())));
        assert_eq!(p.id.get_version_num(), 7);
    }

    #[test]
    fn the_documented_examples_are_valid() {
        for example in [
            include_str!("../../../schemas/examples/seed-request.json"),
            include_str!("../../../schemas/examples/post-request.json"),
        ] {
            check(example).expect("schemas/examples must stay valid");
        }
    }

    #[test]
    fn one_postback_per_item_with_distinct_ids() {
        let postbacks =
            check(r#"{"endpoint":{"method":"post","url":"https://h/x"},"data":[{"a":1},{"a":true},{"a":null},{}]}"#)
                .expect("valid");
        assert_eq!(postbacks.len(), 4);
        assert!(postbacks.iter().all(|p| p.method == Method::Post));
        let mut ids: Vec<_> = postbacks.iter().map(|p| p.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), 4);
        assert_eq!(postbacks[1].data.get("a"), Some(&Scalar::Bool(true)));
    }

    #[test]
    fn names_the_offending_field() {
        let ok_endpoint = r#""endpoint":{"method":"GET","url":"http://h/"}"#;
        let cases: Vec<(String, &str)> = vec![
            ("[]".into(), "body"),
            (r#"{"data":[{}]}"#.into(), "endpoint"),
            (format!("{{{ok_endpoint}}}"), "data"),
            (format!(r#"{{{ok_endpoint},"data":[]}}"#), "data"),
            (format!(r#"{{{ok_endpoint},"data":{{}}}}"#), "data"),
            (format!(r#"{{{ok_endpoint},"data":[{{}},{{}},{{}},{{"foo":[1]}}]}}"#), "data[3].foo"),
            (format!(r#"{{{ok_endpoint},"data":[{{"a b":{{}}}}]}}"#), "data[0][\"a b\"]"),
            (format!(r#"{{{ok_endpoint},"data":[1]}}"#), "data[0]"),
            (format!(r#"{{{ok_endpoint},"data":[{{"a":1,"a":2}}]}}"#), "data[0].a"),
            (format!(r#"{{{ok_endpoint},"data":[{{}}],"extra":1}}"#), "extra"),
            (r#"{"endpoint":"GET","data":[{}]}"#.into(), "endpoint"),
            (r#"{"endpoint":{"url":"http://h/"},"data":[{}]}"#.into(), "endpoint.method"),
            (r#"{"endpoint":{"method":"TRACE","url":"http://h/"},"data":[{}]}"#.into(), "endpoint.method"),
            (r#"{"endpoint":{"method":1,"url":"http://h/"},"data":[{}]}"#.into(), "endpoint.method"),
            (r#"{"endpoint":{"method":"GET"},"data":[{}]}"#.into(), "endpoint.url"),
            (r#"{"endpoint":{"method":"GET","url":"ftp://h/"},"data":[{}]}"#.into(), "endpoint.url"),
            (r#"{"endpoint":{"method":"GET","url":"http://h/{a"},"data":[{}]}"#.into(), "endpoint.url"),
            (r#"{"endpoint":{"method":"GET","url":"/relative"},"data":[{}]}"#.into(), "endpoint.url"),
            (r#"{"endpoint":{"method":"GET","url":"http://h/","headers":{}},"data":[{}]}"#.into(), "endpoint.headers"),
        ];
        for (body, field) in cases {
            let found = fields(&body);
            assert_eq!(found[0].0, field, "{body} -> {found:?}");
        }
    }

    #[test]
    fn a_delivery_policy_is_checked_and_carried_by_every_postback() {
        let ok = r#""endpoint":{"method":"GET","url":"http://h/"},"data":[{},{}]"#;
        let postbacks = check(&format!(r#"{{{ok},"delivery":{{"max_attempts":3,"delay_ms":0,"timeout_ms":2500}}}}"#))
            .expect("valid");
        let policy = Delivery { max_attempts: Some(3), delay_ms: Some(0), timeout_ms: Some(2_500) };
        assert!(postbacks.iter().all(|p| p.delivery == Some(policy)));
        let partial = check(&format!(r#"{{{ok},"delivery":{{"delay_ms":3600000}}}}"#)).expect("valid");
        assert_eq!(partial[0].delivery, Some(Delivery { delay_ms: Some(3_600_000), ..Delivery::default() }));
        assert_eq!(check(&format!(r#"{{{ok},"delivery":{{}}}}"#)).expect("valid")[0].delivery, None);
        for (policy, field, says) in [
            (r#"[]"#, "delivery", "must be an object, got an array"),
            (r#"{"max_attempts":0}"#, "delivery.max_attempts", "must be a whole number from 1 to 50, got 0"),
            (r#"{"max_attempts":51}"#, "delivery.max_attempts", "from 1 to 50, got 51"),
            (r#"{"max_attempts":2.5}"#, "delivery.max_attempts", "from 1 to 50, got a number"),
            (r#"{"delay_ms":-1}"#, "delivery.delay_ms", "from 0 to 3600000, got -1"),
            (r#"{"delay_ms":"soon"}"#, "delivery.delay_ms", "got a string"),
            (r#"{"timeout_ms":99}"#, "delivery.timeout_ms", "from 100 to 60000, got 99"),
            (r#"{"timeout_ms":60001}"#, "delivery.timeout_ms", "from 100 to 60000, got 60001"),
            (r#"{"retries":3}"#, "delivery.retries", "unknown field"),
        ] {
            let found = fields(&format!(r#"{{{ok},"delivery":{policy}}}"#));
            assert_eq!(found[0].0, field, "{policy} -> {found:?}");
            assert!(found[0].1.contains(says), "{policy} -> {found:?}");
        }
    }

    #[test]
    fn reports_every_problem_at_once() {
        let found = fields(r#"{"endpoint":{"method":"X","url":"nope"},"data":[{"a":[]},{"b":{}}]}"#);
        let names: Vec<_> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(names, ["endpoint.method", "endpoint.url", "data[0].a", "data[1].b"]);
    }

    #[test]
    fn enforces_the_limits() {
        let limits = Limits { max_items: 2, max_keys: 2, max_value_bytes: 5, max_url_bytes: 40 };
        let check = |text: &str| {
            let mut buf = text.as_bytes().to_vec();
            let json = crate::json::parse(&mut buf).expect("json");
            postbacks(&json, 0, &limits).map(|p| p.len()).map_err(|e| e.0[0].clone())
        };
        let ok = r#"{"endpoint":{"method":"GET","url":"http://h/{a}"},"data":[{"a":"12345","b":1}]}"#;
        assert_eq!(check(ok), Ok(1));
        let cases = [
            (r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{},{},{}]}"#, "data", "POSTBACK_MAX_ITEMS"),
            (
                r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{"a":1,"b":2,"c":3}]}"#,
                "data[0]",
                "POSTBACK_MAX_KEYS",
            ),
            (
                r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{"a":"123456"}]}"#,
                "data[0].a",
                "POSTBACK_MAX_VALUE_BYTES",
            ),
            (
                r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{"abcdef":1}]}"#,
                "data[0].abcdef",
                "POSTBACK_MAX_VALUE_BYTES",
            ),
            (
                r#"{"endpoint":{"method":"GET","url":"http://h/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},"data":[{}]}"#,
                "endpoint.url",
                "POSTBACK_MAX_URL_BYTES",
            ),
            (
                r#"{"endpoint":{"method":"GET","url":"http://h/{a}{a}{a}{a}{a}{a}{a}{a}"},"data":[{"a":"&&&&&"}]}"#,
                "data[0]",
                "POSTBACK_MAX_URL_BYTES",
            ),
        ];
        for (body, field, setting) in cases {
            let violation = check(body).expect_err(body);
            assert_eq!(violation.field, field, "{body}");
            assert!(violation.detail.contains(setting), "{body}: {}", violation.detail);
        }
    }

    #[test]
    fn caps_the_number_of_reported_problems() {
        let items = vec![r#"{"a":[]}"#; 500].join(",");
        let found = fields(&format!(r#"{{"endpoint":{{"method":"GET","url":"http://h/"}},"data":[{items}]}}"#));
        assert_eq!(found.len(), MAX_REPORTED);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        /// Any JSON document, a few levels deep.
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(Value::from),
                ".{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
                    prop::collection::btree_map("[a-z{}]{0,6}", inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1e12f64..1e12).prop_map(Value::from),
                ".{0,20}".prop_map(Value::from),
            ]
        }

        fn run(body: &[u8]) -> Option<Result<Vec<Postback>, Invalid>> {
            let mut buf = body.to_vec();
            let json = crate::json::parse(&mut buf).ok()?;
            Some(postbacks(&json, 0, &Limits::default()))
        }

        proptest! {
            /// Arbitrary bytes are refused or accepted, never a panic.
            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = run(&body);
            }

            /// Any JSON document is refused or accepted, never a panic; a
            /// refusal always names at least one field.
            #[test]
            fn arbitrary_documents_never_panic(doc in json()) {
                let text = serde_json::to_vec(&doc).expect("json");
                if let Some(Err(invalid)) = run(&text) {
                    prop_assert!(!invalid.0.is_empty());
                    prop_assert!(invalid.0.iter().all(|v| !v.field.is_empty() && !v.detail.is_empty()));
                }
            }

            /// Every well-formed request becomes one postback per item, in
            /// order, with the data's values unchanged.
            #[test]
            fn well_formed_requests_are_accepted_as_sent(
                items in prop::collection::vec(prop::collection::btree_map("[a-z]{1,8}", scalar(), 0..6), 1..10),
                method in prop::sample::select(vec!["GET", "post", "Put", "PATCH", "delete"]),
            ) {
                let data: Vec<Value> = items.iter().map(|m| Value::Object(m.clone().into_iter().collect())).collect();
                let body = serde_json::json!({"endpoint": {"method": method, "url": "https://h.example/p?a={a}"}, "data": data});
                let accepted = run(&serde_json::to_vec(&body).expect("json")).expect("json").expect("valid");
                prop_assert_eq!(accepted.len(), items.len());
                for (postback, item) in accepted.iter().zip(&items) {
                    prop_assert_eq!(postback.data.len(), item.len());
                    for (key, value) in item {
                        let got = serde_json::to_value(postback.data.get(key).expect("key kept")).expect("json");
                        prop_assert_eq!(&got, value);
                    }
                }
            }
        }
    }
}
