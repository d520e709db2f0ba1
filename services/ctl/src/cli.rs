//! The command line of `postbackctl`.

use std::time::SystemTime;

use clap::{Parser, Subcommand};
use postback_common::config::{GroupArgs, RedisArgs};
use postback_common::records::dead_letter::Category;

/// On-call view of the postback queue: what waits, who holds it, what was
/// given up, and putting given-up postbacks back.
#[derive(Debug, Parser)]
#[command(name = "postbackctl", version, about)]
pub struct Cli {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub group: GroupArgs,

    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,

    /// Look at this partition only (a number `postbackctl partitions`
    /// lists); without it, every partition, added up.
    #[arg(long, global = true)]
    pub partition: Option<u32>,

    #[command(subcommand)]
    #[allow(missing_docs)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream length, lag, pending (per consumer, with idle time), oldest
    /// pending age, scheduled retries, dead letters.
    Status,
    /// The oldest pending entries: who holds them, for how long, how often
    /// they were handed out.
    Pending {
        /// How many.
        #[arg(long, default_value_t = 20)]
        count: u64,
    },
    /// The retry schedule, soonest first: when each postback is due (or
    /// how late), its attempts so far and its target host.
    Retries {
        /// How many.
        #[arg(long, default_value_t = 20)]
        count: u64,
    },
    /// One stream entry, its postbacks decoded (a request's postbacks
    /// share one entry; ids come from `pending`).
    Entry {
        /// The stream entry id.
        id: String,
    },
    /// The dead-letter stream.
    #[command(subcommand)]
    Dead(Dead),
    /// Target hosts: each one's circuit breaker (closed, open, half_open,
    /// paused) and, across all workers, its attempts, failures and response
    /// times lately; or pause and resume one by hand.
    Hosts {
        #[command(subcommand)]
        #[allow(missing_docs)]
        action: Option<HostsAction>,
        /// Minutes of attempts to count.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=120))]
        minutes: u64,
    },
    /// The partitions: each one's state, stream, slot, primary and
    /// contents, and the delivery processes following the record; or
    /// change their count online.
    Partitions {
        #[command(subcommand)]
        #[allow(missing_docs)]
        action: Option<PartitionsAction>,
    },
    /// The recent attempts of one postback, from the delivery log stream.
    Attempts {
        /// The postback id (X-Postback-Id, or an id from the 202).
        id: String,
        /// How many of the newest attempts logged to search.
        #[arg(long, default_value_t = 10_000)]
        scan: u64,
    },
}

/// Changing the partitions.
#[derive(Debug, Subcommand)]
pub enum PartitionsAction {
    /// Make N partitions take requests, online. Growing adds partitions,
    /// waits until every delivery process reads them, then lets ingest
    /// write to them; shrinking stops ingest writing to the partitions that
    /// go (names from before the partition record first, then the newest),
    /// which deliver keeps reading until they are empty and then retires.
    Resize {
        /// The number of partitions to take requests.
        #[arg(value_parser = clap::value_parser!(u32).range(1..=postback_common::config::MAX_PARTITIONS as i64))]
        count: u32,
        /// How long a grow waits for the delivery processes.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
}

/// Pausing a host by hand.
#[derive(Debug, Subcommand)]
pub enum HostsAction {
    /// Stop every worker sending to HOST:PORT until `hosts resume`; its
    /// postbacks wait in the retry schedule without spending attempts.
    Pause {
        /// The target, as `postbackctl hosts` lists it: HOST:PORT.
        #[arg(value_parser = crate::hosts::parse_host)]
        host: String,
    },
    /// Let workers send to HOST:PORT again (also closes an open breaker);
    /// its waiting postbacks come back within ten minutes.
    Resume {
        /// The target: HOST:PORT.
        #[arg(value_parser = crate::hosts::parse_host)]
        host: String,
    },
}

/// Dead-letter subcommands.
#[derive(Debug, Subcommand)]
pub enum Dead {
    /// The newest dead letters with their reasons and targets, optionally
    /// only those matching the filters.
    List {
        /// How many at most.
        #[arg(long, visible_alias = "limit", default_value_t = 20)]
        count: u64,
        #[command(flatten)]
        #[allow(missing_docs)]
        filter: LetterFilter,
    },
    /// One dead letter in full, its postback decoded.
    Show {
        /// The dead letter's id (from `dead list`).
        id: String,
    },
    /// Write dead letters as JSON lines (one letter per line, oldest first,
    /// postbacks decoded) to stdout: what to keep before
    /// POSTBACK_DEAD_RETENTION trims them. Without filters, every letter.
    Export {
        #[command(flatten)]
        #[allow(missing_docs)]
        filter: LetterFilter,
    },
    /// Put dead letters back into the stream as fresh postbacks (attempts
    /// start again), each exactly once. A letter that cannot go back (no
    /// postback in it, or its endpoint record gone) is named and skipped,
    /// and the others are redriven all the same (exit code 4).
    Redrive {
        /// Dead letter ids.
        #[arg(required_unless_present_any = ["all", "host", "reason", "since", "until"], conflicts_with_all = ["all", "host", "reason", "since", "until"])]
        ids: Vec<String>,
        /// Every dead letter (that matches the filters, if any).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        #[allow(missing_docs)]
        filter: LetterFilter,
        /// Redrive at most this many (oldest first).
        #[arg(long)]
        limit: Option<u64>,
        /// Say which letters would be redriven; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// A point in time: RFC 3339, or an age back from now.
fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    let age = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time (2026-11-01T00:00:00Z) nor an age (30d, 12h)"))?;
    Ok(SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// Which dead letters a command takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LetterFilter {
    /// Only letters whose postback goes to this host (or host:port).
    #[arg(long)]
    pub host: Option<String>,
    /// Only letters of this category: exhausted, rejected, refused,
    /// undecodable, poison or other (a letter's `category` field; for
    /// letters written before it, read from the reason).
    #[arg(long, value_parser = Category::parse)]
    pub reason: Option<Category>,
    /// Only letters written at or after this time (RFC 3339, or an age
    /// such as 2h).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<SystemTime>,
    /// Only letters written at or before this time, the same way.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<SystemTime>,
}
