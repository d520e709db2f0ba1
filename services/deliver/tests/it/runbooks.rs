//! The runbooks, tried: each test puts a real stack (redis-server, the
//! real deliver binary or app, a partner on loopback) into the state a
//! runbook page is about, runs the commands that page gives (taken from
//! its `sh` blocks, so a page that drops or changes one fails here), and
//! checks that their output shows what the page says it shows.
//!
//! The pages assume the default addresses; the shell they run in points
//! `redis-cli` at the test's Redis, `POSTBACK_REDIS_URL` at it, puts
//! `postbackctl` on PATH, and rewrites 127.0.0.1:8080 / 127.0.0.1:8081 to
//! the test's ingest and deliver admin addresses (and port 26379 to one of
//! its Sentinels).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::prelude::*;
use postback_testkit::{RedisServer, Reply, Sink};
use serde_json::json;

use crate::helpers::{DELIVER_BIN, Pipeline, Running, WAIT, admin_of, deliver_env, enqueue, enqueue_in, wait_dead};

fn page(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../runbooks").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shell commands of a page: every line of its `sh` blocks, with
/// continuation lines joined and trailing comments cut.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_block = trimmed == "```sh";
            continue;
        }
        if !in_block || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let code = match trimmed.find("  #") {
            Some(at) => trimmed[..at].trim_end(),
            None => trimmed,
        };
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(code);
        out.push(std::mem::take(&mut pending));
    }
    out
}

/// The command of `page` that starts with `start`.
fn command(page_name: &str, start: &str) -> String {
    let all = commands(&page(page_name));
    all.iter()
        .find(|c| c.starts_with(start))
        .unwrap_or_else(|| panic!("runbooks/{page_name} no longer gives a command starting {start:?}: {all:#?}"))
        .clone()
}

/// Where the pages' default addresses point in this test.
struct Shell {
    redis: String,
    redis_port: u16,
    ingest: Option<String>,
    admin: Option<String>,
    /// A Sentinel's port, for the pages' `redis-cli -p 26379`.
    sentinel: Option<u16>,
}

impl Shell {
    fn new(redis: &RedisServer) -> Self {
        Self { redis: redis.url(), redis_port: redis.port(), ingest: None, admin: None, sentinel: None }
    }

    /// Runs `command` in bash; its stdout and stderr together.
    async fn run(&self, command: &str) -> String {
        let mut command = command.to_owned();
        if let Some(admin) = &self.admin {
            command = command.replace("127.0.0.1:8081", admin);
        }
        if let Some(ingest) = &self.ingest {
            command = command.replace("127.0.0.1:8080", ingest);
        }
        if let Some(port) = self.sentinel {
            command = command.replace("-p 26379", &format!("-p {port}"));
        }
        let bin_dir = std::env::current_exe()
            .expect("test binary")
            .parent()
            .and_then(|d| d.parent())
            .expect("target dir")
            .to_owned();
        assert!(bin_dir.join("postbackctl").exists(), "build postbackctl first: cargo build -p postback-ctl");
        let prelude = format!("redis-cli() {{ command redis-cli -p {} \"$@\"; }}; ", self.redis_port);
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let run = tokio::process::Command::new("bash")
            .args(["-c", &format!("{prelude}{command}")])
            .env("PATH", path)
            .env("POSTBACK_REDIS_URL", &self.redis)
            .kill_on_drop(true)
            .output();
        let out =
            tokio::time::timeout(WAIT, run).await.unwrap_or_else(|_| panic!("{command} did not finish")).expect("bash");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("$ {command}\n{text}");
        text
    }
}

