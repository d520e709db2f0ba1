//! `postbackctl`: what on-call needs to see and do with the postback queue.
//!
//! # Layout
//! - [`cli`]: the command line.
//! - [`queue`]: `status` and `pending`.
//! - [`retries`]: `retries`, the retry schedule.
//! - [`dead`]: `dead list`, `dead show`, `dead export`, `dead redrive`.
//! - [`entry`]: `entry ID`, and entry values decoded as JSON.
//! - [`attempts`]: `attempts ID`, from the delivery log stream.
//! - [`hosts`]: `hosts`, `hosts pause|resume HOST:PORT`.
//! - [`partitions`]: `partitions`, `partitions resize N`.
//! - [`output`]: tables and JSON.
//!
//! The partitions come from the partition record in Redis
//! (`postback_common::layout`); every command looks at every partition it
//! lists (adding up, or listing from all) unless `--partition p` picks one;
//! entry and dead-letter ids are looked up in each.
//!
//! Exit codes: 0 done, 1 Redis failed or is unreachable (or the output
//! could not be written), 2 bad usage,
//! 3 not found (no such entry or dead letter, no attempts of that postback),
//! 4 some dead letters could not be redriven (each is named; the others
//! were), 5 the partition record cannot be used (or disagrees with
//! `POSTBACK_PARTITIONS`), or a resize could not finish.

mod attempts;
pub mod cli;
mod dead;
mod entry;
pub mod hosts;
mod output;
mod partitions;
mod queue;
mod retries;

use std::process::ExitCode;
use std::time::Duration;

use fred::prelude::*;
use postback_common::keys::{Keys, Partitions};

use crate::cli::{Cli, Command, Dead, HostsAction, PartitionsAction};
use crate::dead::DeadError;

