//! `postbackctl` against a real redis-server holding a known state.

#![allow(clippy::expect_used, missing_docs)]

use std::process::{Command, Output};

use fred::prelude::*;
use postback_common::{Data, Method, Postback, Scalar, records::postback as wire};
use postback_testkit::RedisServer;
use serde_json::Value as Json;

const BIN: &str = env!("CARGO_BIN_EXE_postbackctl");

fn ctl(redis: &RedisServer, args: &[&str]) -> Output {
    Command::new(BIN).env("POSTBACK_REDIS_URL", redis.url()).args(args).output().expect("run postbackctl")
}

fn json(output: &Output) -> Json {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

fn postback(n: i64) -> Vec<u8> {
    wire::encode(&Postback {
        id: uuid_v7(),
        accepted_at_ms: postback_common::time::now_ms(),
        method: Method::Get,
        url: "http://h.example/{n}".into(),
        data: Data(vec![("n".into(), Scalar::Int(n))]),
        trace: None,
        delivery: None,
    })
}

fn uuid_v7() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// Three queued postbacks, two of them held by consumer w1, one retry
/// scheduled, two dead letters (one without a payload).
async fn known_state(redis: &RedisServer) -> (Client, Vec<String>) {
    let client = redis.client().await;
    for n in 0..3 {
        let _: String =
            client.xadd("postbacks", false, None, "*", ("p", bytes::Bytes::from(postback(n)))).await.expect("XADD");
    }
    let _: () = client.xgroup_create("postbacks", "deliver", "0", false).await.expect("group");
    let _: Value = client.xreadgroup("deliver", "w1", Some(2), None, false, "postbacks", ">").await.expect("read");
    let _: u64 = client.zadd("postbacks:retry", None, None, false, false, (1.0, "1:0:x")).await.expect("ZADD");
    let mut dead = Vec::new();
    let fields = vec![
        ("reason", bytes::Bytes::from_static(b"rejected: HTTP 404")),
        ("attempts", bytes::Bytes::from_static(b"1")),
        ("last_status", bytes::Bytes::from_static(b"404")),
        ("p", bytes::Bytes::from(postback(9))),
    ];
    dead.push(client.xadd::<String, _, _, _, _>("postbacks:dead", false, None, "*", fields).await.expect("XADD dead"));
    let fields = vec![("reason", "poison: entry has no \"p\" field"), ("attempts", "0")];
    dead.push(client.xadd::<String, _, _, _, _>("postbacks:dead", false, None, "*", fields).await.expect("XADD dead"));
    (client, dead)
}

/// `--redis-url` takes the sentinel form too, and finds the primary
/// through the sentinels.
#[tokio::test]
async fn status_through_sentinels() {
    let redis = RedisServer::start();
    known_state(&redis).await;
    let sentinels = postback_testkit::Sentinels::start(redis.port(), 1);
    let out = Command::new(BIN).args(["--redis-url", &sentinels.url(), "--json", "status"]).output().expect("run");
    assert_eq!(json(&out)["length"], 3);
}

/// `rediss://` speaks TLS and checks the server's certificate against the
/// system's authorities (here `SSL_CERT_FILE`): with the right authority it
/// works, with another it is refused, and plain `redis://` to the TLS port
/// gets nowhere.
#[tokio::test]
async fn rediss_urls_use_tls_and_check_the_certificate() {
    let tls = postback_testkit::TlsRedis::start();
    known_state(&tls.server).await;
    let status = |url: &str, ca: Option<&std::path::Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["--redis-url", url, "--json", "status"]).env_remove("SSL_CERT_FILE");
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        cmd.output().expect("run postbackctl")
    };
    assert_eq!(json(&status(&tls.url(), Some(&tls.ca_file())))["length"], 3);
    let refused = status(&tls.url(), Some(&tls.other_ca_file()));
    assert!(!refused.status.success(), "a certificate no authority signed was accepted");
    let plain = status(&format!("redis://127.0.0.1:{}", tls.tls_port()), None);
    assert!(!plain.status.success(), "plain text reached the TLS port");
}

