//! [`Attempt`]: one call of one deployment for one job, from the moment the limits admit
//! it. It knows what goes on record before the call ([`Attempt::started`]), what the call's
//! outcome writes down ([`Attempt::record`]) and what that outcome says about the
//! deployment's health ([`Attempt::health`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice_core::config::Deployment;
use sluice_core::store::{AttemptRecord, AttemptStarted};
use sluice_schemas::job::JobResult;
use sluice_schemas::openai::{ChatCompletion, ChatRequest, Content, Usage};
use sluice_schemas::{AttemptStatus, ErrorClass, Tier};
use uuid::Uuid;

use crate::limits::{Health, Held};
use crate::providers::{CallOutput, ProviderError};
use crate::{ledger, Ctx};

/// One admitted call.
pub(super) struct Attempt {
    pub(super) job_id: Uuid,
    /// Counted from 1 across every delivery of the job; allocated by the job row when the
    /// attempt starts (until then, the number it expects).
    pub(super) number: u32,
    /// The JetStream delivery this attempt belongs to.
    pub(super) delivery: u32,
    pub(super) deployment: Arc<Deployment>,
    /// What the limits counted for the call; settled once it ends, or by itself if the
    /// job lets go of it (cancel, hard stop, panic).
    pub(super) held: Held,
    /// When the limits counted it (Redis time when Redis was asked).
    pub(super) started_at: DateTime<Utc>,
}

/// The job-level fields an attempt's first record also writes on the job row.
pub(super) struct JobFields<'a> {
    pub(super) owner: &'a str,
    pub(super) group: &'a str,
    pub(super) tier: Tier,
    pub(super) reply_subject: &'a Option<String>,
    pub(super) created_at: DateTime<Utc>,
}

impl Attempt {
    /// The note that this call starts; written (and the job claimed) before the call.
    pub(super) fn started(&self, ctx: &Ctx, job: JobFields<'_>) -> AttemptStarted {
        let d = &self.deployment;
        AttemptStarted {
            job_id: self.job_id,
            owner: job.owner.to_string(),
            model_group: job.group.to_string(),
            tier: job.tier,
            reply_subject: job.reply_subject.clone(),
            created_at: job.created_at,
            delivery: self.delivery,
            worker: ctx.worker_id.clone(),
            deployment: d.id.clone(),
            provider: d.provider.clone(),
            model: d.model.clone(),
            started_at: self.started_at,
            max_calls: ctx.config.max_calls_per_job(),
            reserved_cost: Some(self.held.estimate().cost).filter(|c| *c > 0.0),
        }
    }

    /// The attempt row for a finished call: usage (estimated when the provider sent
    /// none), cost, timings, or the error's class and message.
    pub(super) fn record(
        &self,
        ctx: &Ctx,
        request: &ChatRequest,
        result: &Result<CallOutput, ProviderError>,
    ) -> AttemptRecord {
        let d = &self.deployment;
        let finished_at = Utc::now();
        let dropped = match result {
            Ok(out) => &out.dropped_params,
            Err(e) => &e.dropped_params,
        };
        let mut r = AttemptRecord {
            job_id: self.job_id,
            attempt: self.number,
            delivery: self.delivery,
            worker: ctx.worker_id.clone(),
            deployment: d.id.clone(),
            provider: d.provider.clone(),
            model: d.model.clone(),
            status: AttemptStatus::Failed,
            error_class: None,
            error_message: None,
            prompt_tokens: None,
            completion_tokens: None,
            cached_tokens: None,
            cache_creation_tokens: None,
            reasoning_tokens: None,
            usage_estimated: false,
            cost: None,
            pricing_missing: false,
            ttft_ms: None,
            latency_ms: None,
            started_at: self.started_at,
            finished_at,
            dropped_params: (!dropped.is_empty()).then(|| dropped.clone()),
        };
        match result {
            Ok(out) => succeeded(ctx, d, request, out, &mut r),
            Err(e) => {
                r.error_class = Some(e.class);
                r.error_message = Some(e.message.clone());
                r.latency_ms = Some(
                    (finished_at - self.started_at)
                        .num_microseconds()
                        .unwrap_or(0) as f64
                        / 1000.0,
                );
            }
        }
        r
    }

