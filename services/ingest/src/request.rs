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
//! numbers, booleans or null. Unknown fields are refused, so a misspelt
//! field never passes silently.

use std::borrow::Cow;
use std::fmt::Write as _;

use postback_common::{Data, Method, Postback, Scalar, template};
use uuid::Uuid;

use crate::json::Json;

/// At most this many problems are reported for one request.
pub const MAX_REPORTED: usize = 50;

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
pub fn postbacks(body: &Json<'_>, accepted_at_ms: u64) -> Result<Vec<Postback>, Invalid> {
    let mut report = Report::default();
    let Json::Object(fields) = body else {
        report.add("body", format!("must be a JSON object, got {}", body.kind()));
        return Err(Invalid(report.0));
    };
    let [endpoint, data] = take_fields(fields, ["endpoint", "data"], "", &mut report);
    let endpoint = required(endpoint, "endpoint", &mut report).and_then(|value| check_endpoint(value, &mut report));
    let items = required(data, "data", &mut report).map(|value| check_data(value, &mut report)).unwrap_or_default();
    match endpoint {
        Some((method, url)) if report.0.is_empty() => Ok(items
            .into_iter()
            .map(|data| Postback { id: Uuid::now_v7(), accepted_at_ms, method, url: url.to_owned(), data })
            .collect()),
        _ => Err(Invalid(report.0)),
    }
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

fn check_endpoint<'a>(value: &'a Json<'a>, report: &mut Report) -> Option<(Method, &'a str)> {
    let Json::Object(fields) = value else {
        report.add("endpoint", format!("must be an object, got {}", value.kind()));
        return None;
    };
    let [method, url] = take_fields(fields, ["method", "url"], "endpoint", report);
    let method =
        required_str(method, "endpoint.method", report, |name| name.parse::<Method>().map_err(|e| e.to_string()));
    let url = required_str(url, "endpoint.url", report, |text| {
        template::validate(text).map(|()| text).map_err(|e| e.to_string())
    });
    Some((method?, url?))
}

fn check_data(value: &Json<'_>, report: &mut Report) -> Vec<Data> {
    let Json::Array(items) = value else {
        report.add("data", format!("must be an array of objects, got {}", value.kind()));
        return Vec::new();
    };
    if items.is_empty() {
        report.add("data", "must hold at least one object");
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("data[{i}]");
        let Json::Object(pairs) = item else {
            report.add(at, format!("must be an object, got {}", item.kind()));
            continue;
        };
        let mut data = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
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
            if data.iter().any(|(k, _): &(String, Scalar)| k == key.as_ref()) {
                report.add(path(&[Cow::Borrowed(at.as_str())], key), "given more than once");
                continue;
            }
            data.push((key.as_ref().to_owned(), scalar));
        }
        out.push(Data(data));
    }
    out
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
        postbacks(&json, 1_000)
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
    fn reports_every_problem_at_once() {
        let found = fields(r#"{"endpoint":{"method":"X","url":"nope"},"data":[{"a":[]},{"b":{}}]}"#);
        let names: Vec<_> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(names, ["endpoint.method", "endpoint.url", "data[0].a", "data[1].b"]);
    }

    #[test]
    fn caps_the_number_of_reported_problems() {
        let items = vec![r#"{"a":[]}"#; 500].join(",");
        let found = fields(&format!(r#"{{"endpoint":{{"method":"GET","url":"http://h/"}},"data":[{items}]}}"#));
        assert_eq!(found.len(), MAX_REPORTED);
    }
}
