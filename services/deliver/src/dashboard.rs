//! `GET /dashboard` on the admin listener: one page, drawn on the server
//! as HTML with inline SVG (no script, no CDN, nothing to build), showing
//! the whole system from any worker.
//!
//! - Attempts per minute over the last hour, delivered and failed, from
//!   the per-minute counts every worker adds to Redis ([`crate::minutes`]).
//! - The queue now: postbacks waiting, pending in workers, scheduled
//!   retries, dead letters (the same snapshot as `/metrics`).
//! - Dead letters by reason and the ten hosts with the most failed
//!   attempts, over the last hour.
//!
//! Each bar carries its numbers as `data-` attributes, so the page can be
//! checked by a browser as well as read by a person.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::response::Html;
use fred::prelude::*;

use crate::admin::AdminState;
use crate::minutes::{key, now_minute};

/// Minutes shown.
const MINUTES: u64 = 60;

/// The counts of one minute.
#[derive(Debug, Default, Clone)]
struct Minute {
    delivered: u64,
    failed: u64,
}

/// `GET /dashboard`.
pub(crate) async fn page(State(state): State<AdminState>) -> Html<String> {
    let now = now_minute();
    let pipeline = state.redis.pipeline();
    for minute in now + 1 - MINUTES..=now {
        let _: Result<(), _> = pipeline.hgetall(key(&state.minutes, minute)).await;
    }
    let hashes: Vec<HashMap<String, u64>> = pipeline.all().await.unwrap_or_default();
    let mut minutes = vec![Minute::default(); MINUTES as usize];
    let mut dead: HashMap<String, u64> = HashMap::new();
    let mut hosts: HashMap<String, u64> = HashMap::new();
    for (slot, hash) in minutes.iter_mut().zip(&hashes) {
        for (field, n) in hash {
            match field.as_str() {
                "delivered" => slot.delivered += n,
                "failed" => slot.failed += n,
                other => {
                    if let Some(reason) = other.strip_prefix("dead:") {
                        *dead.entry(reason.to_owned()).or_default() += n;
                    } else if let Some(host) = other.strip_prefix("host:") {
                        *hosts.entry(host.to_owned()).or_default() += n;
                    }
                }
            }
        }
    }
    let status = match state.live.partitions() {
        Some(partitions) => postback_common::queue_status::status_of_all(&state.redis, &partitions).await.ok(),
        None => None,
    };
    Html(render(now, &minutes, &dead, &hosts, status.as_ref()))
}

fn render(
    now: u64,
    minutes: &[Minute],
    dead: &HashMap<String, u64>,
    hosts: &HashMap<String, u64>,
    status: Option<&postback_common::queue_status::Status>,
) -> String {
    let total = |f: fn(&Minute) -> u64| minutes.iter().map(f).sum::<u64>();
    let mut html = String::with_capacity(32 * 1024);
    html.push_str(concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Postback delivery</title>",
        "<meta http-equiv=\"refresh\" content=\"30\"><style>",
        "body{font:14px system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;margin-top:28px}",
        ".tiles{display:flex;gap:16px;flex-wrap:wrap}.tile{border:1px solid #ddd;border-radius:6px;padding:10px 16px}",
        ".tile b{display:block;font-size:22px}table{border-collapse:collapse}td,th{padding:4px 12px;border-bottom:1px solid #eee;text-align:left}",
        ".d{fill:#2e7d32}.f{fill:#c62828}.axis{stroke:#999}.label{font-size:11px;fill:#555}",
        "</style></head><body><h1>Postback delivery</h1>"
    ));
    html.push_str("<div class=\"tiles\">");
    let tile = |html: &mut String, id: &str, name: &str, value: String| {
        let _ = write!(html, "<div class=\"tile\" id=\"{id}\">{name}<b>{value}</b></div>");
    };
    let known = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |n| n.to_string());
    tile(&mut html, "delivered", "delivered, last hour", total(|m| m.delivered).to_string());
    tile(&mut html, "failed", "failed attempts, last hour", total(|m| m.failed).to_string());
    tile(&mut html, "backlog", "waiting in the stream", known(status.map(|s| s.postbacks)));
    tile(&mut html, "pending", "pending in workers", known(status.map(|s| s.pending)));
    tile(&mut html, "retries", "scheduled retries", known(status.map(|s| s.scheduled_retries)));
    tile(&mut html, "dead", "dead letters (all)", known(status.map(|s| s.dead_letters)));
    html.push_str("</div><h2>Attempts per minute, last hour (green delivered, red failed)</h2>");
    chart(&mut html, now, minutes);
    table(&mut html, "dead-reasons", "Dead letters by reason, last hour", ("reason", "letters"), dead, usize::MAX);
    table(&mut html, "failing-hosts", "Hosts with the most failed attempts, last hour", ("host", "failed"), hosts, 10);
    html.push_str("</body></html>");
    html
}

