//! Forgetting consumers that are gone: a fleet whose worker names change
//! (HOSTNAME-PID) would otherwise pile up dead names in the group. And
//! healing the counts beside an empty stream (`lua/heal.lua`): what an
//! entry deleted by hand leaves behind goes within one round.
//!
//! Every worker runs one, every quarter of `POSTBACK_CONSUMER_GONE_MS`
//! (between 1 s and 1 min). A consumer other than this one that holds
//! nothing and has been idle that long is removed, by a script that checks
//! both and removes it in one step (`lua/forget_consumer.lua`): XGROUP
//! DELCONSUMER drops whatever the consumer holds, so a consumer must never
//! be removed between reading an entry and the check.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::script::Script;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::DeliverMetrics;

/// Removes gone consumers other than `me` until `shutdown`.
pub(crate) async fn run(
    redis: Client,
    keys: Keys,
    me: String,
    gone_after: Duration,
    metrics: Arc<DeliverMetrics>,
    shutdown: CancellationToken,
) {
    let every = (gone_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let forget = Script::new(include_str!("lua/forget_consumer.lua"));
    let heal = Script::new(include_str!("lua/heal.lua"));
    let mut backoff = Backoff::default();
    loop {
        let healed: Result<i64, _> = heal.call(&redis, &[&keys.stream, &keys.batched, &keys.finished], vec![]).await;
        if let Ok(n @ 1..) = healed {
            tracing::info!(
                keys = n,
                "the stream is empty: removed the counts left beside it (entries deleted by hand?)"
            );
        }
        let pause = match sweep(&redis, &keys, &me, gone_after, &forget).await {
            Ok(removed) => {
                metrics.consumers_removed(removed);
                backoff.reset();
                every
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for consumers that are gone; trying again");
                backoff.next_delay().max(every.min(Duration::from_secs(5)))
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One look: removes the consumers that qualify; how many.
async fn sweep(redis: &Client, keys: &Keys, me: &str, gone_after: Duration, forget: &Script) -> Result<usize, Error> {
    let reply: Value = match redis.xinfo_consumers(&keys.stream, &keys.group).await {
        Ok(reply) => reply,
        // No stream or group yet: nobody to forget.
        Err(e) if postback_common::redis::is_nogroup(&e) => return Ok(0),
        Err(e) => return Err(e),
    };
    let Value::Array(consumers) = reply else { return Ok(0) };
    let min_idle = gone_after.as_millis() as u64;
    let mut removed = 0;
    for consumer in consumers {
        let info = postback_common::redis::pairs(consumer);
        let number = |key: &str| info.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_u64());
        let Some(name) = info.iter().find(|(k, _)| k == "name").and_then(|(_, v)| v.as_string()) else { continue };
        let idle = number("inactive").or_else(|| number("idle")).unwrap_or(0);
        if name == me || number("pending") != Some(0) || idle < min_idle {
            continue;
        }
        let args: Vec<Value> = vec![keys.group.as_str().into(), name.as_str().into(), (min_idle as i64).into()];
        let done: i64 = forget.call(redis, &[&keys.stream], args).await?;
        if done == 1 {
            tracing::info!(consumer = %name, idle_ms = idle, "removed a consumer that is gone");
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use postback_testkit::RedisServer;

    use super::*;

    #[tokio::test]
    async fn only_an_idle_consumer_that_holds_nothing_is_forgotten() {
        let redis = RedisServer::start();
        let client = redis.client().await;
        let _: () = client.xgroup_create("postbacks", "deliver", "0", true).await.expect("group");
        let _: String = client.xadd("postbacks", false, None, "*", ("p", "x")).await.expect("XADD");
        let _: Value =
            client.xreadgroup("deliver", "holder", Some(1), None, false, "postbacks", ">").await.expect("read");
        let _: i64 = client.xgroup_createconsumer("postbacks", "deliver", "empty").await.expect("consumer");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let forget = Script::new(include_str!("lua/forget_consumer.lua"));
        let call = |name: &str, idle_ms: i64| {
            let args: Vec<Value> = vec!["deliver".into(), name.into(), idle_ms.into()];
            forget.call::<_, i64>(&client, &["postbacks"], args)
        };
        assert_eq!(call("holder", 0).await.expect("script"), 0, "holds an entry");
        assert_eq!(call("empty", 60_000).await.expect("script"), 0, "not idle long enough");
        assert_eq!(call("nobody", 0).await.expect("script"), 0, "no such consumer");
        assert_eq!(call("empty", 10).await.expect("script"), 1);
        let consumers: Value = client.xinfo_consumers("postbacks", "deliver").await.expect("XINFO");
        let text = format!("{consumers:?}");
        assert!(text.contains("holder") && !text.contains("empty"), "{text}");
        assert_eq!(call("x", 0).await.expect("script"), 0);
        let _: () = client.flushall(false).await.expect("FLUSHALL");
        assert_eq!(call("empty", 0).await.expect("script"), 0, "no group at all");
    }

    #[tokio::test]
    async fn counts_beside_an_empty_stream_go_and_only_then() {
        let redis = RedisServer::start();
        let client = redis.client().await;
        let heal = Script::new(include_str!("lua/heal.lua"));
        let keys = ["postbacks", "postbacks:batched", "postbacks:finished"];
        let _: () = client.set("postbacks:batched", 3, None, None, false).await.expect("SET");
        let _: () = client.hset("postbacks:finished", ("1-0", "x")).await.expect("HSET");
        let _: String = client.xadd("postbacks", false, None, "*", ("p", "x")).await.expect("XADD");
        assert_eq!(heal.call::<_, i64>(&client, &keys, vec![]).await.expect("script"), 0, "entries wait");
        let _: i64 = client.del("postbacks").await.expect("DEL");
        assert_eq!(heal.call::<_, i64>(&client, &keys, vec![]).await.expect("script"), 2);
        let left: u32 = client.exists(vec!["postbacks:batched", "postbacks:finished"]).await.expect("EXISTS");
        assert_eq!(left, 0);
    }
}
