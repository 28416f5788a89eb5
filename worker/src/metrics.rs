//! The worker's metrics: what they are called, what their labels are, and the helper
//! functions the pipeline calls. Rendering lives in [`sluice_core::metrics`]; the HTTP
//! endpoint in [`crate::admin`].
//!
//! Completion, duration, provider, token and cost metrics are recorded from the ledger
//! once a batch is durably written ([`Observed`]), so they count exactly what Postgres
//! holds and the hot path pays nothing for them. Every label value is bounded: tiers,
//! statuses, error classes and `'static` reasons, and model groups and deployments from
//! the config (a group the config does not know is reported as `other`); provider model
//! names and key ids are capped ([`sluice_core::metrics::capped`]). Cost is a fractional
//! counter kept by [`sluice_core::metrics::add_cost`].

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use rust_decimal::prelude::ToPrimitive;
use sluice_core::group_commit::Flush;
use sluice_core::metrics::{add_cost, capped};
use sluice_core::store::LedgerEntry;
use sluice_core::Config;
use sluice_schemas::{ErrorClass, JobStatus, Tier};

/// Describes every worker metric (HELP lines) and installs the recorder.
pub fn describe() {
    sluice_core::metrics::install();
    sluice_core::queue::describe();
    describe_counter!(
        "sluice_jobs_completed_total",
        "Jobs that reached a terminal state and were recorded, by status, tier and model group"
    );
    describe_histogram!(
        "sluice_job_queue_wait_seconds",
        "Time from publish to first delivery to a worker"
    );
    describe_histogram!(
        "sluice_job_run_seconds",
        "Time from the first provider call of a delivery to the recorded result"
    );
    describe_histogram!(
        "sluice_job_end_to_end_seconds",
        "Time from submission to the recorded result"
    );
    describe_histogram!(
        "sluice_provider_request_duration_seconds",
        "Provider call latency by provider, deployment and outcome (succeeded or error class)"
    );
    describe_histogram!(
        "sluice_provider_ttft_seconds",
        "Provider time to first token, by provider and deployment"
    );
    describe_counter!(
        "sluice_tokens_total",
        "Tokens billed, by kind (prompt, completion, cached, cache_creation, reasoning), deployment and provider model (capped)"
    );
    describe_counter!(
        "sluice_pricing_missing_total",
        "Provider calls that had no price configured"
    );
    describe_counter!(
        "sluice_retries_total",
        "Retries of a job's provider call, by reason (error class)"
    );
    describe_counter!(
        "sluice_fallbacks_total",
        "Hops to a fallback model group, by reason"
    );
    describe_counter!(
        "sluice_cooldowns_total",
        "Deployments put in cooldown, by deployment and reason"
    );
    describe_counter!(
        "sluice_deferrals_total",
        "Jobs handed back to the queue to run later, by reason"
    );
    describe_gauge!("sluice_jobs_in_flight", "Jobs this worker is running now");
    describe_counter!(
        "sluice_job_panics_total",
        "Job tasks that panicked (each job ended failed, class internal; the worker lived on)"
    );
    describe_gauge!(
        "sluice_worker_capacity",
        "Concurrent jobs this worker runs at most"
    );
}

/// A job's provider call is being retried.
pub fn retry(reason: &'static str) {
    counter!("sluice_retries_total", "reason" => reason).increment(1);
}

/// A job moves on to a fallback model group.
pub fn fallback(reason: &'static str) {
    counter!("sluice_fallbacks_total", "reason" => reason).increment(1);
}

/// A deployment was put in cooldown (`deployment` is a configured id).
pub fn cooldown(deployment: &str, reason: &'static str) {
    counter!("sluice_cooldowns_total", "deployment" => deployment.to_string(), "reason" => reason)
        .increment(1);
}

/// A job was handed back to run later (no budget, store unavailable, ...).
pub fn deferral(reason: &'static str) {
    counter!("sluice_deferrals_total", "reason" => reason).increment(1);
}

/// A job task panicked and its job was ended.
pub fn panicked() {
    counter!("sluice_job_panics_total").increment(1);
}

/// Sets the capacity gauge.
pub fn capacity(n: usize) {
    gauge!("sluice_worker_capacity").set(n as f64);
}

/// Counts a running job for as long as it lives.
pub struct InFlight(());