/// A stacked bar per minute, oldest on the left.
fn chart(html: &mut String, now: u64, minutes: &[Minute]) {
    let (width, height, bar) = (720.0, 200.0, 12.0);
    let peak = minutes.iter().map(|m| m.delivered + m.failed).max().unwrap_or(0).max(1) as f64;
    let _ = write!(
        html,
        "<svg id=\"attempts\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\" role=\"img\" data-peak=\"{peak}\">",
        width + 60.0,
        height + 30.0,
        width + 60.0,
        height + 30.0
    );
    let _ = write!(html, "<line class=\"axis\" x1=\"50\" y1=\"{height}\" x2=\"{}\" y2=\"{height}\"/>", width + 50.0);
    let _ = write!(html, "<text class=\"label\" x=\"0\" y=\"12\">{peak}/min</text>");
    let _ = write!(html, "<text class=\"label\" x=\"50\" y=\"{}\">−60 min</text>", height + 20.0);
    let _ = write!(html, "<text class=\"label\" x=\"{}\" y=\"{}\">now</text>", width + 25.0, height + 20.0);
    let first = now + 1 - minutes.len() as u64;
    for (i, m) in minutes.iter().enumerate() {
        let x = 50.0 + i as f64 * bar;
        let delivered = m.delivered as f64 / peak * (height - 10.0);
        let failed = m.failed as f64 / peak * (height - 10.0);
        let _ = write!(
            html,
            "<g class=\"minute\" data-minute=\"{}\" data-delivered=\"{}\" data-failed=\"{}\"><title>{} delivered, {} failed</title>\
             <rect class=\"d\" x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{delivered}\"/>\
             <rect class=\"f\" x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{failed}\"/></g>",
            first + i as u64,
            m.delivered,
            m.failed,
            m.delivered,
            m.failed,
            height - delivered,
            bar - 2.0,
            height - delivered - failed,
            bar - 2.0,
        );
    }
    html.push_str("</svg>");
}

/// A two-column table of `rows`, largest first, at most `limit` rows.
fn table(html: &mut String, id: &str, title: &str, heads: (&str, &str), rows: &HashMap<String, u64>, limit: usize) {
    let mut rows: Vec<_> = rows.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let _ = write!(html, "<h2>{title}</h2><table id=\"{id}\"><tr><th>{}</th><th>{}</th></tr>", heads.0, heads.1);
    if rows.is_empty() {
        html.push_str("<tr><td colspan=\"2\">none</td></tr>");
    }
    for (name, n) in rows.into_iter().take(limit) {
        let _ = write!(html, "<tr><td>{}</td><td>{n}</td></tr>", escape(name));
    }
    html.push_str("</table>");
}

/// `text` safe inside HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bars_tables_and_escapes_names() {
        let mut minutes = vec![Minute::default(); 60];
        minutes[59] = Minute { delivered: 7, failed: 3 };
        let hosts = HashMap::from([("<evil>:80".to_owned(), 3)]);
        let dead = HashMap::from([("exhausted".to_owned(), 2)]);
        let html = render(1_000, &minutes, &dead, &hosts, None);
        assert!(html.contains("data-minute=\"1000\" data-delivered=\"7\" data-failed=\"3\""));
        assert!(html.contains("<td>&lt;evil&gt;:80</td><td>3</td>"));
        assert!(html.contains("<td>exhausted</td><td>2</td>"));
        assert_eq!(html.matches("class=\"minute\"").count(), 60);
        assert!(!html.contains("<script"), "no script at all");
    }
}
