//! Running Lua scripts by their SHA1 (EVALSHA), loading them when Redis does
//! not know them (first use, or after a restart).
//!
//! Every multi-step change to the queue is one script, because Redis runs a
//! script without interleaving anything else: a postback moved from one key
//! to another is never in both and never in neither, whatever crashes.

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

/// A Lua script and its SHA1.
#[derive(Debug, Clone)]
pub struct Script {
    source: &'static str,
    sha: String,
}

impl Script {
    /// Wraps a script's source.
    pub fn new(source: &'static str) -> Self {
        Self { source, sha: fred::util::sha1_hash(source) }
    }

    /// The SHA1 that names the script in Redis.
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// Runs the script with `keys` and `args` on `client` (which may carry
    /// per-command options), loading it first if Redis answers NOSCRIPT.
    pub async fn call<C, R>(&self, client: &C, keys: &[&str], args: Vec<Value>) -> Result<R, Error>
    where
        C: ClientLike,
        R: FromValue,
    {
        let mut full: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
        full.push(self.sha.as_str().into());
        full.push((keys.len() as i64).into());
        full.extend(keys.iter().map(|k| Value::from(*k)));
        full.extend(args);
        // On a Cluster the script runs, and must be loaded, on the primary
        // of its keys' slot (the caller keeps them in one).
        let slot =
            keys.first().map_or(ClusterHash::Random, |k| ClusterHash::Custom(fred::util::redis_keyslot(k.as_bytes())));
        let evalsha = CustomCommand::new_static("EVALSHA", slot.clone(), false);
        match client.custom(evalsha.clone(), full.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let load = CustomCommand::new_static("SCRIPT", slot, false);
                let _: String = client.custom(load, vec!["LOAD", self.source]).await?;
                client.custom(evalsha, full).await
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_named_by_its_sha1() {
        let script = Script::new("return 1");
        assert_eq!(script.sha(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
