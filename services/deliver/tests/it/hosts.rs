//! Per-host behaviour under load: a slow host is isolated from the others
//! and cheap for Redis.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postback_testkit::{CommandMonitor, RedisServer, Reply, Sink};
use serde_json::json;

use crate::helpers::Pipeline;

/// The scenario: one target answering in 8 s gets twice what its 16
/// slots can take (4 a second against 2) for 60 s, while a healthy target
/// gets 20 a second. The healthy target's postbacks must not wait (p99 of
/// accepted→delivered under 100 ms) and the slow host's overflow must not
/// cycle through Redis (under 5 commands per delivered postback in all,
/// counted by MONITOR; host_busy reschedules a small multiple of the slow
/// host's deliveries).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_host_neither_delays_the_others_nor_busies_redis() {
    const SECONDS: u64 = 60;
    let slow = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_secs(8))).await;
    let healthy = Sink::start_on("127.0.0.2", |_, _| Reply::status(200)).await;
    let pipeline = Pipeline::start_on(RedisServer::start(), healthy, |config| {
        config.http_timeout_ms = 10_000;
        config.claim_idle_ms = 60_000;
    })
    .await;
    let monitor = CommandMonitor::start(pipeline.redis.port()).await;
    let one = |url: String| json!({"endpoint": {"method": "GET", "url": url}, "data": [{"n": "1"}]});
    let (slow_url, healthy_url) = (format!("{}/slow?n={{n}}", slow.base_url()), pipeline.target("/ok?n={n}"));

    let mut sent_at = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..SECONDS * 20 {
        tick.tick().await;
        let at = Instant::now();
        for id in pipeline.ingest(one(healthy_url.clone())).await {
            sent_at.insert(id, at);
        }
        if i % 5 == 0 {
            pipeline.ingest(one(slow_url.clone())).await;
        }
    }
    let received = pipeline.sink.wait_for(sent_at.len(), Duration::from_secs(10)).await;
    let commands = monitor.counts();
    let slow_done = slow.received().len() - slow.unanswered().len();

    let mut delays: Vec<Duration> =
        received.iter().map(|r| r.at.duration_since(sent_at[r.postback_id().expect("id")])).collect();
    delays.sort();
    let p99 = delays[delays.len() * 99 / 100];
    let total: u64 = commands.values().sum();
    let delivered = received.len() + slow_done;
    let per_postback = total as f64 / delivered as f64;
    let metrics = pipeline.deliver_metrics().await;
    let busy = postback_testkit::metric(&metrics, "postback_retries_scheduled_total", &[("reason", "host_busy")])
        .unwrap_or(0.0);
    let mut by_name: Vec<_> = commands.into_iter().collect();
    by_name.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let report = format!(
        "healthy p99 {p99:?} (median {:?}) over {}; slow host delivered {slow_done}; {total} commands for \
         {delivered} delivered = {per_postback:.2} each; host_busy reschedules {busy}; commands {by_name:?}",
        delays[delays.len() / 2],
        delays.len()
    );
    println!("{report}");
    assert!(p99 < Duration::from_millis(100), "{report}");
    assert!(per_postback < 5.0, "{report}");
    // 16 slots of 8 s over the run, less the first 8 s.
    assert!(slow_done as u64 >= (SECONDS - 8) * 2 * 8 / 10, "the slow host is kept busy: {report}");
    assert!(busy <= 4.0 * slow_done as f64, "the slow host's overflow is paced: {report}");
}
