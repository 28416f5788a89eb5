//! The process-wide Prometheus recorder that `GET /metrics` renders, on the api and on
//! the worker (and on both at once when they share a process, as in tests).
//!
//! This module owns installation and rendering only. Which metrics exist is decided next
//! to their use: `sluice_api::metrics`, `sluice_worker::metrics`, and the queue gauges in
//! [`crate::queue`]. Naming follows Prometheus conventions (`sluice_*`, `_total`,
//! `_seconds`); every label set is bounded (tiers, statuses, configured groups and
//! deployments, error classes) and never carries a key or other secret.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for every `_seconds` histogram: from 5 ms provider calls to jobs that
/// waited an hour in a backlog.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first use. `None` if another recorder was installed first
/// (then Sluice's metrics go there and `/metrics` is empty).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(SECONDS_BUCKETS) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "invalid histogram buckets");
                    PrometheusBuilder::new()
                }
            };
            match builder.install_recorder() {
                Ok(handle) => {
                    metrics::describe_gauge!(
                        "sluice_build_info",
                        "Always 1; the running build's version in the labels"
                    );
                    metrics::gauge!("sluice_build_info", "version" => env!("CARGO_PKG_VERSION"))
                        .set(1.0);
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed");
                    None
                }
            }
        })
        .as_ref()
}

/// The Prometheus text exposition of everything recorded so far, the fractional counters
/// ([`add_cost`]) and the process metrics.
pub fn render() -> String {
    let mut out = match install() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => return String::new(),
    };
    render_costs(&mut out);
    render_process(&mut out);
    out
}

/// How many distinct values a capped label ([`capped`]) takes before the rest are
/// reported as `other`.
pub const LABEL_CAP: usize = 100;

/// `value` as a label of the series family `family`: itself for the first [`LABEL_CAP`]
/// distinct values seen in this process, `other` beyond them. For labels whose values come
/// from callers (virtual key ids, provider model names), so a series family stays bounded.
pub fn capped(family: &'static str, value: &str) -> String {
    static SEEN: OnceLock<Mutex<HashMap<&'static str, HashSet<String>>>> = OnceLock::new();
    let Ok(mut seen) = SEEN.get_or_init(Mutex::default).lock() else {
        return "other".into();
    };
    let set = seen.entry(family).or_default();
    if set.contains(value) {
        return value.to_string();
    }
    if set.len() < LABEL_CAP {
        set.insert(value.to_string());
        return value.to_string();
    }
    "other".into()
}

/// USD spent per series (labels already rendered), kept here because Prometheus counters
/// of the `metrics` crate are integers.
type Costs = Mutex<HashMap<String, f64>>;

fn costs() -> &'static Costs {
    static COSTS: OnceLock<Costs> = OnceLock::new();
    COSTS.get_or_init(Costs::default)
}

/// Adds `usd` to the [`COST`] counter of `labels` (name, value pairs;
/// bounded values only).
pub fn add_cost(labels: &[(&str, &str)], usd: f64) {
    if !usd.is_finite() || usd <= 0.0 {
        return;
    }
    let mut key = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        let _ = write!(key, "{k}=\"{}\"", escape(v));
    }
    if let Ok(mut c) = costs().lock() {
        *c.entry(key).or_insert(0.0) += usd;
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The fractional USD counter ([`add_cost`]).
pub const COST: &str = "sluice_cost_usd_total";

fn render_costs(out: &mut String) {
    let Ok(c) = costs().lock() else { return };
    let _ = writeln!(
        out,
        "# HELP {COST} USD spent, by model group, deployment and key\n# TYPE {COST} counter"
    );
    let mut series: Vec<_> = c.iter().collect();
    series.sort_by(|a, b| a.0.cmp(b.0));
    for (labels, usd) in series {
        let _ = writeln!(out, "{COST}{{{labels}}} {usd}");
    }
}

/// The standard process metrics, read from `/proc` at each scrape (Linux; elsewhere
/// nothing is written).
fn render_process(out: &mut String) {
    let Some(p) = ProcessStats::read() else {
        return;
    };
    let mut family = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent",
        p.cpu_seconds,
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size",
        p.rss_bytes,
    );
    family(
        "process_open_fds",
        "gauge",
        "Open file descriptors",
        p.open_fds,
    );
    if let Some(max) = p.max_fds {
        family(
            "process_max_fds",
            "gauge",
            "Limit of open file descriptors",
            max,
        );
    }
}

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
    pub open_fds: f64,
    pub max_fds: Option<f64>,
}

impl ProcessStats {
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces, so split after its ')');
        // utime and stime are the 14th and 15th fields, in clock ticks of 1/100 s (USER_HZ,
        // fixed for user space on Linux).
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok())
            });
        Some(ProcessStats {
            cpu_seconds: ticks / 100.0,
            rss_bytes: rss_kb * 1024.0,
            open_fds,
            max_fds,
        })
    }
}

/// Keeps histogram storage bounded between scrapes; call every few seconds.
pub fn upkeep() {
    if let Some(h) = install() {
        h.run_upkeep();
    }
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_labels_turn_into_other_past_the_cap() {
        for i in 0..LABEL_CAP {
            assert_eq!(capped("test_family", &format!("v{i}")), format!("v{i}"));
        }
        assert_eq!(capped("test_family", "one-too-many"), "other");
        assert_eq!(
            capped("test_family", "v0"),
            "v0",
            "known values keep their series"
        );
        assert_eq!(capped("another_family", "fresh"), "fresh");
    }

    #[test]
    fn process_stats_are_read_from_proc() {
        let p = ProcessStats::read().unwrap();
        assert!(p.rss_bytes > 0.0);
        assert!(p.open_fds >= 3.0);
        assert!(p.cpu_seconds >= 0.0);
    }

    #[test]
    fn costs_accumulate_as_a_counter() {
        add_cost(&[("model_group", "g\"x")], 0.25);
        add_cost(&[("model_group", "g\"x")], 0.5);
        add_cost(&[("model_group", "g\"x")], f64::NAN);
        let mut out = String::new();
        render_costs(&mut out);
        assert!(out.contains("# TYPE sluice_cost_usd_total counter"));
        assert!(
            out.contains("sluice_cost_usd_total{model_group=\"g\\\"x\"} 0.75"),
            "{out}"
        );
    }
}