    /// What the call's outcome says about its deployment (the cooldown rules: a 429 or
    /// an overload cools down at once; timeouts, 5xx, connection, truncation, auth and
    /// not-found failures count toward `allowed_fails`).
    pub(super) fn health(&self, ctx: &Ctx, result: &Result<CallOutput, ProviderError>) -> Health {
        let d = &self.deployment;
        let r = &ctx.config.router;
        let cooldown = d.cooldown_time.unwrap_or(r.cooldown_time);
        let mut h = Health {
            ok: result.is_ok(),
            allowed_fails: r.allowed_fails,
            cooldown,
            ..Default::default()
        };
        match result {
            Ok(out) => {
                h.latency = out.latency;
                h.ttft = out.ttft;
            }
            Err(e) => {
                h.latency = (Utc::now() - self.started_at).to_std().unwrap_or_default();
                if r.disable_cooldowns {
                    return h;
                }
                // `allowed_fails_policy` names the class: its failures count against that
                // class's own allowance (a 429 too, instead of cooling down at once).
                if let Some(n) = r.allowed_fails_for(e.class).filter(|_| cools(e.class)) {
                    h.counts_as_failure = true;
                    h.allowed_fails = n;
                    return h;
                }
                match e.class {
                    // 429 / overloaded: cool down at once, for the deployment's
                    // cooldown_time, else the provider's Retry-After, else the router's.
                    ErrorClass::RateLimit | ErrorClass::Overloaded => {
                        h.cool_now = d.cooldown_time.or(e.retry_after).unwrap_or(r.cooldown_time);
                    }
                    ErrorClass::Timeout
                    | ErrorClass::Server
                    | ErrorClass::Connection
                    | ErrorClass::TruncatedStream
                    | ErrorClass::Auth
                    | ErrorClass::NotFound => h.counts_as_failure = true,
                    _ => {}
                }
            }
        }
        h
    }
}

/// Whether failures of `class` can cool a deployment down at all (a bad request or a
/// content-policy refusal says nothing about the deployment).
fn cools(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::RateLimit
            | ErrorClass::Overloaded
            | ErrorClass::Timeout
            | ErrorClass::Server
            | ErrorClass::Connection
            | ErrorClass::TruncatedStream
            | ErrorClass::Auth
            | ErrorClass::NotFound
    )
}

/// Fills the success fields of `r` from `out`.
fn succeeded(
    ctx: &Ctx,
    d: &Deployment,
    request: &ChatRequest,
    out: &CallOutput,
    r: &mut AttemptRecord,
) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (usage, estimated) = match out.usage {
        Some(u) => (u, false),
        None => match &out.result {
            JobResult::Chat(c) => (ledger::estimate_usage(request, &completion_text(c)), true),
            // Filled with the input estimate (`job/embed.rs`).
            JobResult::Embeddings(e) => (Usage::new(e.usage.prompt_tokens, 0), true),
        },
    };
    r.status = AttemptStatus::Succeeded;
    r.prompt_tokens = Some(usage.prompt_tokens as i64);
    r.completion_tokens = Some(usage.completion_tokens as i64);
    r.cached_tokens = Some(usage.cached_tokens() as i64);
    r.cache_creation_tokens = Some(usage.cache_creation_tokens() as i64);
    r.reasoning_tokens = Some(usage.reasoning_tokens() as i64);
    r.usage_estimated = estimated;
    r.cost = ctx.prices.of(d).map(|p| p.cost(&usage));
    r.pricing_missing = r.cost.is_none();
    r.ttft_ms = out.ttft.map(ms);
    r.latency_ms = Some(ms(out.latency));
}

/// The usage an attempt row bills.
pub(super) fn record_usage(r: &AttemptRecord) -> Usage {
    Usage::new(
        r.prompt_tokens.unwrap_or(0).max(0) as u64,
        r.completion_tokens.unwrap_or(0).max(0) as u64,
    )
}

fn completion_text(c: &ChatCompletion) -> String {
    c.choices
        .iter()
        .filter_map(|ch| match &ch.message.content {
            Some(Content::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}
