//! Building Redis clients that survive outages.
//!
//! Every client reconnects on its own, forever, with exponential backoff
//! capped at two seconds: a Redis restart must never need a service restart.
//! A service starts even while Redis is down (the first connection is retried
//! like any other) and reports "not ready" until it is back.
//!
//! Behind Sentinel (`redis-sentinel://`), every connection starts by asking
//! the sentinels where the primary is and checking that it says so itself
//! (ROLE). A failover reaches a client as a lost connection (the primary
//! died) or as a READONLY reply (it was demoted under a live connection);
//! either makes it reconnect, and so find the promoted replica, with no
//! restart. README "High availability" has the measured figures.
//!
//! A client blocked in `XREADGROUP BLOCK` holds its connection until the
//! command returns, so a service that blocks builds a second, dedicated
//! client for it and keeps the first for everything else.

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{ReconnectError, ReconnectPolicy, UnresponsiveConfig};

/// How long to wait for a TCP connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection with commands in flight and no reply for this long is
/// considered dead and replaced, so a frozen Redis is noticed.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(10);

/// Replies that mean "this is not (or not yet) the primary": the command
/// was not run, so the client reconnects (asking the sentinels anew where
/// the primary is) and sends it again. READONLY comes from a primary demoted
/// under a live connection, MASTERDOWN from a replica cut off from its
/// primary, LOADING from a server still reading its data, CLUSTERDOWN from a
/// cluster that lost a slot's primary.
const RECONNECT_ERRORS: [ReconnectError; 4] =
    [ReconnectError::ReadOnly, ReconnectError::MasterDown, ReconnectError::Loading, ReconnectError::ClusterDown];

/// Builds (but does not connect) a client for `url`. A command that has not
/// been answered after `command_timeout` fails, so no caller can hang on a
/// Redis that went away (a blocking command needs a timeout longer than its
/// BLOCK).
pub fn client(url: &str, command_timeout: Duration) -> Result<Client, Error> {
    client_of(Config::from_url(url)?, command_timeout)
}

/// [`client`] for a parsed `config` (a cluster's, say, pointed at one node).
pub fn client_of(mut config: Config, command_timeout: Duration) -> Result<Client, Error> {
    // Keep retrying the first connection too, instead of failing start-up.
    config.fail_fast = false;
    Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        .with_connection_config(|c| {
            c.connection_timeout = CONNECT_TIMEOUT;
            c.internal_command_timeout = CONNECT_TIMEOUT;
            c.tcp.nodelay = Some(true);
            c.unresponsive =
                UnresponsiveConfig { max_timeout: Some(UNRESPONSIVE_AFTER), interval: Duration::from_secs(1) };
            c.reconnect_errors = RECONNECT_ERRORS.to_vec();
        })
        .build()
}

/// What went wrong with a command, in the words a log line uses: `timeout`
/// (no reply in time), `connection lost`, `out of memory (OOM)`,
/// `read-only (READONLY)`, and so on for Redis's other refusals, read from
/// the error itself and never guessed.
pub fn cause(error: &Error) -> &'static str {
    use fred::error::ErrorKind;
    match error.kind() {
        ErrorKind::Timeout => return "timeout",
        ErrorKind::IO | ErrorKind::Canceled => return "connection lost",
        _ => {}
    }
    let details = error.details();
    let refusals = [
        ("OOM", "out of memory (OOM)"),
        ("READONLY", "read-only (READONLY)"),
        ("CLUSTERDOWN", "cluster down (CLUSTERDOWN)"),
        ("MOVED", "slot moved (MOVED)"),
        ("TRYAGAIN", "slot migrating (TRYAGAIN)"),
        ("NOREPLICAS", "not enough replicas (NOREPLICAS)"),
        ("MASTERDOWN", "primary down (MASTERDOWN)"),
        ("LOADING", "loading its data (LOADING)"),
        ("BUSY", "busy with a script (BUSY)"),
        ("NOAUTH", "authentication required (NOAUTH)"),
        ("WRONGPASS", "wrong password (WRONGPASS)"),
    ];
    refusals
        .iter()
        .find(|(prefix, _)| details.starts_with(prefix) || details.contains(&format!(" {prefix} ")))
        .map_or("error", |(_, cause)| cause)
}

