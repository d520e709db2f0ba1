//! Per-host circuit breakers, kept in Redis so that every worker sees one
//! state per host and `postbackctl hosts pause|resume` can set it.
//!
//! One script (`breaker.lua`) keeps, per host:port, a record
//! (`<stream>:breaker:<host:port>`: consecutive failures, state, pause,
//! when the pause ends, when the probe out expires) and the set of hosts
//! not closed (`<stream>:breaker:open`, scored by the end of their pause).
//! States: `closed`; `open` (paused until a time); `half_open` (one probe
//! out); `paused` (by hand, until resumed). How deliver uses them:
//! `services/deliver/src/breaker.rs`.

use std::fmt;
use std::time::Duration;

use fred::prelude::*;

use crate::keys::Keys;
use crate::script::Script;

/// A host's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Attempts go.
    Closed,
    /// Paused after too many failures, until its pause ends.
    Open,
    /// One probe attempt is out; the others wait for its answer.
    HalfOpen,
    /// Paused by hand until resumed.
    Paused,
}

impl State {
    fn parse(text: &str) -> Self {
        match text {
            "open" => State::Open,
            "half_open" | "probe" => State::HalfOpen,
            "paused" => State::Paused,
            _ => State::Closed,
        }
    }

    /// The name operators see (metrics labels, logs, postbackctl).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Paused => "paused",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the script answered about one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Its state now.
    pub state: State,
    /// Consecutive failed attempts.
    pub failures: u64,
    /// When its pause (or the probe out) ends, ms since the epoch; 0 when
    /// closed, -1 when paused by hand.
    pub until_ms: i64,
    /// Whether this call moved it to another state.
    pub changed: bool,
    /// Whether the caller is to send the probe (a `probe` call only).
    pub probe: bool,
}

/// The breaker script and its keys.
#[derive(Debug, Clone)]
pub struct Breakers {
    script: Script,
    prefix: String,
    open: String,
}

impl Breakers {
    /// The breakers of `keys`' stream.
    pub fn new(keys: &Keys) -> Self {
        Self {
            script: Script::new(include_str!("breaker.lua")),
            prefix: keys.breaker.clone(),
            open: format!("{}open", keys.breaker),
        }
    }

    async fn call<C: ClientLike>(&self, client: &C, op: &str, host: &str, extra: Vec<Value>) -> Result<Status, Error> {
        let record = format!("{}{host}", self.prefix);
        let mut args: Vec<Value> = vec![op.into(), host.into()];
        args.extend(extra);
        let (state, failures, until_ms, changed): (String, i64, i64, i64) =
            self.script.call(client, &[&record, &self.open], args).await?;
        Ok(Status {
            state: State::parse(&state),
            failures: failures.max(0) as u64,
            until_ms,
            changed: changed == 1,
            probe: state == "probe",
        })
    }

    /// Counts a failed attempt; opens the breaker at `mark` consecutive
    /// failures (pausing for `first`), or again after a failed probe
    /// (pausing twice as long as before, up to `longest`); either pause,
    /// and one already running, lasts at least `least` (the host's
    /// Retry-After).
    pub async fn failed<C: ClientLike>(
        &self,
        client: &C,
        host: &str,
        (mark, first, longest): (u32, Duration, Duration),
        least: Duration,
    ) -> Result<Status, Error> {
        let extra = vec![i64::from(mark).into(), ms(first).into(), ms(longest).into(), ms(least).into()];
        self.call(client, "failed", host, extra).await
    }

    /// An answer that is not a failure: closes the breaker (unless paused
    /// by hand) and forgets the failures.
    pub async fn succeeded<C: ClientLike>(&self, client: &C, host: &str) -> Result<Status, Error> {
        self.call(client, "succeeded", host, Vec::new()).await
    }

    /// Asks to send the probe of a host whose pause is over; the probe is
    /// the caller's for `lease` (then another worker may probe).
    pub async fn probe<C: ClientLike>(&self, client: &C, host: &str, lease: Duration) -> Result<Status, Error> {
        self.call(client, "probe", host, vec![ms(lease).into()]).await
    }

    /// Pauses a host by hand.
    pub async fn pause<C: ClientLike>(&self, client: &C, host: &str) -> Result<Status, Error> {
        self.call(client, "pause", host, Vec::new()).await
    }

    /// Closes a host's breaker by hand (a pause by hand, or an open one).
    pub async fn resume<C: ClientLike>(&self, client: &C, host: &str) -> Result<Status, Error> {
        self.call(client, "resume", host, Vec::new()).await
    }

    /// The hosts not closed, with the end of their pause (ms since the
    /// epoch; `None` when paused by hand).
    pub async fn not_closed<C: SortedSetsInterface + Sync>(
        &self,
        client: &C,
    ) -> Result<Vec<(String, Option<i64>)>, Error> {
        let members: Vec<(String, f64)> = client.zrange(&self.open, 0, -1, None, false, None, true).await?;
        Ok(members.into_iter().map(|(host, until)| (host, until.is_finite().then_some(until as i64))).collect())
    }

    /// Redis's clock (ms since the epoch) and the hosts not closed with the
    /// end of their pause on that clock (`None` when paused by hand),
    /// forgetting hosts whose record has expired.
    pub async fn look<C: ClientLike>(&self, client: &C) -> Result<(i64, Vec<(String, Option<i64>)>), Error> {
        let args: Vec<Value> = vec!["look".into(), self.prefix.as_str().into()];
        let reply: Vec<Value> = self.script.call(client, &[&self.open, &self.open], args).await?;
        let mut items = reply.into_iter();
        let now = items.next().and_then(|v| v.as_i64()).unwrap_or(0);
        let mut hosts = Vec::new();
        while let (Some(host), Some(until)) = (items.next(), items.next()) {
            let Some(host) = host.as_string() else { continue };
            hosts.push((host, until.as_i64().filter(|ms| *ms >= 0)));
        }
        Ok((now, hosts))
    }

    /// A host's record: state and consecutive failures.
    pub async fn record<C: HashesInterface + Sync>(&self, client: &C, host: &str) -> Result<(State, u64), Error> {
        let (state, failures): (Option<String>, Option<u64>) =
            client.hmget(format!("{}{host}", self.prefix), vec!["state", "failures"]).await?;
        Ok((state.as_deref().map_or(State::Closed, State::parse), failures.unwrap_or(0)))
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}