/// Runs one command; the exit code says how it went.
pub async fn run(cli: Cli) -> ExitCode {
    let redis = match connect(&cli.redis.redis_url).await {
        Ok(redis) => redis,
        Err(e) => {
            eprintln!("error: cannot reach Redis at {} (POSTBACK_REDIS_URL): {e}", cli.redis.redis_url);
            return ExitCode::from(1);
        }
    };
    // Only a resize writes the record when there is none; looking never
    // seeds a deployment.
    let resizing = matches!(cli.command, Command::Partitions { action: Some(_) });
    let (stream, configured, cluster) = (&cli.redis.stream, cli.redis.partitions, cli.redis.is_cluster());
    let layout = if resizing {
        postback_common::layout::store::load(&redis, stream, configured, cluster).await
    } else {
        postback_common::layout::store::peek(&redis, stream, configured, cluster).await
    };
    let layout = match layout {
        Ok(layout) => layout,
        Err(postback_common::layout::store::StoreError::Redis(e)) => {
            eprintln!("error: cannot read the partition record: {e}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(5);
        }
    };
    let all = cli.group.partitions(&cli.redis, &layout);
    let partitions = match cli.partition {
        None => all.clone(),
        Some(p) => match all.get(p) {
            Some(keys) => Partitions::single(keys.clone()),
            None => {
                let listed: Vec<String> = all.all().iter().map(|k| k.partition.to_string()).collect();
                eprintln!("error: --partition {p}: the partition record lists {}", listed.join(", "));
                return ExitCode::from(2);
            }
        },
    };
    // Names every partition shares (breakers, per-minute counts).
    let keys = Keys::new(&cli.redis.stream, &cli.group.group);
    let result: Result<(), DeadError> = async {
        match cli.command {
            Command::Partitions { action: None } => {
                let shown = partitions::show(&redis, &layout, &all, &cli.redis.stream).await?;
                if cli.json { output::json(&shown) } else { partitions::print(&shown) }
            }
            Command::Partitions { action: Some(PartitionsAction::Resize { count, wait }) } => {
                let names = partitions::Names {
                    stream: &cli.redis.stream,
                    group: &cli.group.group,
                    dead: cli.group.dead_stream.as_deref(),
                };
                let before = layout.active_count();
                let after = partitions::resize(&redis, &names, count, wait).await?;
                let all = cli.group.partitions(&cli.redis, &after);
                let shown = partitions::show(&redis, &after, &all, &cli.redis.stream).await?;
                if cli.json {
                    output::json(&shown)
                } else {
                    println!("{before} -> {count} active partitions (epoch {})", after.epoch);
                    println!(
                        "Set POSTBACK_PARTITIONS={count} wherever it is set (or remove it): a process whose \
                         setting disagrees with the record refuses to start."
                    );
                    println!();
                    partitions::print(&shown);
                }
            }
            Command::Status => {
                let status = queue::status_of_all(&redis, &partitions).await?;
                if cli.json { output::json(&status) } else { queue::print_status(&status) }
            }
            Command::Pending { count } => {
                let rows = queue::pending(&redis, &partitions, count).await?;
                if cli.json { output::json(&rows) } else { queue::print_pending(&rows) }
            }
            Command::Retries { count } => {
                let rows = retries::list(&redis, &partitions, count).await?;
                if cli.json { output::json(&rows) } else { retries::print(&rows) }
            }
            Command::Entry { id } => output::json(&in_any(&partitions, |keys| entry::show(&redis, keys, &id)).await?),
            Command::Dead(Dead::List { count, filter }) => {
                let letters = dead::list(&redis, &partitions, count, &filter).await?;
                if cli.json { output::json(&letters) } else { dead::print_list(&letters) }
            }
            Command::Hosts { action: None, minutes } => {
                let rows = hosts::list(&redis, &keys, minutes).await?;
                if cli.json { output::json(&rows) } else { hosts::print(&rows, minutes) }
            }
            Command::Hosts { action: Some(action), .. } => {
                let (host, pause) = match action {
                    HostsAction::Pause { host } => (host, true),
                    HostsAction::Resume { host } => (host, false),
                };
                let status = hosts::set(&redis, &keys, &host, pause).await?;
                let what = if pause { "paused by hand" } else { "resumed (closed)" };
                let now = if status.changed { what.to_owned() } else { format!("already {}", status.state) };
                if cli.json {
                    output::json(
                        &serde_json::json!({"host": host, "state": status.state.as_str(), "changed": status.changed}),
                    )
                } else {
                    println!("{host}: {now}");
                }
            }
            Command::Attempts { id, scan } => {
                let rows = attempts::find(&redis, &partitions, &id, scan).await?;
                if cli.json { output::json(&rows) } else { attempts::print(&rows) }
            }
            Command::Dead(Dead::Export { filter }) => {
                let mut written = 0;
                for keys in partitions.all() {
                    written += dead::export(&redis, keys, &filter, &mut std::io::stdout().lock()).await?;
                }
                eprintln!("{written} dead letters exported");
            }
            Command::Dead(Dead::Show { id }) => {
                output::json(&in_any(&partitions, |keys| dead::show(&redis, keys, &id)).await?)
            }
            Command::Dead(Dead::Redrive { ids, all: _, filter, limit, dry_run }) => {
                let ids = if ids.is_empty() {
                    let letters = dead::selected_ids(&redis, &partitions, &filter, limit).await?;
                    if dry_run {
                        if cli.json {
                            output::json(&letters)
                        } else {
                            dead::print_list(&letters)
                        }
                        eprintln!("{} dead letters would be redriven (--dry-run: nothing changed)", letters.len());
                        return Ok(());
                    }
                    letters.iter().filter_map(|l| l["id"].as_str().map(str::to_owned)).collect()
                } else if dry_run {
                    ids.iter().for_each(|id| println!("would redrive {id}"));
                    eprintln!("{} dead letters would be redriven (--dry-run: nothing changed)", ids.len());
                    return Ok(());
                } else {
                    ids
                };
                let (done, skipped) = dead::redrive_in_any(&redis, &partitions, ids).await?;
                if cli.json {
                    output::json(&done)
                } else {
                    for r in &done {
                        println!("redriven {} -> {} {}", r.dead_id, r.stream, r.entry_id);
                    }
                    println!("{} dead letters redriven", done.len());
                }
                for s in &skipped {
                    eprintln!("skipped {}: {}", s.dead_id, s.why);
                }
                if let Some(first) = skipped.first() {
                    let n = skipped.len();
                    return Err(if skipped.iter().all(|s| s.missing) {
                        DeadError::NotFound(format!("{n} of the dead letters were not found ({})", first.why))
                    } else {
                        DeadError::Skipped(format!("{n} dead letters could not be redriven (see above)"))
                    });
                }
            }
        }
        Ok(())
    }
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), redis.quit()).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(DeadError::NotFound(what)) => {
            eprintln!("error: {what}");
            ExitCode::from(3)
        }
        Err(e @ (DeadError::Redis(_) | DeadError::Output(_))) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(DeadError::Skipped(what)) => {
            eprintln!("error: {what}");
            ExitCode::from(4)
        }
        Err(DeadError::Partitions(what)) => {
            eprintln!("error: {what}");
            ExitCode::from(5)
        }
    }
}

/// The first answer of `find` over the partitions that is not "not
/// found": an entry id belongs to one partition's stream.
async fn in_any<'a, F, Fut, T>(partitions: &'a Partitions, find: F) -> Result<T, DeadError>
where
    F: Fn(&'a Keys) -> Fut,
    Fut: Future<Output = Result<T, DeadError>>,
{
    let mut missing = Vec::new();
    for keys in partitions.all() {
        match find(keys).await {
            Err(DeadError::NotFound(what)) => missing.push(what),
            other => return other,
        }
    }
    Err(DeadError::NotFound(missing.join("; ")))
}

async fn connect(url: &str) -> Result<Client, Error> {
    let client = Builder::from_config(Config::from_url(url)?)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(3))
        .build()?;
    client.init().await?;
    Ok(client)
}