/// The group's read counter can be wrong, as on a replica promoted after
/// its primary died: Redis then reports a lag for a stream that holds
/// nothing. The lag shown is never more than the entries no worker holds.
#[tokio::test]
async fn lag_is_zero_when_nothing_waits_whatever_the_read_counter_says() {
    let redis = RedisServer::start();
    let (client, _) = known_state(&redis).await;
    let _: Value = client.xreadgroup("deliver", "w1", None, None, false, "postbacks", ">").await.expect("read");
    let entries: Vec<(String, std::collections::HashMap<String, bytes::Bytes>)> =
        client.xrange("postbacks", "-", "+", None).await.expect("XRANGE");
    let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
    let _: i64 = client.xack("postbacks", "deliver", ids.clone()).await.expect("XACK");
    let _: i64 = client.xdel("postbacks", ids).await.expect("XDEL");
    let args = vec!["SETID", "postbacks", "deliver", "$", "ENTRIESREAD", "0"];
    let _: Value = client.custom(fred::cmd!("XGROUP"), args).await.expect("XGROUP SETID");
    let info: Value = client.xinfo_groups("postbacks").await.expect("XINFO");
    assert!(format!("{info:?}").contains("Integer(3)"), "Redis reports a lag of 3: {info:?}");
    let status = json(&ctl(&redis, &["--json", "status"]));
    assert_eq!((status["length"].as_u64(), status["lag"].as_u64()), (Some(0), Some(0)), "{status}");
}

#[tokio::test]
async fn status_and_pending_describe_the_queue() {
    let redis = RedisServer::start();
    known_state(&redis).await;
    let status = json(&ctl(&redis, &["--json", "status"]));
    assert_eq!(status["length"], 3);
    assert_eq!(status["lag"], 1);
    assert_eq!(status["pending"], 2);
    assert_eq!(status["scheduled_retries"], 1);
    assert_eq!(status["dead_letters"], 2);
    assert!(status["oldest_pending_age_ms"].is_u64());
    assert_eq!(status["consumers"][0]["name"], "w1");
    assert_eq!(status["consumers"][0]["pending"], 2);

    let table = ctl(&redis, &["status"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("scheduled retries") && text.contains("w1"), "{text}");

    let pending = json(&ctl(&redis, &["pending", "--json"]));
    let rows = pending.as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["consumer"] == "w1" && r["deliveries"] == 1));
}

#[tokio::test]
async fn dead_letters_are_listed_shown_and_redriven_exactly_once() {
    let redis = RedisServer::start();
    let (client, dead) = known_state(&redis).await;
    let list = json(&ctl(&redis, &["--json", "dead", "list"]));
    let ids: Vec<_> = list.as_array().expect("list").iter().map(|l| l["id"].as_str().expect("id").to_owned()).collect();
    assert_eq!(ids, [dead[1].clone(), dead[0].clone()], "newest first");

    let shown = json(&ctl(&redis, &["dead", "show", &dead[0]]));
    assert_eq!(shown["reason"], "rejected: HTTP 404");
    assert_eq!(shown["attempts"], 1, "a number, as in `attempts`");
    assert_eq!(shown["last_status"], 404);
    assert_eq!(shown["postback"]["method"], "GET");
    assert_eq!(shown["postback"]["data"]["n"], 9);

    let redriven = json(&ctl(&redis, &["--json", "dead", "redrive", &dead[0]]));
    assert_eq!(redriven[0]["dead_id"], dead[0]);
    let len: u64 = client.xlen("postbacks").await.expect("XLEN");
    assert_eq!(len, 4, "back in the stream");
    let again = ctl(&redis, &["dead", "redrive", &dead[0]]);
    assert_eq!(again.status.code(), Some(3), "a letter is redriven only once");
    assert!(String::from_utf8_lossy(&again.stderr).contains("no dead letter"));
    let len: u64 = client.xlen("postbacks").await.expect("XLEN");
    assert_eq!(len, 4, "and nothing was added the second time");

    // The letter without a postback is named and skipped; the others (none
    // left here but that one) would still be redriven.
    let no_payload = ctl(&redis, &["dead", "redrive", "--all"]);
    assert_eq!(no_payload.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&no_payload.stderr);
    assert!(stderr.contains(&format!("skipped {}: dead letter {} holds no postback", dead[1], dead[1])), "{stderr}");
    let missing = ctl(&redis, &["dead", "show", "1-1"]);
    assert_eq!(missing.status.code(), Some(3));
}

