//! On a Redis Cluster, the enqueue path talks to each primary through a
//! client of that one node, so that a primary that fails stalls only the
//! partitions it serves.
//!
//! fred's cluster client keeps one set of connections: while any primary
//! is unreachable it reconnects them all, and every command waits or
//! fails, whatever its slot, until the failover is over
//! (`cluster-node-timeout` and a few seconds; README "High availability").
//! Here the slots' primaries come from `CLUSTER SLOTS`, asked of any node
//! that answers, and each primary gets its own client (same credentials
//! and TLS as the cluster URL), made on first use. A partition whose
//! client fails, or whose node answers that it no longer serves the slot
//! (MOVED, READONLY), makes the table be read again (at most every
//! [`REFRESH_EVERY`]); until a replica is promoted, its requests fail at
//! once, and a request without an Idempotency-Key is queued in another
//! partition ([`crate::routes`]).
//!
//! Everything else (the gate's samples, rate limits, the partition record)
//! keeps the cluster client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::config::{Server, ServerConfig};
use postback_common::keys::Keys;

use crate::enqueue::Clients;

/// Least time between two reads of the slot table.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// How long a node asked for the slot table has to answer.
const ASK_WITHIN: Duration = Duration::from_secs(1);

/// How long the first request to a new node waits for its connection.
const FIRST_CONNECTION: Duration = Duration::from_secs(1);

/// The primaries of a cluster's slots, and a client of each.
pub struct Nodes {
    /// The cluster's settings (credentials, TLS), pointed at one node each.
    base: Config,
    timeout: Duration,
    /// The nodes the URL names, asked when no client answers.
    seeds: Vec<Server>,
    table: Mutex<Table>,
    clients: Mutex<HashMap<Server, Node>>,
    /// Serialises reads of the table.
    refreshing: tokio::sync::Mutex<()>,
}

/// A node's client, and whether it has ever been connected.
#[derive(Clone)]
struct Node {
    client: Client,
    connected_once: Arc<AtomicBool>,
}

/// Slot ranges and their primaries, and when they were read.
#[derive(Default)]
struct Table {
    ranges: Vec<(u16, u16, Server)>,
    read_at: Option<Instant>,
}

impl Nodes {
    /// For a cluster URL, node clients with `timeout` per command; `None`
    /// for any other kind of URL.
    pub fn for_url(url: &str, timeout: Duration) -> Result<Option<Arc<Self>>, Error> {
        let base = Config::from_url(url)?;
        let ServerConfig::Clustered { hosts, .. } = &base.server else { return Ok(None) };
        let seeds = hosts.clone();
        let nodes = Self {
            base,
            timeout,
            seeds,
            table: Mutex::default(),
            clients: Mutex::default(),
            refreshing: tokio::sync::Mutex::new(()),
        };
        Ok(Some(Arc::new(nodes)))
    }

