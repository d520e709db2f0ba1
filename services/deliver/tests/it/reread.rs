//! Entries handed to a live worker that never reached its hands: a read
//! whose answer was lost with its connection, a blocked read whose
//! connection was killed, connections killed while entries are handed
//! out. Each is taken again within seconds (not the claim idle of a
//! minute), and nothing is sent twice.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use fred::prelude::*;
use postback_testkit::{RedisServer, Reply, ReplyCutter, Sink};
use serde_json::json;

use crate::helpers::{DELIVER_BIN, deliver_env, enqueue, enqueue_each, spawn_quiet};

/// Far longer than any wait of these tests: an entry left stranded would
/// only come back after it.
const CLAIM_IDLE: &str = "60000";

fn envs(redis: &RedisServer, url: String) -> Vec<(&'static str, String)> {
    deliver_env(
        redis,
        &[
            ("POSTBACK_REDIS_URL", url),
            ("POSTBACK_CLAIM_IDLE_MS", CLAIM_IDLE.into()),
            ("POSTBACK_READ_BLOCK_MS", "2000".into()),
            ("RUST_LOG", "warn".into()),
        ],
    )
}

/// How many times each postback id reached the sink.
fn times(sink: &Sink) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in sink.received() {
        *seen.entry(r.postback_id().expect("id").to_owned()).or_default() += 1;
    }
    seen
}

async fn assert_each_once(sink: &Sink, redis: &RedisServer, ids: &[String], within: Duration) {
    sink.wait_for(ids.len(), within).await;
    redis.wait_nothing_to_deliver(Duration::from_secs(5)).await;
    let seen = times(sink);
    for id in ids {
        assert_eq!(seen.get(id), Some(&1), "postback {id} reached the sink {:?} times", seen.get(id));
    }
    assert_eq!(seen.len(), ids.len(), "only the queued postbacks arrived");
    redis.assert_no_records_left().await;
}