#[test]
fn clear_errors_and_exit_codes() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let down = Command::new(BIN).env("POSTBACK_REDIS_URL", &url).arg("status").output().expect("run");
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("POSTBACK_REDIS_URL"));
    let usage = Command::new(BIN).args(["dead", "redrive"]).output().expect("run");
    assert_eq!(usage.status.code(), Some(2), "redrive needs ids or --all");
    let unknown = Command::new(BIN).arg("explode").output().expect("run");
    assert_eq!(unknown.status.code(), Some(2));
}

#[tokio::test]
async fn attempts_come_from_the_delivery_log() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    for (attempt, outcome, status) in [("1", "retry", "503"), ("2", "delivered", "200")] {
        let fields = vec![
            ("postback_id", "0192-a"),
            ("attempt", attempt),
            ("at", "2026-11-28T00:00:00.000Z"),
            ("outcome", outcome),
            ("status", status),
            ("response_time_ms", "7"),
            ("url", "http://h.example/x"),
        ];
        let _: String = client.xadd("postbacks:log", false, None, "*", fields).await.expect("XADD log");
    }
    let other = vec![("postback_id", "0192-b"), ("attempt", "1"), ("outcome", "dead")];
    let _: String = client.xadd("postbacks:log", false, None, "*", other).await.expect("XADD log");
    // As deliver writes them now: a batch of attempts in one entry.
    let batch = vec![
        (
            "0192-c",
            r#"{"attempt":1,"at":"2026-11-28T00:00:01.000Z","status":null,"outcome":"retry","response_time_ms":0,"url":"http://h.example/c","error":"connect: refused"}"#,
        ),
        (
            "0192-a",
            r#"{"attempt":3,"at":"2026-11-28T00:00:02.000Z","status":200,"outcome":"delivered","response_time_ms":3,"url":"http://h.example/x"}"#,
        ),
    ];
    let _: String = client.xadd("postbacks:log", false, None, "*", batch).await.expect("XADD log");

    let rows = json(&ctl(&redis, &["--json", "attempts", "0192-a"]));
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 3, "from entries of one attempt, as written before batches, and from a batch");
    assert_eq!(rows[0]["attempt"], 3, "newest first; numbers as numbers");
    assert_eq!(rows[1]["attempt"], 2);
    assert_eq!(rows[1]["outcome"], "delivered");
    assert_eq!(rows[2]["status"], 503);
    assert_eq!(rows[2]["response_time_ms"], 7);
    let other = json(&ctl(&redis, &["--json", "attempts", "0192-c"]));
    assert_eq!(other[0]["error"], "connect: refused");
    assert_eq!(other[0]["status"], Json::Null);
    let table = ctl(&redis, &["attempts", "0192-a"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("delivered"));
    let none = ctl(&redis, &["attempts", "0192-zzz"]);
    assert_eq!(none.status.code(), Some(3));
}

/// A version 3 entry as ingest writes it: the entry, and its endpoint
/// record in the hash, counted.
async fn queue_request_entry(client: &Client, items: i64) -> (String, Vec<String>) {
    let first = postback_common::records::request::first_id(postback_common::time::now_ms(), items as usize);
    let postbacks: Vec<Postback> = (0..items)
        .map(|n| Postback {
            id: postback_common::records::request::nth_id(first, n as usize),
            accepted_at_ms: postback_common::records::request::timestamp_ms(first),
            method: Method::Post,
            url: "http://h.example/{n}".into(),
            data: Data(vec![("n".into(), Scalar::Int(n))]),
            trace: None,
            delivery: None,
        })
        .collect();
    let packed = postback_common::records::request::pack(&postbacks);
    assert_eq!(packed.len(), 1);
    let (address, record) = packed[0].endpoint.clone().expect("a version 3 entry");
    let _: i64 = client.hset("postbacks:endpoints", (address.to_string(), record)).await.expect("HSET");
    let _: i64 = client.hincrby("postbacks:endpoints:refs", address.to_string(), 1).await.expect("HINCRBY");
    let _: i64 = client.incr_by("postbacks:batched", items - 1).await.expect("INCRBY");
    let payload = bytes::Bytes::from(packed[0].payload.clone());
    let id: String = client.xadd("postbacks", false, None, "*", ("p", payload)).await.expect("XADD");
    (id, postbacks.iter().map(|p| p.id.to_string()).collect())
}