/// The deliver binary on `redis` with its admin on a free port.
fn deliver(redis: &RedisServer, extra: &[(&'static str, String)]) -> (Running, String) {
    let envs = deliver_env(redis, &[&[("RUST_LOG", "warn".to_owned())], extra].concat());
    (Running::spawn(DELIVER_BIN, &envs), admin_of(&envs))
}

async fn wait_ready(admin: &str) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while http.get(format!("http://{admin}/readyz")).send().await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "deliver never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn request(url: String, n: usize) -> serde_json::Value {
    let data: Vec<_> = (0..n).map(|i| json!({ "i": i })).collect();
    json!({"endpoint": {"method": "GET", "url": url}, "data": data})
}

#[tokio::test]
async fn a_worker_stopped_with_sigstop_shows_as_hung() {
    let redis = RedisServer::start();
    let (worker, admin) = deliver(&redis, &[]);
    wait_ready(&admin).await;
    let pid = worker.child.id().expect("pid");
    worker.signal("-STOP");
    let shell = Shell { admin: Some(admin), ..Shell::new(&redis) };
    let page = "backlog-growing.md";

    let ps = shell.run(&command(page, "ps -o pid,stat")).await;
    let line = ps.lines().find(|l| l.trim_start().starts_with(&pid.to_string())).unwrap_or_else(|| panic!("{ps}"));
    assert!(line.split_whitespace().nth(1).is_some_and(|stat| stat.starts_with('T')), "state T: {line}");
    let readyz = shell.run(&command(page, "curl -m 2 -s 127.0.0.1:8081/readyz")).await;
    assert_eq!(readyz.trim(), "28", "readyz timed out");
    worker.signal("-CONT");
}

#[tokio::test]
async fn a_partner_answering_404_shows_in_dead_list_with_its_host() {
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(404)).await;
    let (_worker, _admin) = deliver(&redis, &[]);
    enqueue(&redis, request(format!("{}/gone?i={{i}}", sink.base_url()), 2)).await;
    wait_dead(&redis, 2).await;
    let shell = Shell::new(&redis);
    let list = shell.run(&command("dead-letters.md", "postbackctl dead list --count 10")).await;
    assert!(list.contains("rejected: HTTP 404"), "{list}");
    assert!(list.contains(&sink.addr().to_string()), "the target is named: {list}");
}

#[tokio::test]
async fn redis_killed_shows_in_readyz_and_ping() {
    let mut p = Pipeline::start().await;
    let shell = Shell { ingest: Some(p.ingest_base.trim_start_matches("http://").to_owned()), ..Shell::new(&p.redis) };
    p.redis.kill();
    let page = "ingest-unavailable.md";
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let readyz = shell.run(&command(page, "curl -s 127.0.0.1:8080/readyz")).await;
        if readyz.contains("not ready") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{readyz}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ping = shell.run(&command(page, "redis-cli -u \"$POSTBACK_REDIS_URL\" PING")).await;
    assert!(ping.contains("Connection refused") || ping.contains("Could not connect"), "{ping}");
}

