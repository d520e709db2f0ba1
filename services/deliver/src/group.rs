//! The consumer group: created when missing, from the start of the stream.
//!
//! The group is created at id `0`, not `$`: postbacks that ingest queued
//! before any worker ever ran (or while the group was gone) are delivered,
//! not skipped. `MKSTREAM` creates the stream too, so workers can start
//! before the first postback arrives.

use fred::prelude::*;
use postback_common::keys::Keys;

/// Creates the group if it does not exist; an existing group is left as it
/// is (`BUSYGROUP` is success).
pub(crate) async fn ensure(client: &Client, keys: &Keys) -> Result<(), Error> {
    match client.xgroup_create::<(), _, _, _>(&keys.stream, &keys.group, "0", true).await {
        Ok(()) => {
            tracing::info!(stream = %keys.stream, group = %keys.group, "created consumer group");
            Ok(())
        }
        Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}