#[tokio::test]
async fn entries_are_shown_with_their_postbacks_and_counted_in_postbacks() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let (entry_id, ids) = queue_request_entry(&client, 3).await;
    let single: String =
        client.xadd("postbacks", false, None, "*", ("p", bytes::Bytes::from(postback(7)))).await.expect("XADD");

    let shown = json(&ctl(&redis, &["entry", &entry_id]));
    let postbacks = shown["postbacks"].as_array().expect("a request's postbacks");
    let shown_ids: Vec<_> = postbacks.iter().map(|p| p["id"].as_str().expect("id").to_owned()).collect();
    assert_eq!(shown_ids, ids);
    assert_eq!(postbacks[2]["method"], "POST");
    assert_eq!(postbacks[2]["url"], "http://h.example/{n}");
    assert_eq!(postbacks[2]["data"]["n"], 2);
    assert_eq!(json(&ctl(&redis, &["entry", &single]))["postback"]["data"]["n"], 7);

    let status = json(&ctl(&redis, &["--json", "status"]));
    assert_eq!((status["length"].as_u64(), status["postbacks"].as_u64()), (Some(2), Some(4)));

    let _: i64 = client.del("postbacks:endpoints").await.expect("DEL");
    let unresolved = json(&ctl(&redis, &["entry", &entry_id]));
    let why = unresolved["undecodable"].as_str().expect("says why");
    assert!(why.contains("is not in postbacks:endpoints"), "{why}");
    let missing = ctl(&redis, &["entry", "1-1"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no entry 1-1 in postbacks"));
}

#[tokio::test]
async fn an_entry_shows_which_of_its_postbacks_are_finished() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let (entry_id, _) = queue_request_entry(&client, 10).await;
    assert_eq!(json(&ctl(&redis, &["entry", &entry_id]))["finished"], serde_json::json!([]));
    // Positions 1 and 8, as deliver's finish script records them.
    let _: i64 =
        client.hset("postbacks:finished", (&entry_id, bytes::Bytes::from_static(&[0x40, 0x80]))).await.expect("HSET");
    assert_eq!(json(&ctl(&redis, &["entry", &entry_id]))["finished"], serde_json::json!([1, 8]));
}

#[tokio::test]
async fn redrive_all_puts_whole_entries_back_counted_and_skips_what_cannot_go_back() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    // Two version 3 entries dead-lettered whole (as poison), as deliver's
    // finish script leaves them: out of the stream, their references kept.
    let mut letters = Vec::new();
    for items in [4, 3] {
        let (entry_id, _) = queue_request_entry(&client, items).await;
        let entries: Vec<(String, Vec<(String, bytes::Bytes)>)> =
            client.xrange("postbacks", &entry_id, &entry_id, None).await.expect("XRANGE");
        let payload = entries[0].1[0].1.clone();
        let _: i64 = client.xdel("postbacks", &entry_id).await.expect("XDEL");
        let _: i64 = client.decr_by("postbacks:batched", items - 1).await.expect("DECRBY");
        let fields = vec![("reason", bytes::Bytes::from_static(b"poison: test")), ("p", payload)];
        letters
            .push(client.xadd::<String, _, _, _, _>("postbacks:dead", false, None, "*", fields).await.expect("XADD"));
    }
    let nothing = vec![("reason", "poison: entry has no \"p\" field")];
    let empty: String = client.xadd("postbacks:dead", false, None, "*", nothing).await.expect("XADD");
    redis.assert_counts_exact().await;

    let out = ctl(&redis, &["--json", "dead", "redrive", "--all"]);
    assert_eq!(out.status.code(), Some(4), "one letter could not go back");
    let redriven: Json = serde_json::from_slice(&out.stdout).expect("JSON");
    let dead_ids: Vec<_> = redriven.as_array().expect("list").iter().map(|r| r["dead_id"].clone()).collect();
    assert_eq!(dead_ids, [letters[0].as_str(), letters[1].as_str()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("skipped {empty}")));
    assert_eq!(redis.assert_counts_exact().await, 7, "4 + 3 postbacks wait again");

    // A whole entry whose endpoint record is gone would only be poison
    // again: it stays where it is, named.
    let (entry_id, _) = queue_request_entry(&client, 2).await;
    let entries: Vec<(String, Vec<(String, bytes::Bytes)>)> =
        client.xrange("postbacks", &entry_id, &entry_id, None).await.expect("XRANGE");
    let fields = vec![("reason", bytes::Bytes::from_static(b"poison: test")), ("p", entries[0].1[0].1.clone())];
    let orphan: String = client.xadd("postbacks:dead", false, None, "*", fields).await.expect("XADD");
    let _: i64 = client.del("postbacks:endpoints").await.expect("DEL");
    let out = ctl(&redis, &["dead", "redrive", &orphan]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("which is gone from postbacks:endpoints"));
    let still: u64 = client.xlen("postbacks:dead").await.expect("XLEN");
    assert_eq!(still, 2, "the letter without a postback and the orphan stay");
}