#[tokio::test]
async fn a_partner_answering_500_shows_in_retries_and_host_failures() {
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(500)).await;
    let (_worker, admin) = deliver(&redis, &[("POSTBACK_RETRY_BASE_MS", "30000".into())]);
    enqueue(&redis, request(format!("{}/boom?i={{i}}", sink.base_url()), 3)).await;
    sink.wait_for(3, WAIT).await;
    let shell = Shell { admin: Some(admin), ..Shell::new(&redis) };
    let page = "delivery-failures.md";
    let host = sink.addr().to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    let retries = loop {
        let retries = shell.run(&command(page, "postbackctl retries --count 20")).await;
        if retries.matches(&host).count() == 3 {
            break retries;
        }
        assert!(tokio::time::Instant::now() < deadline, "{retries}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(retries.lines().filter(|l| l.contains(&host)).all(|l| l.contains(" 1 ") && l.contains("in ")), "{retries}");
    let failures =
        shell.run(&command(page, "curl -s 127.0.0.1:8081/metrics | grep '^postback_host_failures_total'")).await;
    assert!(failures.contains(&format!("host=\"{host}\"")) && failures.trim_end().ends_with(" 3"), "{failures}");
}

#[tokio::test]
async fn a_single_slow_partner_shows_as_slots_full_and_host_busy() {
    let redis = RedisServer::start();
    let slow = Sink::start_with(|_, _| Reply::status(200).delay(Duration::from_secs(8))).await;
    let (_worker, admin) =
        deliver(&redis, &[("POSTBACK_HTTP_TIMEOUT_MS", "20000".into()), ("POSTBACK_CLAIM_IDLE_MS", "60000".into())]);
    enqueue(&redis, request(format!("{}/slow?i={{i}}", slow.base_url()), 40)).await;
    slow.wait_for(16, WAIT).await;
    let shell = Shell { admin: Some(admin), ..Shell::new(&redis) };
    let page = "delivery-failures.md";
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = shell
            .run(&command(
                page,
                "curl -s 127.0.0.1:8081/metrics | grep -E '^postback_(deliveries_in_flight|retries_scheduled_total)'",
            ))
            .await;
        let busy = metrics.lines().any(|l| l.contains("reason=\"host_busy\"") && !l.ends_with(" 0"));
        if metrics.contains("postback_deliveries_in_flight 16") && busy {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let retries = shell.run(&command(page, "postbackctl retries --count 50")).await;
    let host = slow.addr().to_string();
    let waiting: Vec<&str> = retries.lines().filter(|l| l.contains(&host)).collect();
    assert!(
        !waiting.is_empty() && waiting.iter().all(|l| l.contains(" 0 ")),
        "attempts 0, waiting for a slot: {retries}"
    );
    // Once the first attempts are answered (8 s) and counted (every 2 s),
    // the host's response times show: 8 s falls in the 10000 ms bucket.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let hosts = shell.run(&command(page, "postbackctl hosts")).await;
        let line = hosts.lines().find(|l| l.starts_with(&host)).unwrap_or_default().to_owned();
        let columns: Vec<&str> = line.split_whitespace().collect();
        if columns.len() == 7 && columns[5] == "10000" && columns[6] == "10000" {
            assert_eq!(columns[1], "closed", "{hosts}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{hosts}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_partner_down_for_hours_shows_as_open_and_can_be_paused_by_hand() {
    let redis = RedisServer::start();
    // Down until the operator has paused it; back by the time they resume it.
    let (down, back) = Sink::start_down(503).await;
    let (_worker, admin) = deliver(&redis, &[("POSTBACK_BREAKER_FAILURES", "3".into())]);
    enqueue(&redis, request(format!("{}/down?i={{i}}", down.base_url()), 10)).await;
    let shell = Shell { admin: Some(admin), ..Shell::new(&redis) };
    let page = "partner-down.md";
    let host = down.addr().to_string();
    let row = |text: &str| text.lines().find(|l| l.starts_with(&host)).unwrap_or_default().to_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let hosts = shell.run(&command(page, "postbackctl hosts")).await;
        if row(&hosts).contains(" open until ") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{hosts}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = down.received().len();
    let retries = shell.run(&command(page, "postbackctl retries --count 50")).await;
    assert_eq!(retries.lines().filter(|l| l.contains(&host)).count(), 10, "all ten wait: {retries}");
    let metrics = shell.run(&command(page, "curl -s 127.0.0.1:8081/metrics | grep -E '^postback_breaker'")).await;
    assert!(metrics.contains("postback_breaker_transitions_total{state=\"open\"} 1"), "{metrics}");

    let by_hand = |start: &str| command(page, start).replace("partner.example:443", &host);
    let paused = shell.run(&by_hand("postbackctl hosts pause")).await;
    assert_eq!(paused.trim(), format!("{host}: paused by hand"));
    assert!(row(&shell.run("postbackctl hosts").await).contains(" paused "));
    // Nothing was sent while it was open or paused (its pause is a minute);
    // once resumed, its retries (due within a second) may go.
    assert_eq!(down.received().len(), seen);
    back.store(true, Ordering::SeqCst);
    let resumed = shell.run(&by_hand("postbackctl hosts resume")).await;
    assert_eq!(resumed.trim(), format!("{host}: resumed (closed)"));
    // Listed by its attempts (counted every 2 s) now that its breaker is gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    let listed = loop {
        let listed = row(&shell.run("postbackctl hosts").await);
        if !listed.is_empty() || tokio::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(listed.contains(" closed "), "{listed}");
}

#[tokio::test]
async fn an_entry_stuck_in_pending_shows_its_holder() {
    let redis = RedisServer::start();
    enqueue(&redis, request("http://h.example/x?i={i}".into(), 1)).await;
    let client = redis.client().await;
    let _: () = client.xgroup_create("postbacks", "deliver", "0", false).await.expect("group");
    let _: Value =
        client.xreadgroup("deliver", "gone-worker", Some(1), None, false, "postbacks", ">").await.expect("read");
    let shell = Shell::new(&redis);
    let page = "backlog-growing.md";
    let pending = shell.run(&command(page, "postbackctl pending --count 5")).await;
    assert!(pending.contains("gone-worker"), "{pending}");
    let consumers = shell.run(&command(page, "redis-cli XINFO CONSUMERS postbacks deliver")).await;
    assert!(consumers.contains("gone-worker"), "{consumers}");
    let status = shell.run(&command(page, "postbackctl status")).await;
    assert!(status.contains("gone-worker"), "{status}");
}

#[tokio::test]
async fn an_undecodable_entry_is_a_letter_of_its_category_with_its_bytes() {
    let redis = RedisServer::start();
    let (_worker, admin) = deliver(&redis, &[]);
    wait_ready(&admin).await;
    let client = redis.client().await;
    let id: String = client.xadd("postbacks", false, None, "*", ("p", "not a postback")).await.expect("XADD");
    wait_dead(&redis, 1).await;
    let shell = Shell::new(&redis);
    let dead = shell
        .run(&command(
            "undecodable-entries.md",
            "redis-cli XRANGE postbacks:dead - + | grep -A1 -E 'category|reason|entry_id'",
        ))
        .await;
    assert!(dead.contains("category\nundecodable"), "{dead}");
    assert!(dead.contains("undecodable: "), "{dead}");
    let listed = shell.run(&command("undecodable-entries.md", "postbackctl dead list --reason undecodable")).await;
    assert!(listed.contains("undecodable"), "{listed}");
    assert!(dead.contains(&id), "the entry it came from: {dead}");
}

#[tokio::test]
async fn a_failover_shows_the_new_primary_the_lost_one_and_a_quorum() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinels = postback_testkit::Sentinels::start(primary.port(), 3);
    primary.kill();
    let deadline = tokio::time::Instant::now() + WAIT;
    while sentinels.primary_port() != Some(replica.port()) {
        assert!(tokio::time::Instant::now() < deadline, "no failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shell = Shell { sentinel: Some(sentinels.ports()[0]), ..Shell::new(&replica) };
    let page = "redis-restart.md";
    let now = shell.run(&command(page, "redis-cli -p 26379 SENTINEL get-master-addr-by-name")).await;
    assert!(now.contains(&replica.port().to_string()), "the page shows the promoted replica: {now}");
    // The old primary is listed as a replica, down (s_down) while it is.
    let replicas = command(page, "redis-cli -p 26379 SENTINEL replicas");
    loop {
        let out = shell.run(&replicas).await;
        if out.contains(&primary.port().to_string()) && out.contains("s_down") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the lost primary is not shown down: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let quorum = shell.run(&command(page, "redis-cli -p 26379 SENTINEL ckquorum")).await;
    assert!(quorum.starts_with("OK"), "three Sentinels make a quorum: {quorum}");
}

/// The "scheduled retries" column of a `postbackctl status` table.
fn scheduled(status: &str) -> Option<&str> {
    let row: Vec<&str> = status.lines().nth(1)?.split_whitespace().collect();
    row.len().checked_sub(2).map(|i| row[i])
}

#[tokio::test]
async fn partitions_show_added_up_and_one_by_one() {
    let redis = RedisServer::start();
    let sink = Sink::start_with(|_, _| Reply::status(500)).await;
    let partitions = [("POSTBACK_PARTITIONS", "2".to_owned()), ("POSTBACK_RETRY_BASE_MS", "60000".into())];
    let (_worker, _admin) = deliver(&redis, &partitions);
    let shell = Shell::new(&redis);
    for partition in 0..2 {
        enqueue_in(&redis, request(format!("{}/boom?i={{i}}", sink.base_url()), 2), partition, 2).await;
    }
    sink.wait_for(4, WAIT).await;
    let page = "partitions.md";
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = shell.run(&command(page, "postbackctl status")).await;
        if status.contains("{postbacks:0:2d6} … {postbacks:1:fks}") && scheduled(&status) == Some("4") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "four retries scheduled over two partitions: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let layout = shell.run(&command(page, "postbackctl partitions")).await;
    assert!(layout.contains("epoch 1, 2 active"), "{layout}");
    for row in ["0          active  {postbacks:0:2d6}  4096", "1          active  {postbacks:1:fks}  12288"] {
        assert!(layout.contains(row), "{row:?} in {layout}");
    }
    let reader = layout.lines().skip_while(|l| !l.starts_with("reader ")).nth(1);
    assert!(reader.is_some_and(|l| l.split_whitespace().nth(1) == Some("1")), "the worker reads epoch 1: {layout}");
    let one = shell.run(&command(page, "postbackctl --partition 1 status")).await;
    assert!(one.lines().nth(1).is_some_and(|l| l.starts_with("{postbacks:1:fks} ")), "{one}");
    assert_eq!(scheduled(&one), Some("2"), "{one}");
    let none = shell.run("postbackctl --partition 3 status").await;
    assert!(none.contains("the partition record lists 0, 1"), "{none}");
    let pending = shell.run(&command(page, "redis-cli -c XPENDING '{postbacks:1:fks}' deliver")).await;
    assert!(pending.starts_with("0\n") || pending.starts_with("(integer) 0"), "{pending}");
}
