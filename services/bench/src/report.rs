//! The report of `postback-bench run`: what was measured, beside the
//! ceilings measured in the same run, as a table or as JSON.

use serde::Serialize;

use crate::latency::Percentiles;
use crate::load::LoadReport;

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Where it ran.
    pub machine: Machine,
    /// How it ran.
    pub settings: serde_json::Value,
    /// postback-ingest + postback-deliver.
    pub pipeline: PipelineFigures,
    /// The bare twins on the same Redis, sink and load.
    pub bare_pipeline: Option<PipelineFigures>,
    /// The bare handler and client.
    pub ceilings: Option<Ceilings>,
    /// Our figures beside their ceilings.
    pub ratios: Vec<Ratio>,
    /// What a delivered postback costs us beside the bare pipeline (lower
    /// is better: `ratio` is ours / bare).
    pub costs: Vec<Ratio>,
}

/// The machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available to the run.
    pub cpus: usize,
    /// From /proc/cpuinfo.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// The redis-server used.
    pub redis_version: String,
}

/// One pipeline's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PipelineFigures {
    /// The load and what ingest answered.
    pub load: LoadReport,
    /// Distinct postbacks the sink received.
    pub delivered: u64,
    /// Delivered postbacks per second, from the first request to the last
    /// delivery.
    pub delivered_per_s: f64,
    /// From the end of the load until the last delivery, in seconds.
    pub drain_s: f64,
    /// Accepted→delivered latency at the sink.
    pub end_to_end: Percentiles,
    /// Accepted postbacks never delivered (must be 0).
    pub lost: u64,
    /// Deliveries of a postback already delivered.
    pub duplicates: u64,
    /// What a postback costs Redis.
    pub redis: RedisFigures,
    /// What each process cost.
    pub processes: Vec<ProcessFigures>,
}

/// What a postback costs Redis.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisFigures {
    /// Stream memory per queued postback (`MEMORY USAGE` / postbacks, with
    /// no worker running).
    pub stored_bytes_per_postback: f64,
    /// Network bytes in and out of Redis per delivered postback.
    pub net_bytes_per_postback: f64,
    /// Commands Redis ran per delivered postback (script bodies included).
    pub commands_per_postback: f64,
    /// Redis's CPU time (user + system, every primary) per delivered
    /// postback, in µs.
    pub cpu_us_per_postback: f64,
    /// Per command, most time first: calls and µs per delivered postback
    /// (a script's time includes the commands it calls).
    pub by_command: Vec<CommandCost>,
}

/// One command's share of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CommandCost {
    /// The command, as `INFO commandstats` names it.
    pub command: String,
    /// Calls per delivered postback.
    pub calls_per_postback: f64,
    /// µs spent in it per delivered postback.
    pub us_per_postback: f64,
}

/// What one process cost during the measured load.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessFigures {
    /// Which process.
    pub name: String,
    /// CPU seconds per 1,000 delivered postbacks.
    pub cpu_s_per_1000: f64,
    /// Peak RSS since it started, in MiB.
    pub peak_rss_mib: f64,
}

/// The machine's ceilings.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Ceilings {
    /// A handler that answers 202 without Redis, under the same load.
    pub http_handler_requests_per_s: f64,
    /// Its latency.
    pub http_handler_latency: Percentiles,
    /// The same HTTP client sending straight to the sink.
    pub client_requests_per_s: f64,
}

/// One of our figures beside its ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// What is compared.
    pub figure: String,
    /// Ours.
    pub ours: f64,
    /// The ceiling.
    pub ceiling: f64,
    /// ours / ceiling.
    pub ratio: f64,
}

impl Ratio {
    /// `ours` beside `ceiling`.
    pub fn new(figure: &str, ours: f64, ceiling: f64) -> Self {
        Self { figure: figure.into(), ours, ceiling, ratio: if ceiling > 0.0 { ours / ceiling } else { 0.0 } }
    }
}

