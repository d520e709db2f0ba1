//! Endpoint records of version 3 entries, looked up in Redis once per worker.
//!
//! A record is content-addressed (its address is a hash of its bytes, and
//! ingest refuses to store other bytes under a taken address), so what an
//! address resolves to never changes: the worker keeps what it has read,
//! up to [`CAPACITY`] records, and starts afresh when that fills up. A
//! record read from Redis is checked against its address before use
//! ([`Endpoint::verify`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fred::prelude::*;
use postback_common::records::request::{Endpoint, EndpointRef};

/// Records kept in memory.
pub(crate) const CAPACITY: usize = 10_000;

/// What an address resolved to.
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    /// The record.
    Found(Arc<Endpoint>),
    /// Not in the hash: the entry cannot be delivered (poison).
    Missing,
    /// In the hash, but not a record with that address (poison).
    Corrupt(String),
}

/// The records this worker has read.
#[derive(Default)]
pub(crate) struct Endpoints {
    known: Mutex<HashMap<EndpointRef, Arc<Endpoint>>>,
}

impl Endpoints {
    /// The record at `address`, from memory or from the hash `key`.
    pub(crate) async fn resolve(&self, redis: &Client, key: &str, address: EndpointRef) -> Result<Lookup, Error> {
        if let Some(found) = self.lock().get(&address) {
            return Ok(Lookup::Found(found.clone()));
        }
        let stored: Option<Bytes> = redis.hget(key, address.to_string()).await?;
        let Some(stored) = stored else { return Ok(Lookup::Missing) };
        let endpoint = match Endpoint::verify(address, &stored) {
            Ok(endpoint) => Arc::new(endpoint),
            Err(why) => return Ok(Lookup::Corrupt(why)),
        };
        let mut known = self.lock();
        if known.len() >= CAPACITY {
            known.clear();
        }
        known.insert(address, endpoint.clone());
        Ok(Lookup::Found(endpoint))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointRef, Arc<Endpoint>>> {
        // A panic while holding the map leaves it whole: keep using it.
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