#[tokio::test]
async fn dead_export_writes_a_time_range_as_json_lines_page_by_page() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    // 2,500 letters a day old (more than two pages), 3 an hour old, 1 now.
    let now = postback_common::time::now_ms();
    for (age_ms, count, reason) in [(86_400_000, 2_500u64, "day"), (3_600_000, 3, "hour")] {
        for i in 0..count {
            let id = format!("{}-{i}", now - age_ms);
            let fields = vec![("reason", bytes::Bytes::from(reason)), ("p", bytes::Bytes::from(postback(i as i64)))];
            let _: String = client.xadd("postbacks:dead", false, None, id.as_str(), fields).await.expect("XADD");
        }
    }
    let _: String = client.xadd("postbacks:dead", false, None, "*", ("reason", "now")).await.expect("XADD");

    let lines = |output: Output| -> Vec<Json> {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout).expect("utf-8");
        text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect()
    };
    let all = lines(ctl(&redis, &["dead", "export"]));
    assert_eq!(all.len(), 2_504);
    assert_eq!(all[0]["reason"], "day", "oldest first");
    assert_eq!(all[0]["postback"]["data"]["n"], 0, "postbacks decoded");
    assert_eq!(all[2_503]["reason"], "now");

    let recent = lines(ctl(&redis, &["dead", "export", "--since", "2h", "--until", "30m"]));
    assert_eq!(recent.iter().map(|l| l["reason"].as_str().expect("reason")).collect::<Vec<_>>(), ["hour"; 3]);

    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now() - std::time::Duration::from_secs(60));
    assert_eq!(lines(ctl(&redis, &["dead", "export", "--since", &since.to_string()])).len(), 1);

    let bad = ctl(&redis, &["dead", "export", "--since", "yesterday-ish"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
}

#[tokio::test]
async fn retries_are_listed_soonest_first_with_when_and_where() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let now = postback_common::time::now_ms();
    let member = |attempts: u32, n: i64| {
        let mut m = format!("{attempts}:{}:", now - 60_000).into_bytes();
        m.extend(postback(n));
        bytes::Bytes::from(m)
    };
    // One overdue by a minute, one due in an hour.
    let _: u64 = client
        .zadd(
            "postbacks:retry",
            None,
            None,
            false,
            false,
            vec![((now + 3_600_000) as f64, member(1, 1)), ((now - 60_000) as f64, member(3, 2))],
        )
        .await
        .expect("ZADD");
    let rows = json(&ctl(&redis, &["--json", "retries"]));
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["attempts"], 3, "soonest (overdue) first");
    assert!(rows[0]["due_in_ms"].as_i64().expect("due_in_ms") < -50_000);
    assert_eq!(rows[0]["target"], "h.example");
    assert_eq!(rows[0]["postback"]["data"]["n"], 2);
    assert_eq!(rows[0]["postback_id"], rows[0]["postback"]["id"]);
    assert!(rows[1]["due_in_ms"].as_i64().expect("due_in_ms") > 3_500_000);
    let table = String::from_utf8(ctl(&redis, &["retries"]).stdout).expect("utf-8");
    assert!(table.contains("late") && table.contains("in 59m") && table.contains("h.example"), "{table}");

    // Dead letters name their target too.
    let (_, dead) = known_state(&redis).await;
    let shown = json(&ctl(&redis, &["dead", "show", &dead[0]]));
    assert_eq!(shown["target"], "h.example");
    let list = String::from_utf8(ctl(&redis, &["dead", "list"]).stdout).expect("utf-8");
    assert!(list.contains("h.example") && list.contains("404"), "{list}");
}