impl RunReport {
    /// The report as text tables.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        out += &format!("machine: {} CPUs, {}, Linux {}, redis {}\n", m.cpus, m.cpu_model, m.kernel, m.redis_version);
        out += &format!("settings: {}\n\n", self.settings);
        let mut rows = vec![row("", &["pipeline", "bare pipeline"])];
        let bare = self.bare_pipeline.as_ref();
        let both = |f: &dyn Fn(&PipelineFigures) -> String| vec![f(&self.pipeline), bare.map_or_else(|| "-".into(), f)];
        let mut add = |label: &str, f: &dyn Fn(&PipelineFigures) -> String| rows.push(row_owned(label, both(f)));
        add("requests/s accepted", &|p| format!("{:.0}", p.load.requests_per_s));
        add("postbacks/s accepted", &|p| format!("{:.0}", p.load.postbacks_per_s));
        add("postbacks/s delivered", &|p| format!("{:.0}", p.delivered_per_s));
        add("ingest latency p50/p90/p99/max ms", &|p| pct(&p.load.latency));
        add("end-to-end latency p50/p90/p99/max ms", &|p| pct(&p.end_to_end));
        add("accepted / delivered", &|p| format!("{} / {}", p.load.accepted_postbacks, p.delivered));
        add("lost / duplicates", &|p| format!("{} / {}", p.lost, p.duplicates));
        add("failed requests", &|p| p.load.failed_requests.to_string());
        add("Redis stream bytes per postback", &|p| format!("{:.0}", p.redis.stored_bytes_per_postback));
        add("Redis network bytes per postback", &|p| format!("{:.0}", p.redis.net_bytes_per_postback));
        add("Redis commands per postback", &|p| format!("{:.2}", p.redis.commands_per_postback));
        add("Redis CPU µs per postback", &|p| format!("{:.1}", p.redis.cpu_us_per_postback));
        add("total CPU µs per postback", &|p| format!("{:.1}", p.total_cpu_us_per_postback()));
        add("CPU s per 1,000 postbacks", &|p| {
            p.processes.iter().map(|x| format!("{} {:.3}", x.name, x.cpu_s_per_1000)).collect::<Vec<_>>().join(", ")
        });
        add("peak RSS MiB", &|p| {
            p.processes.iter().map(|x| format!("{} {:.1}", x.name, x.peak_rss_mib)).collect::<Vec<_>>().join(", ")
        });
        out += &table(&rows);
        if let Some(c) = &self.ceilings {
            out += &format!(
                "\nceilings: bare HTTP handler {:.0} requests/s (p50 {:.2} ms); bare client to sink {:.0} requests/s\n",
                c.http_handler_requests_per_s, c.http_handler_latency.p50_ms, c.client_requests_per_s
            );
        }
        if !self.ratios.is_empty() {
            out += "\n";
            let mut rows = vec![row("figure", &["ours", "ceiling", "ratio"])];
            for r in &self.ratios {
                rows.push(row_owned(
                    &r.figure,
                    vec![format!("{:.0}", r.ours), format!("{:.0}", r.ceiling), format!("{:.2}", r.ratio)],
                ));
            }
            out += &table(&rows);
        }
        if !self.costs.is_empty() {
            out += "\n";
            let mut rows = vec![row("cost per delivered postback", &["ours", "bare", "ours ÷ bare"])];
            for r in &self.costs {
                rows.push(row_owned(
                    &r.figure,
                    vec![format!("{:.2}", r.ours), format!("{:.2}", r.ceiling), format!("{:.2}", r.ratio)],
                ));
            }
            out += &table(&rows);
        }
        out += "\nRedis commands of the pipeline, per delivered postback (a script's µs include its commands'):\n";
        let mut rows = vec![row("command", &["calls", "µs"])];
        for c in self.pipeline.redis.by_command.iter().take(12) {
            rows.push(row_owned(
                &c.command,
                vec![format!("{:.3}", c.calls_per_postback), format!("{:.2}", c.us_per_postback)],
            ));
        }
        out += &table(&rows);
        out
    }
}

impl PipelineFigures {
    /// CPU of every process (services and Redis) per delivered postback, in µs.
    pub fn total_cpu_us_per_postback(&self) -> f64 {
        self.processes.iter().map(|p| p.cpu_s_per_1000 * 1000.0).sum()
    }
}

fn pct(p: &Percentiles) -> String {
    format!("{:.2} / {:.2} / {:.2} / {:.1}", p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms)
}

fn row(label: &str, cells: &[&str]) -> Vec<String> {
    std::iter::once(label.to_owned()).chain(cells.iter().map(|c| (*c).to_owned())).collect()
}

fn row_owned(label: &str, cells: Vec<String>) -> Vec<String> {
    std::iter::once(label.to_owned()).chain(cells).collect()
}

fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().enumerate().map(|(c, s)| format!("{s:<w$}", w = widths[c])).collect();
        out += cells.join("  ").trim_end();
        out += "\n";
    }
    out
}
