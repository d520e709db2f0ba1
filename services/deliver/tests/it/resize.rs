//! The partition count changed online: `postbackctl partitions resize`
//! 2 → 4 → 2 on a three-primary cluster under load, with the real ingest,
//! two deliver and postbackctl binaries, none restarted; and processes
//! whose `POSTBACK_PARTITIONS` disagrees with the record refused.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postback_testkit::{Cluster, RedisServer, Sink};
use serde_json::{Value as Json, json};

use crate::helpers::{DELIVER_BIN, Running, deliver_env, sibling_bin, spawn_quiet};

/// postbackctl with `args` against `url`: exit code, stdout, stderr.
fn ctl(url: &str, env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(sibling_bin("postbackctl"))
        .env("POSTBACK_REDIS_URL", url)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run postbackctl");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// The states of the partitions the record lists, by index.
fn states(url: &str) -> Vec<(u64, String)> {
    let (code, out, err) = ctl(url, &[], &["--json", "partitions"]);
    assert_eq!(code, Some(0), "{err}");
    let shown: Json = serde_json::from_str(&out).expect("JSON");
    shown["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| (p["index"].as_u64().expect("index"), p["state"].as_str().expect("state").to_owned()))
        .collect()
}

/// What the load has been told: ids per accepted request, and the bodies
/// of keyed requests by key.
#[derive(Default)]
struct Told {
    accepted: Vec<String>,
    keyed: HashMap<String, (Json, Vec<String>)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resizing_two_four_two_under_load_loses_and_repeats_nothing() {
    let cluster = Cluster::start(3);
    // A third of the postbacks fail their first attempt, so partitions hold
    // retries when they are told to drain; the others are answered 200.
    let answered: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let sink = {
        let answered = answered.clone();
        let failed: Mutex<HashSet<String>> = Mutex::default();
        Sink::start_with(move |r, _| {
            let id = r.postback_id().unwrap_or_default().to_owned();
            if r.target.starts_with("/flaky") && failed.lock().expect("failed").insert(id.clone()) {
                return postback_testkit::Reply::status(500);
            }
            *answered.lock().expect("answered").entry(id).or_default() += 1;
            postback_testkit::Reply::status(200)
        })
        .await
    };
    let url = cluster.url();
    let addr = format!("127.0.0.1:{}", postback_testkit::free_port());
    let ingest_env = vec![
        ("POSTBACK_REDIS_URL", url.clone()),
        ("POSTBACK_PARTITIONS", "2".to_owned()),
        ("POSTBACK_INGEST_ADDR", addr.clone()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let mut services = vec![spawn_quiet(&sibling_bin("postback-ingest"), &ingest_env)];
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let ingest = format!("http://{addr}/v1/postbacks");
    let target = format!("{}/r?i={{i}}", sink.base_url());
    let flaky = format!("{}/flaky?i={{i}}", sink.base_url());
    let post = {
        let (http, ingest) = (http.clone(), ingest.clone());
        move |body: Json, key: Option<String>| {
            let mut request = http.post(&ingest).json(&body);
            if let Some(key) = &key {
                request = request.header("Idempotency-Key", key);
            }
            async move {
                let response = request.send().await.ok()?;
                if response.status() != 202 {
                    return None;
                }
                let replayed = response.headers().contains_key("idempotent-replayed");
                let answer: Json = response.json().await.ok()?;
                let ids: Vec<String> =
                    answer["ids"].as_array()?.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
                Some((ids, replayed))
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while post(json!({"endpoint": {"method": "GET", "url": target}, "data": [{"i": "warm"}]}), None).await.is_none() {
        assert!(Instant::now() < deadline, "ingest never accepted a request");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for i in 0..2 {
        // No POSTBACK_PARTITIONS: they follow the record ingest seeded.
        let extra =
            [("POSTBACK_REDIS_URL", url.clone()), ("POSTBACK_CONSUMER", format!("w{i}")), ("RUST_LOG", "warn".into())];
        services.push(spawn_quiet(DELIVER_BIN.as_ref(), &deliver_env(&cluster.nodes()[0], &extra)));
    }

    // A steady load, a keyed request in four, until told to stop.
    let told = Arc::new(Mutex::new(Told::default()));
    let phase = Arc::new(Mutex::new("two"));
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (told, phase, stop, post, target) =
            (told.clone(), phase.clone(), stop.clone(), post.clone(), target.clone());
        tokio::spawn(async move {
            let mut refused = 0;
            for n in 0usize.. {
                if stop.is_cancelled() {
                    break;
                }
                let data: Vec<_> = (0..1 + n % 3).map(|i| json!({"i": format!("{n}-{i}")})).collect();
                let url = if n % 3 == 1 { &flaky } else { &target };
                let body = json!({"endpoint": {"method": "GET", "url": url}, "data": data});
                let key = (n % 4 == 0).then(|| format!("{}-{n}", phase.lock().expect("phase")));
                match post(body.clone(), key.clone()).await {
                    Some((ids, replayed)) => {
                        assert!(!replayed, "a new key is not a replay");
                        let mut told = told.lock().expect("told");
                        told.accepted.extend(ids.iter().cloned());
                        if let Some(key) = key {
                            told.keyed.insert(key, (body, ids));
                        }
                    }
                    None => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            refused
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, out, err) = ctl(&url, &[], &["partitions", "resize", "4"]);
    assert_eq!(code, Some(0), "grow: {out}{err}");
    assert_eq!(states(&url).iter().filter(|(_, s)| s == "active").count(), 4);
    *phase.lock().expect("phase") = "four";
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, out, err) = ctl(&url, &[], &["partitions", "resize", "2"]);
    assert_eq!(code, Some(0), "shrink: {out}{err}");
    let during = states(&url);
    assert_eq!(during.iter().filter(|(_, s)| s == "active").count(), 2, "{during:?}");
    *phase.lock().expect("phase") = "two-again";
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let refused = load.await.expect("load");

    // Keys accepted while four partitions took requests replay now that
    // two do, from where they were kept.
    let keyed: Vec<(String, (Json, Vec<String>))> = told
        .lock()
        .expect("told")
        .keyed
        .iter()
        .filter(|(k, _)| k.starts_with("four-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(keyed.len() >= 10, "keyed requests during the four-partition phase: {}", keyed.len());
    for (key, (body, ids)) in &keyed {
        let (again, replayed) = post(body.clone(), Some(key.clone())).await.expect("a replay is answered");
        assert!(replayed, "{key} replays after the shrink");
        assert_eq!(&again, ids, "{key} gets its first ids");
    }

    let accepted: HashSet<String> = told.lock().expect("told").accepted.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<String> = answered.lock().expect("answered").keys().cloned().collect();
        let listed = states(&url);
        if accepted.is_subset(&got) && listed.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} not delivered; partitions {listed:?}",
            accepted.difference(&got).count(),
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seen = answered.lock().expect("answered").clone();
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{} postbacks accepted ({refused} requests refused), {} keyed replayed across the shrink, {} repeated",
        accepted.len(),
        keyed.len(),
        repeated.len()
    );
    assert!(repeated.is_empty(), "no process died, so nothing is repeated: {repeated:?}");
    for service in &mut services {
        assert!(service.try_wait().expect("child").is_none(), "no service was restarted");
    }
    let (code, status, _) = ctl(&url, &[], &["--json", "status"]);
    assert_eq!(code, Some(0));
    let status: Json = serde_json::from_str(&status).expect("JSON");
    assert_eq!((status["postbacks"].as_u64(), status["pending"].as_u64()), (Some(0), Some(0)), "{status}");
}

/// Runs `bin` with `envs` and returns its exit code and what it printed,
/// giving it `patience` to exit.
async fn refused(bin: &str, envs: &[(&'static str, String)], patience: Duration) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(bin)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let out = tokio::time::timeout(patience, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{bin} did not refuse to start within {patience:?}"))
        .expect("wait");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[tokio::test]
async fn a_process_whose_setting_disagrees_with_the_record_refuses_to_start() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Looking seeds nothing; a resize (or the first service) seeds the
    // record with its count.
    let (code, _, err) = ctl(&url, &[("POSTBACK_PARTITIONS", "2")], &["partitions"]);
    assert_eq!(code, Some(0), "{err}");
    let record = postback_common::layout::store::read(&redis.client().await, "postbacks").await.expect("GET");
    assert!(record.is_none(), "postbackctl partitions wrote {record:?}");
    let (code, _, err) = ctl(&url, &[("POSTBACK_PARTITIONS", "2")], &["partitions", "resize", "2"]);
    assert_eq!(code, Some(0), "{err}");
    let said =
        "POSTBACK_PARTITIONS is 3, but the partition record postbacks:partitions in Redis has 2 active partitions";

    let deliver = deliver_env(&redis, &[("POSTBACK_PARTITIONS", "3".to_owned())]);
    let (code, text) = refused(DELIVER_BIN, &deliver, Duration::from_secs(10)).await;
    assert_ne!(code, Some(0));
    assert!(text.contains(said), "deliver: {text}");
    let ingest = vec![
        ("POSTBACK_REDIS_URL", url.clone()),
        ("POSTBACK_PARTITIONS", "3".to_owned()),
        ("POSTBACK_INGEST_ADDR", format!("127.0.0.1:{}", postback_testkit::free_port())),
    ];
    let (code, text) =
        refused(sibling_bin("postback-ingest").to_str().expect("path"), &ingest, Duration::from_secs(10)).await;
    assert_ne!(code, Some(0));
    assert!(text.contains(said), "ingest: {text}");
    let (code, _, err) = ctl(&url, &[("POSTBACK_PARTITIONS", "3")], &["status"]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains(said), "postbackctl: {err}");

    // Unset, or agreeing, they start.
    let (code, out, err) = ctl(&url, &[], &["--json", "status"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let envs = deliver_env(&redis, &[]);
    let admin = crate::helpers::admin_of(&envs);
    let _deliver = Running::spawn(DELIVER_BIN, &envs);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http.get(format!("http://{admin}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "deliver following the record never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