    /// The client of the primary serving `keys`'s partition, when the table
    /// knows it.
    pub async fn client_for(&self, keys: &Keys) -> Option<Client> {
        let slot = fred::util::redis_keyslot(keys.stream.as_bytes());
        let unknown = {
            let table = self.lock_table();
            table.ranges.is_empty() && table.read_at.is_none_or(|at| at.elapsed() >= REFRESH_EVERY)
        };
        if unknown {
            // Not read yet, or no node answered last time.
            self.refresh().await;
        }
        let server = self.primary_of(slot)?;
        let node = self.client(&server)?;
        if !node.connected_once.load(Ordering::Relaxed) {
            // A client just made: every request that finds it before its
            // first connection waits for it (up to FIRST_CONNECTION), as
            // the service's first requests do; later a lost connection
            // fails at once.
            let deadline = tokio::time::Instant::now() + FIRST_CONNECTION;
            while !node.client.is_connected() && tokio::time::Instant::now() < deadline {
                let _ = tokio::time::timeout_at(deadline, node.client.wait_for_connect()).await;
                if !node.client.is_connected() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            if node.client.is_connected() {
                node.connected_once.store(true, Ordering::Relaxed);
            }
        }
        Some(node.client)
    }

    /// A command for `keys`'s partition failed without running: the table
    /// is read again (at most every [`REFRESH_EVERY`]).
    pub fn failed(self: &Arc<Self>, keys: &Keys) {
        let due = self.lock_table().read_at.is_none_or(|at| at.elapsed() >= REFRESH_EVERY);
        if due {
            tracing::debug!(stream = %keys.stream, "a partition's node failed; reading the cluster's slots again");
            let nodes = self.clone();
            tokio::spawn(async move { nodes.refresh().await });
        }
    }

    fn primary_of(&self, slot: u16) -> Option<Server> {
        let table = self.lock_table();
        table.ranges.iter().find(|(low, high, _)| (*low..=*high).contains(&slot)).map(|(_, _, s)| s.clone())
    }

    /// The client of `server`, made on first use.
    fn client(&self, server: &Server) -> Option<Node> {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(node) = clients.get(server) {
            return Some(node.clone());
        }
        let mut config = self.base.clone();
        config.server = ServerConfig::Centralized { server: server.clone() };
        let client = match postback_common::redis::client_of(config, self.timeout) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, node = %server, "cannot make a client of a cluster node");
                return None;
            }
        };
        client.connect();
        let node = Node { client, connected_once: Arc::default() };
        clients.insert(server.clone(), node.clone());
        Some(node)
    }

    /// Reads the slot table from the first node that answers: the known
    /// clients that are connected, then the URL's nodes.
    async fn refresh(&self) {
        let _one = self.refreshing.lock().await;
        if self.lock_table().read_at.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
            return;
        }
        let known: Vec<Client> = {
            let clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            clients.values().map(|n| &n.client).filter(|c| c.is_connected()).cloned().collect()
        };
        let mut askers = known;
        askers.extend(self.seeds.iter().filter_map(|seed| self.client(seed)).map(|node| node.client));
        for client in askers {
            let asked = client.custom::<Value, _>(fred::cmd!("CLUSTER"), vec!["SLOTS"]);
            if let Ok(Ok(reply)) = tokio::time::timeout(ASK_WITHIN, asked).await
                && let Some(ranges) = parse_slots(reply)
            {
                *self.lock_table() = Table { ranges, read_at: Some(Instant::now()) };
                return;
            }
        }
        tracing::warn!("no cluster node answered CLUSTER SLOTS; keeping the slot table as it was");
        self.lock_table().read_at = Some(Instant::now());
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, …], replicas…], …]`.
fn parse_slots(reply: Value) -> Option<Vec<(u16, u16, Server)>> {
    let Value::Array(rows) = reply else { return None };
    let mut ranges = Vec::with_capacity(rows.len());
    for row in rows {
        let Value::Array(fields) = row else { return None };
        let low = u16::try_from(fields.first()?.as_i64()?).ok()?;
        let high = u16::try_from(fields.get(1)?.as_i64()?).ok()?;
        let Value::Array(primary) = fields.get(2)? else { return None };
        let host = primary.first()?.as_string()?;
        let port = u16::try_from(primary.get(1)?.as_i64()?).ok()?;
        ranges.push((low, high, Server::new(host, port)));
    }
    (!ranges.is_empty()).then_some(ranges)
}

/// The clients ingest enqueues through: a cluster node's for its
/// partitions when there are [`Nodes`], else the one client.
pub struct Routed<'a> {
    /// The service's client.
    pub main: &'a Client,
    /// Node clients, on a cluster.
    pub nodes: Option<&'a Arc<Nodes>>,
}

impl Clients for Routed<'_> {
    async fn of(&self, keys: &Keys) -> Client {
        match self.nodes {
            Some(nodes) => nodes.client_for(keys).await.unwrap_or_else(|| self.main.clone()),
            None => self.main.clone(),
        }
    }
}

/// How long a partition whose enqueue failed without running is passed
/// over by requests that may go to any partition.
pub const PASSED_OVER_FOR: Duration = Duration::from_secs(1);

/// Partitions that just failed an enqueue without running it (their node
/// down, refusing writes, no longer the slot's primary), by number, with
/// when that was.
#[derive(Default)]
pub struct Failing(Mutex<HashMap<u32, Instant>>);

impl Failing {
    /// Notes that `partition` just failed.
    pub fn failed(&self, partition: u32) {
        self.lock().insert(partition, Instant::now());
    }

    /// Notes that `partition` took a request.
    pub fn took(&self, partition: u32) {
        let mut failing = self.lock();
        if !failing.is_empty() {
            failing.remove(&partition);
        }
    }

    /// Whether `partition` failed within [`PASSED_OVER_FOR`].
    pub fn recently(&self, partition: u32) -> bool {
        self.lock().get(&partition).is_some_and(|at| at.elapsed() < PASSED_OVER_FOR)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Instant>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