/// The ids of the clients blocked in XREADGROUP.
async fn blocked_readers(client: &Client) -> Vec<String> {
    let list: String = client.custom(fred::cmd!("CLIENT"), vec!["LIST"]).await.expect("CLIENT LIST");
    list.lines()
        .filter(|l| l.contains("cmd=xreadgroup") && l.contains("flags=b"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")).map(str::to_owned))
        .collect()
}

/// Kills every connection deliver has open through `relay`.
async fn kill_connections(client: &Client, relay: &ReplyCutter) {
    for addr in relay.upstream_addrs() {
        // Gone already, if it closed meanwhile.
        let kill = client
            .custom::<Value, _>(fred::cmd!("CLIENT"), vec!["KILL".to_owned(), "ADDR".to_owned(), addr.to_string()]);
        let _ = kill.await;
    }
}

/// The id of the stream's first entry.
async fn first_entry_id(client: &Client) -> String {
    let entries: Vec<(String, HashMap<String, bytes::Bytes>)> =
        client.xrange("postbacks", "-", "+", None).await.expect("XRANGE");
    entries.into_iter().next().expect("an entry").0
}

/// Returns once the sink has answered every request it received.
async fn wait_answered(sink: &Sink) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sink.unanswered().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the partner never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sink that answers postbacks whose target says "slow" after 1.5 s,
/// the others at once.
async fn slow_sink() -> Sink {
    Sink::start_with(|r, _| {
        let delay = if r.target.contains("slow") { 1_500 } else { 0 };
        Reply::status(200).delay(Duration::from_millis(delay))
    })
    .await
}

#[tokio::test]
async fn reads_whose_answer_was_lost_are_taken_again_within_seconds() {
    let redis = RedisServer::start();
    let cutter = ReplyCutter::start(redis.port()).await;
    let sink = Sink::start().await;
    let _deliver = spawn_quiet(Path::new(DELIVER_BIN), &envs(&redis, cutter.url()));
    let url = format!("{}/r?m={{m}}", sink.base_url());
    let mut ids = enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": [{"m": "warm"}]})).await;
    sink.wait_for(1, Duration::from_secs(10)).await;
    // Each time, the reply that hands the marked entry over is lost, and
    // other entries keep coming around it.
    for round in 0..5 {
        let marker = format!("CUT{round}X");
        cutter.cut_next(marker.as_bytes());
        for i in 0..3 {
            let m = if i == 1 { marker.clone() } else { format!("r{round}i{i}") };
            let data = vec![json!({"m": m}), json!({"m": format!("{m}b")})];
            ids.extend(enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": data})).await);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        sink.wait_for(ids.len(), Duration::from_secs(10)).await;
        assert!(!cutter.armed(), "round {round}: the marked reply was never sent");
    }
    assert_eq!(cutter.cuts(), 5);
    assert_each_once(&sink, &redis, &ids, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn killed_reader_connections_resume_within_seconds_without_repeats() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    // Deliver's connections, and only those, pass the relay: it says which
    // to kill.
    let relay = ReplyCutter::start(redis.port()).await;
    let sink = Sink::start().await;
    let _deliver = spawn_quiet(Path::new(DELIVER_BIN), &envs(&redis, relay.url()));
    let url = format!("{}/k?i={{i}}", sink.base_url());
    // During a blocked read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let readers = loop {
        let readers = blocked_readers(&client).await;
        if !readers.is_empty() {
            break readers;
        }
        assert!(tokio::time::Instant::now() < deadline, "deliver never blocked in XREADGROUP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for id in readers {
        let _: Value = client.custom(fred::cmd!("CLIENT"), vec!["KILL", "ID", id.as_str()]).await.expect("KILL");
    }
    let mut ids = enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": [{"i": 0}]})).await;
    sink.wait_for(1, Duration::from_secs(5)).await;
    // While entries are being handed out: every connection deliver has is
    // killed, again and again.
    let queue = async {
        let mut ids = Vec::new();
        for round in 0..8 {
            let bodies = (0..25)
                .map(|i| {
                    let data: Vec<_> = (0..(i % 3 + 1)).map(|j| json!({"i": round * 1000 + i * 10 + j})).collect();
                    json!({"endpoint": {"method": "GET", "url": url}, "data": data})
                })
                .collect();
            ids.extend(enqueue_each(&redis, bodies, 0, 1).await);
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        ids
    };
    let kill = async {
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(70)).await;
            kill_connections(&client, &relay).await;
        }
    };
    let (queued, ()) = tokio::join!(queue, kill);
    ids.extend(queued);
    assert_each_once(&sink, &redis, &ids, Duration::from_secs(15)).await;
}

/// Redis forgets a read, as a failover to a replica that had not received
/// it does: while the worker that read an entry is still waiting for its
/// partner, the entry is new again, and the next read hands it to that
/// same worker. The handling under way goes on alone: the postback fails,
/// is scheduled again and delivered by its retry, and is not also attempted
/// afresh from its entry (which delivered it twice, on two paths, once the
/// retry was recorded while the second handling's attempt was under way).
#[tokio::test]
async fn an_entry_handed_over_again_while_handled_keeps_one_path() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    // The first postback's first attempt fails after 0.5 s, its second
    // succeeds after 1.5 s, later ones at once: the handling under way
    // records its retry while a second handling would be attempting.
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let sink = Sink::start_with(move |r, _| {
        if !r.target.contains("first") {
            return Reply::status(200);
        }
        match tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Reply::status(500).delay(Duration::from_millis(500)),
            1 => Reply::status(200).delay(Duration::from_millis(1_500)),
            _ => Reply::status(200),
        }
    })
    .await;
    let mut envs = envs(&redis, redis.url());
    envs.push(("POSTBACK_RETRY_BASE_MS", "200".into()));
    let _deliver = spawn_quiet(Path::new(DELIVER_BIN), &envs);
    let url = format!("{}/f?m={{m}}", sink.base_url());
    let body = |m: &str| json!({"endpoint": {"method": "GET", "url": url}, "data": [{"m": m}]});
    let first = enqueue(&redis, body("first")).await;
    sink.wait_for(1, Duration::from_secs(10)).await;
    // Forgotten: not pending, and new to the group.
    let entry_id = &first_entry_id(&client).await;
    let _: i64 = client.xack("postbacks", "deliver", entry_id.as_str()).await.expect("XACK");
    let _: () = client.xgroup_setid("postbacks", "deliver", "0").await.expect("XGROUP SETID");
    // Another entry wakes the blocked read, which hands over both.
    let second = enqueue(&redis, body("second")).await;
    let ids = [first.clone(), second].concat();
    sink.wait_for(3, Duration::from_secs(10)).await;
    // Until the failure is answered, its retry made and nothing is left.
    wait_answered(&sink).await;
    redis.wait_nothing_to_deliver(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = times(&sink);
    assert_eq!(seen.get(&first[0]), Some(&2), "the first postback: one failure, one retry");
    assert_eq!(seen.len(), ids.len(), "only the queued postbacks arrived: {seen:?}");
    redis.assert_no_records_left().await;
}

/// Redis loses a read while the worker that made it waits for the
/// partner's answer (as a failover to a replica that had not received the
/// read does): the entry is in the stream and no consumer holds it. The
/// answer is recorded all the same, and the entry leaves the stream; it
/// is not handed out again and sent a second time.
#[tokio::test]
async fn an_answer_for_an_entry_whose_read_was_lost_is_recorded_not_sent_again() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let sink = Sink::start_with(|r, _| {
        let delay = if r.target.contains("first") { 1_000 } else { 0 };
        Reply::status(200).delay(Duration::from_millis(delay))
    })
    .await;
    let mut envs = envs(&redis, redis.url());
    // The blocked read is not asked again before the second entry wakes it.
    envs.push(("POSTBACK_READ_BLOCK_MS", "10000".into()));
    let _deliver = spawn_quiet(Path::new(DELIVER_BIN), &envs);
    let url = format!("{}/l?m={{m}}", sink.base_url());
    let body = |m: &str| json!({"endpoint": {"method": "GET", "url": url}, "data": [{"m": m}, {"m": format!("{m}b")}]});
    let first = enqueue(&redis, body("first")).await;
    sink.wait_for(2, Duration::from_secs(10)).await;
    let entry_id = &first_entry_id(&client).await;
    let _: i64 = client.xack("postbacks", "deliver", entry_id.as_str()).await.expect("XACK");
    let _: () = client.xgroup_setid("postbacks", "deliver", "0").await.expect("XGROUP SETID");
    // Answered and recorded; then a new entry wakes the read.
    wait_answered(&sink).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = enqueue(&redis, body("second")).await;
    let ids = [first, second].concat();
    assert_each_once(&sink, &redis, &ids, Duration::from_secs(10)).await;
}

/// Redis loses the record of one postback of an entry while the worker
/// is still handling the others, and the worker reconnects meanwhile (a
/// failover to a replica that had not received the record). The others'
/// records land, and the entry is left this worker's with one postback
/// unfinished: the worker looks for it again once its handling is over,
/// within seconds (not the claim idle of a minute), and delivers the lost
/// one again.
#[tokio::test]
async fn an_entry_left_part_finished_by_a_lost_record_is_taken_again_within_seconds() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let relay = ReplyCutter::start(redis.port()).await;
    let sink = slow_sink().await;
    let _deliver = spawn_quiet(Path::new(DELIVER_BIN), &envs(&redis, relay.url()));
    let url = format!("{}/p?m={{m}}", sink.base_url());
    let data = json!([{"m": "fast"}, {"m": "slow1"}, {"m": "slow2"}]);
    let ids = enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": data})).await;
    let entry_id = &first_entry_id(&client).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let bits: Option<bytes::Bytes> = client.hget("postbacks:finished", entry_id.as_str()).await.expect("HGET");
        if bits.is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the fast postback was never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The worker reconnects, and the fast one's record is lost.
    for addr in relay.upstream_addrs() {
        let kill = client
            .custom::<Value, _>(fred::cmd!("CLIENT"), vec!["KILL".to_owned(), "ADDR".to_owned(), addr.to_string()]);
        let _ = kill.await;
    }
    let _: i64 = client.hdel("postbacks:finished", entry_id.as_str()).await.expect("HDEL");
    let _: i64 = client.incr_by("postbacks:batched", 1).await.expect("INCRBY");
    // Another entry keeps the worker taking, so it sees the reconnect
    // while the slow ones are still under way.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let woke = enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": [{"m": "wake"}]})).await;
    sink.wait_for(5, Duration::from_secs(10)).await;
    redis.wait_nothing_to_deliver(Duration::from_secs(10)).await;
    let seen = times(&sink);
    assert_eq!(seen.get(&woke[0]), Some(&1));
    assert_eq!(seen.get(&ids[0]), Some(&2), "the postback whose record was lost: again");
    assert_eq!((seen.get(&ids[1]), seen.get(&ids[2])), (Some(&1), Some(&1)), "the others: once");
    redis.assert_no_records_left().await;
}

/// A postback waits in the worker's hands for a slot while the worker
/// reconnects, and Redis comes back without its entry (a failover to a
/// replica that had not received it, or its read): the worker asks before
/// the attempt, finds the entry no longer its own, and does not send it.
#[tokio::test]
async fn a_postback_whose_entry_redis_lost_while_it_waited_is_not_attempted() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let relay = ReplyCutter::start(redis.port()).await;
    let sink = slow_sink().await;
    let mut envs = envs(&redis, relay.url());
    // One slot: the second postback waits for the first's.
    envs.push(("POSTBACK_DELIVER_CONCURRENCY", "1".into()));
    let _deliver = spawn_quiet(Path::new(DELIVER_BIN), &envs);
    let url = format!("{}/o?m={{m}}", sink.base_url());
    let data = json!([{"m": "slow"}, {"m": "waiting"}]);
    let ids = enqueue(&redis, json!({"endpoint": {"method": "GET", "url": url}, "data": data})).await;
    sink.wait_for(1, Duration::from_secs(10)).await;
    for addr in relay.upstream_addrs() {
        let kill = client
            .custom::<Value, _>(fred::cmd!("CLIENT"), vec!["KILL".to_owned(), "ADDR".to_owned(), addr.to_string()]);
        let _ = kill.await;
    }
    let entry_id = &first_entry_id(&client).await;
    let _: i64 = client.xack("postbacks", "deliver", entry_id.as_str()).await.expect("XACK");
    let _: i64 = client.xdel("postbacks", entry_id.as_str()).await.expect("XDEL");
    // The slow one answered, and time for the other's turn.
    wait_answered(&sink).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = times(&sink);
    assert_eq!(seen.get(&ids[0]), Some(&1));
    assert_eq!(seen.get(&ids[1]), None, "the postback whose entry Redis lost was sent: {seen:?}");
}
