//! `GET /dashboard` after real traffic: the page any worker serves shows
//! what all of them did, loaded in headless Chromium (Debian's `chromium`;
//! `ops/test.sh` installs it and sets CHROMIUM), which also saves a
//! screenshot to `target/dashboard.png`.

use std::time::Duration;

use postback_testkit::Reply;
use serde_json::json;

use crate::helpers::{Pipeline, WAIT, wait_dead};

#[tokio::test]
async fn the_dashboard_shows_the_traffic_sent() {
    let p = Pipeline::start_with(
        |r, _| if r.target.starts_with("/broken") { Reply::status(410) } else { Reply::status(200) },
        |c| c.max_attempts = 1,
    )
    .await;
    let items: Vec<_> = (0..12).map(|i| json!({ "i": i })).collect();
    p.ingest(&json!({"endpoint": {"method": "GET", "url": p.target("/ok?i={i}")}, "data": items})).await;
    let broken: Vec<_> = (0..3).map(|i| json!({ "i": i })).collect();
    p.ingest(&json!({"endpoint": {"method": "GET", "url": p.target("/broken?i={i}")}, "data": broken})).await;
    wait_dead(&p.redis, 3).await;
    p.wait_drained().await;

    // The counts reach Redis within a flush (2 s).
    let url = format!("{}/dashboard", p.deliver_admin);
    let deadline = tokio::time::Instant::now() + WAIT;
    let html = loop {
        let html = p.http.get(&url).send().await.expect("GET /dashboard").text().await.expect("html");
        if html.contains("id=\"delivered\">delivered, last hour<b>12</b>") {
            break html;
        }
        assert!(tokio::time::Instant::now() < deadline, "the page never showed the 12 deliveries:\n{html}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(html.contains("id=\"failed\">failed attempts, last hour<b>3</b>"), "{html}");
    let host = p.sink.addr().to_string();
    assert!(html.contains(&format!("<td>{host}</td><td>3</td>")), "the failing host is listed: {html}");
    assert!(html.contains("<td>rejected</td><td>3</td>"), "dead letters by reason: {html}");
    assert_eq!(bar_totals(&html), (12, 3), "the bars of the last minutes: {html}");

    let Some(chromium) = std::env::var_os("CHROMIUM") else {
        eprintln!("CHROMIUM is not set: skipping the browser check (ops/test.sh sets it)");
        return;
    };
    let chromium = std::path::PathBuf::from(chromium);
    let profile = tempfile::tempdir().expect("profile dir");
    // Async: the page is served by this very test's runtime.
    let browse = async |extra: &[&str]| {
        let run = tokio::process::Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,900"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("chromium finished in time")
            .expect("run chromium")
    };
    // The DOM as the browser built it: the chart's bars hold the numbers.
    let dom = browse(&["--dump-dom"]).await;
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(dom.matches("class=\"minute\"").count(), 60, "{dom}");
    assert_eq!(bar_totals(&dom), (12, 3), "{dom}");
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = browse(&[&format!("--screenshot={}", shot.display())]).await;
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "no screenshot ({size} bytes): {}", String::from_utf8_lossy(&out.stderr));
    println!("screenshot: {}", shot.display());
}

/// The delivered and failed counts of all the chart's bars, summed (the
/// traffic may straddle a minute).
fn bar_totals(html: &str) -> (u64, u64) {
    let sum = |attribute: &str| -> u64 {
        html.split(attribute).skip(1).filter_map(|rest| rest.split('"').nth(1)?.parse::<u64>().ok()).sum()
    };
    (sum("data-delivered="), sum("data-failed="))
}