#[tokio::test]
async fn dead_letters_are_filtered_by_host_reason_and_time_for_list_and_redrive() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let now = postback_common::time::now_ms();
    let letter = |host: &str, reason: &str| {
        let p = Postback {
            id: uuid_v7(),
            accepted_at_ms: now,
            method: Method::Get,
            url: format!("http://{host}/{{n}}"),
            data: Data(vec![("n".into(), Scalar::Int(1))]),
            trace: None,
            delivery: None,
        };
        vec![("reason", bytes::Bytes::from(reason.to_owned())), ("p", bytes::Bytes::from(wire::encode(&p)))]
    };
    // A day ago: 3 exhausted for a.example. Now: 2 exhausted for b.example:8080,
    // 1 rejected for a.example.
    for i in 0..3 {
        let id = format!("{}-{i}", now - 86_400_000);
        let _: String = client
            .xadd(
                "postbacks:dead",
                false,
                None,
                id.as_str(),
                letter("a.example", "gave up after 3 attempts; last: HTTP 503"),
            )
            .await
            .expect("XADD");
    }
    for (host, reason) in [
        ("b.example:8080", "gave up after 3 attempts; last: HTTP 503"),
        ("b.example:8080", "gave up after 3 attempts; last: HTTP 503"),
        ("a.example", "rejected: HTTP 404"),
    ] {
        let _: String = client.xadd("postbacks:dead", false, None, "*", letter(host, reason)).await.expect("XADD");
    }
    let ids = |out: &Output| -> Vec<String> {
        json(out)
            .as_array()
            .expect("letters")
            .iter()
            .map(|l| l["target"].as_str().expect("target").to_owned())
            .collect()
    };
    assert_eq!(ids(&ctl(&redis, &["--json", "dead", "list", "--host", "b.example"])), ["b.example:8080"; 2]);
    assert_eq!(
        ids(&ctl(&redis, &["--json", "dead", "list", "--host", "a.example", "--reason", "rejected"])),
        ["a.example"]
    );
    assert_eq!(ids(&ctl(&redis, &["--json", "dead", "list", "--reason", "exhausted", "--until", "1h"])).len(), 3);
    assert_eq!(ids(&ctl(&redis, &["--json", "dead", "list", "--reason", "exhausted", "--limit", "1"])).len(), 1);

    // A dry run changes nothing.
    let dry = ctl(&redis, &["--json", "dead", "redrive", "--all", "--host", "a.example", "--dry-run"]);
    assert_eq!(ids(&dry).len(), 4);
    let left: u64 = client.xlen("postbacks:dead").await.expect("XLEN");
    assert_eq!(left, 6);
    // The two oldest exhausted letters of a.example go back; the rest stay.
    let redriven = json(&ctl(
        &redis,
        &["--json", "dead", "redrive", "--all", "--host", "a.example", "--reason", "exhausted", "--limit", "2"],
    ));
    assert_eq!(redriven.as_array().expect("redriven").len(), 2);
    let left: u64 = client.xlen("postbacks:dead").await.expect("XLEN");
    assert_eq!(left, 4);
    let queued: u64 = client.xlen("postbacks").await.expect("XLEN");
    assert_eq!(queued, 2);
    let usage = ctl(&redis, &["dead", "redrive", "some-id", "--host", "a.example"]);
    assert_eq!(usage.status.code(), Some(2), "ids and filters do not mix");
}

#[tokio::test]
async fn a_long_redrive_reports_progress() {
    let redis = RedisServer::start();
    let client = redis.client().await;
    let pipeline = client.pipeline();
    for n in 0..1_100 {
        let _: () = pipeline
            .xadd(
                "postbacks:dead",
                false,
                None,
                "*",
                vec![
                    ("reason", bytes::Bytes::from_static(b"gave up after 1 attempts; last: HTTP 503")),
                    ("p", bytes::Bytes::from(postback(n))),
                ],
            )
            .await
            .expect("queue XADD");
    }
    let _: Vec<Value> = pipeline.all().await.expect("XADDs");
    let out = ctl(&redis, &["dead", "redrive", "--all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("redriving: 500 of 1100 done") && progress.contains("redriving: 1000 of 1100 done"),
        "{progress}"
    );
    let queued: u64 = client.xlen("postbacks").await.expect("XLEN");
    assert_eq!(queued, 1_100);
}
