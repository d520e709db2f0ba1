//! The Grafana dashboard (ops/grafana/dashboards/postback.json): every
//! panel's query parses (each becomes a recording rule that `promtool check
//! rules` reads) and names only metrics the services export (read from
//! both services' real `/metrics` after traffic).

use std::collections::BTreeSet;

use postback_testkit::Reply;
use serde_json::{Value, json};

use crate::helpers::{Pipeline, seed_request, wait_dead};

const DASHBOARD: &str = include_str!("../../../../ops/grafana/dashboards/postback.json");

/// Every `expr` of every panel, with where it is.
fn queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let at = format!("{} / {}", panel["title"].as_str().expect("title"), target["refId"]);
            out.push((at, target["expr"].as_str().expect("expr").to_owned()));
        }
    }
    out
}

/// Sample names a `/metrics` text can have: counters with `_total`,
/// histograms with `_bucket`, `_sum`, `_count`, the rest as declared.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => names.insert(format!("{}_total", name.trim_end_matches("_total"))),
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
                true
            }
            _ => names.insert(name.to_owned()),
        };
    }
    names
}

#[tokio::test]
async fn every_panel_query_parses_and_names_only_exported_metrics() {
    // Traffic that makes every family show: a delivery, a retry, a dead
    // letter (labelled families are exported once they have a sample).
    let retried = std::sync::atomic::AtomicBool::new(false);
    let p = Pipeline::start_with(
        move |r, _| match r.target.as_str() {
            "/gone" => Reply::status(404),
            "/flaky" if !retried.swap(true, std::sync::atomic::Ordering::Relaxed) => Reply::status(500),
            _ => Reply::status(200),
        },
        |_| {},
    )
    .await;
    for path in ["/ok", "/flaky", "/gone"] {
        p.ingest(&seed_request(&p.target(path))).await;
    }
    wait_dead(&p.redis, 1).await;
    p.wait_drained().await;
    let ingest_text =
        p.http.get(format!("{}/metrics", p.ingest_base)).send().await.expect("scrape").text().await.expect("text");
    let mut names = exported(&ingest_text);
    names.extend(exported(&p.deliver_metrics().await));

    let queries = queries();
    assert!(queries.len() >= 12, "{} queries", queries.len());
    let mentioned = regex_names(&queries);
    let unknown: Vec<_> = mentioned.iter().filter(|(name, _)| !names.contains(name)).collect();
    assert!(unknown.is_empty(), "panels name metrics no service exports: {unknown:?}\nexported: {names:?}");

    // Each query as a recording rule: promtool parses every one.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| json!({"record": format!("dashboard:query_{i}"), "expr": expr}))
        .collect();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string()).expect("write");
    let Some(promtool) = std::env::var_os("PROMTOOL") else {
        eprintln!("PROMTOOL is not set: skipping `promtool check rules` (ops/test.sh sets it)");
        return;
    };
    let out =
        std::process::Command::new(promtool).args(["check", "rules"]).arg(file.path()).output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check rules:\n{said}");
    assert!(said.contains(&format!("SUCCESS: {} rules found", queries.len())), "{said}");
}

/// The `postback_…` metric names in the queries, with the first panel
/// that names each.
fn regex_names(queries: &[(String, String)]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (at, expr) in queries {
        let bytes = expr.as_bytes();
        let mut i = 0;
        while let Some(found) = expr[i..].find("postback_") {
            let start = i + found;
            let end = start + bytes[start..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
            out.insert((expr[start..end].to_owned(), at.clone()));
            i = end;
        }
    }
    out
}