/// Builds a client for `url` and starts connecting it in the background.
/// Commands sent before the connection is up wait for it (up to their
/// timeout), so callers that must not wait check [`ClientLike::is_connected`].
pub fn connect(url: &str, command_timeout: Duration) -> Result<Client, Error> {
    let client = client(url, command_timeout)?;
    client.connect();
    Ok(client)
}

/// Closes a client, waiting at most a second: at shutdown a Redis that went
/// away must not hold the process up.
pub async fn close(client: &Client) {
    if !client.is_connected() {
        // QUIT would only wait in the queue for a connection.
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
}

/// Whether Redis answers a PING within `timeout`; the error says why not.
/// What readiness probes and the `postback_redis_up` gauge ask.
pub async fn ping(client: &Client, timeout: Duration) -> Result<(), String> {
    if !client.is_connected() {
        return Err("not connected to Redis".into());
    }
    match tokio::time::timeout(timeout, client.ping::<String>(None)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no PING reply within {timeout:?}")),
    }
}

/// Whether `error` is Redis saying that the stream or its consumer group does
/// not exist (it was deleted, or Redis restarted without its data).
pub fn is_nogroup(error: &Error) -> bool {
    error.details().starts_with("NOGROUP") || error.to_string().contains("NOGROUP")
}

/// A reply that is a flat `[key, value, key, value…]` array (RESP2) or a map
/// (RESP3), as pairs: how XINFO answers.
pub fn pairs(value: Value) -> Vec<(String, Value)> {
    match value {
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = k.as_string() {
                    out.push((k, v));
                }
            }
            out
        }
        Value::Map(map) => map.inner().into_iter().filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v))).collect(),
        _ => Vec::new(),
    }
}

/// A stream entry id (`<ms>-<seq>`) as numbers, to order ids: ids are not
/// ordered as text (`9-0` comes before `10-0`).
pub fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// One row of an extended XPENDING reply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingRow {
    /// Stream entry id.
    pub id: String,
    /// The consumer that holds it.
    pub consumer: String,
    /// Since it was last handed out, in ms.
    pub idle_ms: u64,
    /// How many times it was handed out.
    pub deliveries: u64,
}

/// Runs `XPENDING stream group start end count [consumer]` and reads its
/// rows.
pub async fn pending_rows(
    client: &Client,
    keys: &crate::keys::Keys,
    range: (&str, &str),
    count: u64,
    consumer: Option<&str>,
) -> Result<Vec<PendingRow>, Error> {
    use fred::types::{ClusterHash, CustomCommand};
    let mut args: Vec<Value> = vec![
        keys.stream.as_str().into(),
        keys.group.as_str().into(),
        range.0.into(),
        range.1.into(),
        (count as i64).into(),
    ];
    if let Some(consumer) = consumer {
        args.push(consumer.into());
    }
    let reply: Value = client.custom(CustomCommand::new_static("XPENDING", ClusterHash::FirstKey, false), args).await?;
    let Value::Array(rows) = reply else { return Ok(Vec::new()) };
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let Value::Array(row) = row else { return None };
            Some(PendingRow {
                id: row.first()?.as_string()?,
                consumer: row.get(1)?.as_string()?,
                idle_ms: row.get(2)?.as_u64()?,
                deliveries: row.get(3)?.as_u64()?,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_stream_ids_numerically() {
        assert!(id_order("9-0") < id_order("10-0"));
        assert!(id_order("10-2") < id_order("10-10"));
        assert_eq!(id_order("10-0"), id_order("10-0"));
        assert!(id_order("1764288000001-0") > id_order("1764288000000-5"));
    }
}