impl InFlight {
    /// A job of `tier` starts; `published` is when JetStream stored its message and
    /// `delivery` which delivery this is (queue wait is measured on the first only).
    pub fn start(tier: Tier, published_unix_ns: Option<i128>, delivery: i64) -> InFlight {
        gauge!("sluice_jobs_in_flight").increment(1.0);
        if delivery <= 1 {
            if let Some(published) = published_unix_ns {
                let now = Utc::now()
                    .timestamp_nanos_opt()
                    .map(i128::from)
                    .unwrap_or(published);
                let wait = ((now - published).max(0) as f64) / 1e9;
                histogram!("sluice_job_queue_wait_seconds", "tier" => tier.as_str()).record(wait);
            }
        }
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!("sluice_jobs_in_flight").decrement(1.0);
    }
}

/// Wraps the ledger writer: after a batch is durably written, records what it holds.
pub struct Observed<F> {
    inner: F,
    groups: Arc<HashSet<String>>,
}

impl<F> Observed<F> {
    pub fn new(inner: F, config: &Config) -> Self {
        let groups = config.groups().into_iter().map(str::to_string).collect();
        Observed {
            inner,
            groups: Arc::new(groups),
        }
    }
}

impl<F: Flush<LedgerEntry>> Flush<LedgerEntry> for Observed<F> {
    type Out = F::Out;
    fn flush<'a>(
        &'a self,
        items: &'a [LedgerEntry],
    ) -> BoxFuture<'a, Result<Vec<Self::Out>, sluice_core::group_commit::FlushError>> {
        Box::pin(async move {
            let out = self.inner.flush(items).await?;
            for entry in items {
                self.record(entry);
            }
            Ok(out)
        })
    }
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_microseconds().unwrap_or(0).max(0) as f64) / 1e6
}

impl<F> Observed<F> {
    fn group(&self, group: &str) -> String {
        if self.groups.contains(group) {
            group.to_string()
        } else {
            "other".to_string()
        }
    }

    fn record(&self, entry: &LedgerEntry) {
        let LedgerEntry::Finished { job, attempts, .. } = entry else {
            return;
        };
        let tier = job.tier.as_str();
        let status = match job.status {
            s @ (JobStatus::Succeeded
            | JobStatus::Failed
            | JobStatus::Cancelled
            | JobStatus::Expired) => s.as_str(),
            JobStatus::Queued | JobStatus::Running => "other",
        };
        let group = self.group(&job.model_group);
        counter!("sluice_jobs_completed_total", "status" => status, "tier" => tier, "model_group" => group.clone())
            .increment(1);
        histogram!("sluice_job_end_to_end_seconds", "tier" => tier, "model_group" => group.clone())
            .record(seconds(job.created_at, job.finished_at));
        if let Some(first) = attempts.iter().map(|a| a.started_at).min() {
            histogram!("sluice_job_run_seconds", "tier" => tier, "model_group" => group.clone())
                .record(seconds(first, job.finished_at));
        }
        let key = capped("key", &job.owner);
        for a in attempts {
            let model = capped("model", &a.model);
            let outcome = a.error_class.map_or("succeeded", ErrorClass::as_str);
            if let Some(ms) = a.latency_ms {
                histogram!("sluice_provider_request_duration_seconds",
                    "provider" => a.provider.clone(), "deployment" => a.deployment.clone(), "outcome" => outcome)
                .record(ms / 1000.0);
            }
            if let Some(ms) = a.ttft_ms {
                histogram!("sluice_provider_ttft_seconds",
                    "provider" => a.provider.clone(), "deployment" => a.deployment.clone())
                .record(ms / 1000.0);
            }
            for (kind, n) in [
                ("prompt", a.prompt_tokens),
                ("completion", a.completion_tokens),
                ("cached", a.cached_tokens),
                ("cache_creation", a.cache_creation_tokens),
                ("reasoning", a.reasoning_tokens),
            ] {
                if let Some(n) = n.filter(|n| *n > 0) {
                    counter!("sluice_tokens_total", "kind" => kind, "deployment" => a.deployment.clone(), "model" => model.clone())
                        .increment(n as u64);
                }
            }
            match a.cost.and_then(|c| c.to_f64()) {
                Some(usd) => add_cost(
                    &[
                        ("model_group", &group),
                        ("deployment", &a.deployment),
                        ("key", &key),
                    ],
                    usd,
                ),
                None if a.pricing_missing => {
                    counter!("sluice_pricing_missing_total", "deployment" => a.deployment.clone())
                        .increment(1)
                }
                None => {}
            }
        }
    }
}
