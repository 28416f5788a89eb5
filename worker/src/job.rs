//! One job through the pipeline: parse → (redelivery check) → route → call → publish →
//! record → ack. Each stage's input and output is explicit; nothing reaches back.
//!
//! The ack comes last: a job is acknowledged only after its result and every attempt are
//! durable in Postgres and its terminal event is stored in JetStream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use sluice_core::config::Deployment;
use sluice_core::store::{
    AttemptRecord, AttemptStarted, JobDeferred, JobOutcome, LedgerEntry, WebhookOutcome,
};
use sluice_schemas::events::HEADER_DLQ_REASON;
use sluice_schemas::job::JobError;
use sluice_schemas::openai::{ChatCompletion, Content, Usage};
use sluice_schemas::{DoneEvent, ErrorClass, JobEnvelope, JobStatus, RetryEvent, Tier};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::events::{EventPublisher, EventSink};
use crate::limits::{self, Actual, Admission, Candidate, Health};
use crate::providers::{CallOutput, ProviderError};
use crate::{ledger, retry, tokens, Ctx};

/// A concurrency lease outlives the call's timeout by this much before it expires on its
/// own (which only happens when a worker died holding it).
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Handles one delivered message to the end (ack, nak or term).
pub(crate) async fn handle(ctx: Arc<Ctx>, msg: jetstream::Message, tier: Tier) {
    let delivery = msg.info().map(|i| i.delivered).unwrap_or(1).max(1);
    let payload = match crate::bodies::envelope(&ctx, &msg).await {
        crate::bodies::Resolved::Body(b) => b,
        crate::bodies::Resolved::Missing(reason) => {
            Box::pin(dead_letter(&ctx, &msg, &reason)).await;
            return;
        }
        crate::bodies::Resolved::Handled => return,
    };
    let envelope: JobEnvelope = match serde_json::from_slice(&payload) {
        Ok(e) => e,
        Err(e) => {
            let reason = format!("unparseable job envelope: {e}");
            Box::pin(dead_letter(&ctx, &msg, &reason)).await;
            return;
        }
    };
    let id = envelope.id;
    let Some(cancel) = ctx.claim(id) else {
        // Our own earlier delivery of this job is still running (ack wait expired under
        // load): let that one finish; this copy comes back later and is skipped then.
        let _ = msg
            .ack_with(AckKind::Nak(Some(ctx.config.worker.ack_wait)))
            .await;
        return;
    };
    let span = tracing::info_span!("job", job_id = %id, tier = %tier, delivery);
    handle_claimed(&ctx, msg, envelope, tier, delivery as i32, cancel)
        .instrument(span)
        .await;
    ctx.release(id);
}

async fn handle_claimed(
    ctx: &Ctx,
    msg: jetstream::Message,
    envelope: JobEnvelope,
    tier: Tier,
    delivery: i32,
    cancel: CancellationToken,
) {
    let id = envelope.id;
    let first_attempt = if delivery > 1 {
        match Box::pin(ctx.store.job_progress(id)).await {
            Ok(p) if p.terminal => {
                tracing::info!("redelivered job is already finished; republishing its result");
                Box::pin(republish_terminal(ctx, id)).await;
                let _ = msg.ack().await;
                return;
            }
            Ok(p) => p.last_attempt + 1,
            Err(e) => {
                let d = Deferred::now(
                    "postgres_unavailable",
                    format!("cannot read job progress: {e}"),
                );
                Box::pin(defer(ctx, &msg, id, d)).await;
                return;
            }
        }
    } else {
        1
    };
    let reply_subject = envelope.reply_subject.clone();
    let webhook_url = envelope.webhook_url.clone();

    // Run the job, keeping the message alive with in-progress acks.
    // Boxed, and so are the short awaits inside it: thousands of jobs wait on provider
    // calls at once, and each should hold only the state of that wait.
    let mut work = Box::pin(run(ctx, envelope, tier, delivery, first_attempt));
    let mut keepalive = tokio::time::interval(ctx.config.worker.ack_wait / 3);
    keepalive.tick().await;
    let finished = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = keepalive.tick() => { let _ = msg.ack_with(AckKind::Progress).await; }
            _ = ctx.hard_stop.cancelled() => {
                tracing::warn!("drain deadline passed; handing the job back");
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                return;
            }
            _ = cancel.cancelled() => {
                // The api already marked the row cancelled; the call in flight is dropped
                // (its attempt stays on record as started).
                drop(work);
                Box::pin(stop_cancelled(ctx, msg, id)).await;
                return;
            }
        }
    };
    drop(work);
    match finished {
        Ok(f) => Box::pin(conclude(ctx, msg, f, reply_subject, webhook_url)).await,
        Err(Halt::Defer(deferred)) => Box::pin(defer(ctx, &msg, id, deferred)).await,
        Err(Halt::Ended(attempts)) => Box::pin(skip_ended(ctx, msg, id, attempts)).await,
    }
}

/// The job was cancelled while it ran here: subscribers get the end, the message goes.
async fn stop_cancelled(ctx: &Ctx, msg: jetstream::Message, id: Uuid) {
    tracing::info!("job cancelled while running");
    let done = DoneEvent {
        job_id: id,
        status: JobStatus::Cancelled,
        result: None,
        usage: None,
        cost: None,
        attempts: 0,
        error: Some(JobError {
            class: ErrorClass::Internal,
            message: "cancelled".into(),
        }),
    };
    let mut publisher = EventPublisher::new(ctx.js.clone(), ctx.subjects.events(id), id);
    if let Err(e) = publisher.terminal(0, &done).await {
        tracing::warn!(error = %e, "cancel event not stored");
    }
    let _ = msg.ack().await;
}

/// The api ended the job before this delivery could start its next attempt: record the
/// attempts it made, give subscribers the end as the row has it, and drop the message.
async fn skip_ended(ctx: &Ctx, msg: jetstream::Message, id: Uuid, attempts: Vec<AttemptRecord>) {
    tracing::info!("job ended by the api before this attempt; not calling it");
    if !attempts.is_empty() {
        if let Err(e) = ctx.ledger.write(LedgerEntry::Attempts(attempts)).await {
            tracing::error!(error = %e, "attempts not recorded; the job will be redelivered");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    }
    republish_terminal(ctx, id).await;
    let _ = msg.ack().await;
}

/// Records the result, then publishes it, then acks; starts the webhook delivery.
async fn conclude(
    ctx: &Ctx,
    msg: jetstream::Message,
    finished: Finished,
    reply_subject: Option<String>,
    webhook_url: Option<String>,
) {
    let Finished {
        outcome,
        attempts,
        done,
        mut publisher,
        last_attempt,
    } = finished;
    let id = outcome.id;
    let webhook_secret = webhook_url
        .as_ref()
        .and(ctx.config.webhook_secret.as_ref())
        .map(|server| sluice_core::keys::webhook_secret(server, &outcome.owner));
    // Record, then publish, then ack.
    if let Err(e) = ctx
        .ledger
        .write(LedgerEntry::Finished {
            job: outcome,
            attempts,
        })
        .await
    {
        tracing::error!(error = %e, "result not recorded; the job will be redelivered");
        let _ = msg
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return;
    }
    let body = match publisher.terminal(last_attempt, &done).await {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(error = %e, "terminal event not stored; redelivery will republish it");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    };
    let reply_subject = crate::destinations::reply_subject(
        reply_subject.as_deref(),
        &ctx.config.subject_prefix,
        &ctx.config.safety,
    );
    if let Some(subject) = reply_subject {
        if let Err(e) = publisher.reply(subject, &body, &done).await {
            tracing::warn!(error = %e, "reply subject publish failed");
        }
    }
    if let Err(e) = msg.ack().await {
        tracing::warn!(error = %e, "ack failed; a redelivery will find the job finished");
    }
    if let Some(url) = webhook_url {
        let (safety, secret, ledger) = (
            ctx.config.safety.clone(),
            webhook_secret,
            ctx.ledger.clone(),
        );
        let span = tracing::Span::current();
        ctx.webhooks.spawn(
            async move {
                let outcome =
                    crate::webhook::deliver(&safety, &url, body, secret.as_ref(), &id.to_string())
                        .await;
                let status = if outcome.delivered {
                    "delivered"
                } else {
                    "failed"
                };
                let _ = ledger
                    .send(LedgerEntry::Webhook(WebhookOutcome {
                        id,
                        status: status.to_string(),
                        attempts: outcome.attempts as i32,
                    }))
                    .await;
            }
            .instrument(span),
        );
    }
    tracing::debug!(status = %done.status, "job finished");
}

/// Hands a job back to the queue until a limit frees up (bounded, with jitter); records
/// the attempts made and marks the job `queued` with `not_before`. No attempt is counted
/// for the deferral itself.
async fn defer(ctx: &Ctx, msg: &jetstream::Message, id: Uuid, d: Deferred) {
    let base = d
        .after
        .unwrap_or(Duration::from_secs(1))
        .min(ctx.config.limits.max_defer);
    let jitter = base.mul_f64(rand::random::<f64>() * 0.1)
        + Duration::from_millis(rand::random::<u64>() % 50);
    let delay = base + jitter;
    tracing::info!(reason = %d.reason, delay_ms = delay.as_millis() as u64, "job deferred");
    crate::metrics::deferral(d.cause);
    if !d.attempts.is_empty() {
        if let Err(e) = ctx.ledger.write(LedgerEntry::Attempts(d.attempts)).await {
            tracing::warn!(error = %e, "attempts of a deferred job not recorded");
        }
    }
    let not_before = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
    let _ = ctx
        .ledger
        .send(LedgerEntry::Deferred(JobDeferred { id, not_before }))
        .await;
    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
}

struct Finished {
    outcome: JobOutcome,
    attempts: Vec<AttemptRecord>,
    done: DoneEvent,
    publisher: EventPublisher,
    last_attempt: u32,
}

/// Why a job stopped without a result of its own.
enum Halt {
    /// It cannot go on now: back to the queue.
    Defer(Deferred),
    /// The api ended it (cancel, batch expiry) before this worker could start its next
    /// attempt; holds the attempts this delivery made before that.
    Ended(Vec<AttemptRecord>),
}

/// The job cannot go on now (a limit is full, or Redis or Postgres is unreachable):
/// hand it back to the queue, with the attempts this delivery made.
struct Deferred {
    /// When a limit frees up, if known.
    after: Option<Duration>,
    /// Bounded label for the deferral metric.
    cause: &'static str,
    reason: String,
    attempts: Vec<AttemptRecord>,
}

impl Deferred {
    fn now(cause: &'static str, reason: String) -> Self {
        Deferred {
            after: None,
            cause,
            reason,
            attempts: Vec::new(),
        }
    }
}

async fn run(
    ctx: &Ctx,
    envelope: JobEnvelope,
    tier: Tier,
    delivery: i32,
    first_attempt: i32,
) -> Result<Finished, Halt> {
    let JobEnvelope {
        id,
        request,
        owner,
        reply_subject,
        submitted_at_ms,
        fallbacks,
        disable_fallbacks,
        ..
    } = envelope;
    let owner = owner.unwrap_or_else(|| "master".to_string());
    let group = request.model.clone();
    let created_at = DateTime::<Utc>::from_timestamp_millis(submitted_at_ms)
        .filter(|_| submitted_at_ms > 0)
        .unwrap_or_else(Utc::now);
    let mut publisher = EventPublisher::new(ctx.js.clone(), ctx.subjects.events(id), id);
    let base = JobOutcome {
        id,
        owner: owner.clone(),
        model_group: group.clone(),
        tier: tier.as_str().to_string(),
        reply_subject: reply_subject.clone(),
        created_at,
        status: JobStatus::Failed.as_str().to_string(),
        result: None,
        usage: None,
        cost: None,
        pricing_missing: false,
        attempts: first_attempt - 1,
        error_class: None,
        error_message: None,
        finished_at: Utc::now(),
    };

    let invalid = if !ctx.router.has_group(ctx.config.resolve_group(&group)) {
        Some(format!("unknown model group {group:?}"))
    } else if request.messages.is_empty() {
        Some("`messages` must not be empty".to_string())
    } else {
        None
    };
    if let Some(message) = invalid {
        let error = JobError {
            class: ErrorClass::BadRequest,
            message,
        };
        return Ok(failed(
            base,
            Vec::new(),
            error,
            publisher,
            first_attempt - 1,
        ));
    }

    let stream = request.stream.unwrap_or(false);
    let mut request = request;
    let key_scopes = match Box::pin(ctx.key_limits.scopes(&owner)).await {
        Ok(s) => s,
        Err(e) => {
            return Err(Halt::Defer(Deferred::now(
                "postgres_unavailable",
                format!("cannot read the key's limits: {e}"),
            )))
        }
    };
    let output_cap = u64::from(
        request
            .output_cap()
            .unwrap_or(ctx.config.limits.default_max_tokens),
    );
    let mut prompt_estimates: Vec<(tokens::Tokenizer, u64)> = Vec::with_capacity(2);
    let mut route = Route::new(ctx, &group, fallbacks, disable_fallbacks);
    let mut records: Vec<AttemptRecord> = Vec::new();
    let mut attempt = first_attempt;
    let mut last_error = JobError {
        class: ErrorClass::Internal,
        message: "no deployment available".into(),
    };
    // Bounded: every hop resets the retry count, and hops are bounded by max_fallbacks.
    loop {
        // Route, then admit: the first candidate (by order and strategy) that is not
        // cooling down and whose limits allow the call.
        let candidates = ctx.router.candidates(route.group(), &route.tried);
        if candidates.is_empty() {
            break;
        }
        let mut admit: Vec<Candidate> = Vec::with_capacity(candidates.len());
        for d in &candidates {
            let tokenizer = tokens::Tokenizer::for_deployment(d);
            let prompt_tokens = match prompt_estimates.iter().find(|(t, _)| *t == tokenizer) {
                Some((_, n)) => *n,
                None => {
                    let n = tokens::prompt_with(tokenizer, &request);
                    prompt_estimates.push((tokenizer, n));
                    n
                }
            };
            let mut scopes = limits::deployment_scopes(d, &ctx.config.limits.provider_budgets);
            scopes.extend(key_scopes.iter().cloned());
            admit.push(Candidate {
                deployment: d.id.clone(),
                order: d.order,
                cooldowns: !ctx.config.router.disable_cooldowns,
                scopes,
                estimate: limits::estimate(ctx.prices.get(&d.id), prompt_tokens, output_cap),
            });
        }
        let lease = candidates
            .iter()
            .map(|d| d.timeout)
            .max()
            .unwrap_or_default()
            + LEASE_MARGIN;
        let (d, reservation) = match Box::pin(ctx.limiter.admit(Some(id), &admit, lease)).await {
            Admission::Admitted { index, reservation } => (
                Arc::clone(&candidates[index]),
                ctx.limiter.hold(reservation),
            ),
            Admission::Wait {
                after,
                limit,
                cooling,
            } => {
                // Every deployment of this group cools down: another group may serve.
                if cooling && route.hop(None) {
                    crate::metrics::fallback("cooldown");
                    continue;
                }
                return Err(Halt::Defer(Deferred {
                    after: Some(after),
                    cause: if cooling { "cooldown" } else { "limit" },
                    reason: format!("waiting for {limit}"),
                    attempts: records,
                }));
            }
            Admission::Unavailable(e) => {
                return Err(Halt::Defer(Deferred {
                    after: None,
                    cause: "redis_unavailable",
                    reason: format!("flow control unavailable: {e}"),
                    attempts: records,
                }))
            }
            Admission::Cancelled => {
                return Ok(failed_as(
                    JobStatus::Cancelled,
                    base,
                    records,
                    JobError {
                        class: ErrorClass::Internal,
                        message: "cancelled".into(),
                    },
                    publisher,
                    attempt - 1,
                ));
            }
            Admission::TooLarge { limit } => {
                last_error = JobError {
                    class: ErrorClass::BadRequest,
                    message: format!(
                        "the request (about {} tokens with its output cap) can never fit the limit {limit}",
                        admit.first().map(|c| c.estimate.tokens).unwrap_or(0)
                    ),
                };
                break;
            }
        };
        // The attempt starts when the limits counted it.
        let started_at = reservation
            .admitted_at_ms()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        let started = AttemptStarted {
            job_id: id,
            owner: owner.clone(),
            model_group: group.clone(),
            tier: tier.as_str().to_string(),
            reply_subject: reply_subject.clone(),
            created_at,
            attempt,
            delivery,
            worker: ctx.worker_id.clone(),
            deployment: d.id.clone(),
            provider: d.provider.clone(),
            model: d.model.clone(),
            started_at,
        };
        // The attempt is on record before the call is made, so a crash cannot hide a call.
        // The same write claims the job: one the api ended meanwhile is not called.
        let claimed = Box::pin(ctx.ledger.write(LedgerEntry::Started(started))).await;
        if !matches!(claimed, Ok(true)) {
            let none = Actual {
                tokens: 0,
                cost: 0.0,
            };
            let healthy = Health {
                ok: true,
                ..Default::default()
            };
            Box::pin(reservation.settle(none, healthy)).await;
            return Err(match claimed {
                Err(e) => Halt::Defer(Deferred {
                    after: None,
                    cause: "ledger_unavailable",
                    reason: e.to_string(),
                    attempts: records,
                }),
                Ok(_) => Halt::Ended(records),
            });
        }
        let mut sink = EventSink {
            publisher: &mut publisher,
            attempt: attempt as u32,
        };
        let result = ctx
            .providers
            .call(&d, &mut request, stream, &mut sink)
            .await;
        let record = attempt_record(
            ctx, &d, id, attempt, delivery, started_at, &request, &result,
        );
        let used = Actual {
            tokens: (record.prompt_tokens.unwrap_or(0) + record.completion_tokens.unwrap_or(0))
                .max(0) as u64,
            cost: record.cost.and_then(|c| c.to_f64()).unwrap_or(0.0),
        };
        let health = health(ctx, &d, &result, started_at);
        if let (false, Err(e)) = (health.cool_now.is_zero(), &result) {
            crate::metrics::cooldown(&d.id, e.class.as_str());
        }
        Box::pin(reservation.settle(used, health)).await;
        let e = match result {
            Ok(out) => {
                let usage = record_usage(&record);
                let cost_missing = record.pricing_missing;
                let cost = record.cost;
                records.push(record);
                return Ok(succeeded(
                    base,
                    records,
                    out,
                    usage,
                    cost,
                    cost_missing,
                    publisher,
                    attempt,
                ));
            }
            Err(e) => e,
        };
        tracing::info!(attempt, deployment = %d.id, class = %e.class, error = %e.message, "attempt failed");
        records.push(record);
        last_error = JobError {
            class: e.class,
            message: e.message.clone(),
        };
        route.tried.push(Arc::clone(&d));
        let group_size = ctx.router.size(route.group());
        let next = match e.class {
            // The request itself is wrong: no other deployment or group can help.
            ErrorClass::BadRequest | ErrorClass::NotFound | ErrorClass::Internal => Next::Stop,
            ErrorClass::Auth if group_size <= 1 => Next::Stop,
            // A bigger context or a different policy lives in another group.
            ErrorClass::ContextWindow | ErrorClass::ContentPolicy => Next::Hop,
            class
                if route.retries < ctx.config.router.retries_for(class, ctx.config.num_retries) =>
            {
                Next::Retry
            }
            _ => Next::Hop,
        };
        let go_on = match next {
            Next::Stop => false,
            Next::Retry => {
                route.retries += 1;
                true
            }
            Next::Hop => {
                let hopped = route.hop(Some(e.class));
                if hopped {
                    crate::metrics::fallback(e.class.as_str());
                }
                hopped
            }
        };
        if !go_on {
            break;
        }
        crate::metrics::retry(e.class.as_str());
        Box::pin(publisher.retry(&RetryEvent {
            attempt: attempt as u32,
            deployment: d.id.clone(),
            error: last_error.clone(),
        }))
        .await;
        if next == Next::Retry {
            let other_left = route.tried.len() < ctx.router.size(route.group());
            let wait = retry::delay(route.retries - 1, e.retry_after, other_left)
                .max(ctx.config.router.retry_after);
            tokio::time::sleep(wait).await;
        }
        attempt += 1;
    }
    Ok(failed(base, records, last_error, publisher, attempt))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Stop,
    Retry,
    Hop,
}

/// Where a job is in its model group and fallback chain.
struct Route<'a> {
    ctx: &'a Ctx,
    /// Groups used so far, the requested one first (no group is used twice).
    visited: Vec<String>,
    /// The job's own fallbacks (`fallbacks` in the request), if any.
    own: Option<Vec<String>>,
    disabled: bool,
    /// Deployments of the current group tried so far.
    tried: Vec<Arc<Deployment>>,
    /// Retries in the current group.
    retries: u32,
}

impl<'a> Route<'a> {
    fn new(ctx: &'a Ctx, group: &str, own: Option<Vec<String>>, disabled: bool) -> Self {
        Route {
            ctx,
            visited: vec![ctx.config.resolve_group(group).to_string()],
            own,
            disabled,
            tried: Vec::new(),
            retries: 0,
        }
    }

    fn group(&self) -> &str {
        self.visited.last().map(String::as_str).unwrap_or_default()
    }

    /// Moves to the next fallback group for a failure of `class` (None: the group is
    /// unavailable). Returns false when there is none left (or fallbacks are off).
    fn hop(&mut self, class: Option<ErrorClass>) -> bool {
        let r = &self.ctx.config.router;
        if self.disabled || self.visited.len() as u32 > r.max_fallbacks {
            return false;
        }
        let origin = self.visited[0].clone();
        let current = self.group().to_string();
        let specific = match class {
            Some(ErrorClass::ContextWindow) => Some(&r.context_window_fallbacks),
            Some(ErrorClass::ContentPolicy) => Some(&r.content_policy_fallbacks),
            _ => None,
        };
        let mut lists: Vec<&[String]> = Vec::new();
        if let Some(map) = specific {
            for g in [&origin, &current] {
                if let Some(l) = map.get(g) {
                    lists.push(l);
                }
            }
        }
        if let Some(own) = &self.own {
            lists.push(own);
        }
        for g in [&origin, &current] {
            if let Some(l) = r.fallbacks.get(g) {
                lists.push(l);
            }
        }
        if let Some(l) = r.fallbacks.get("*") {
            lists.push(l);
        }
        lists.push(&r.default_fallbacks);
        let next = lists
            .iter()
            .flat_map(|l| l.iter())
            .map(|g| self.ctx.config.resolve_group(g).to_string())
            .find(|g| !self.visited.contains(g) && self.ctx.router.has_group(g));
        match next {
            Some(g) => {
                tracing::info!(from = %current, to = %g, "falling back");
                self.visited.push(g);
                self.tried.clear();
                self.retries = 0;
                true
            }
            None => false,
        }
    }
}

/// What a call's outcome says about its deployment (DESIGN §5 cooldown rules).
fn health(
    ctx: &Ctx,
    d: &Deployment,
    result: &Result<CallOutput, ProviderError>,
    started_at: DateTime<Utc>,
) -> Health {
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
            h.latency = (Utc::now() - started_at).to_std().unwrap_or_default();
            if r.disable_cooldowns {
                return h;
            }
            match e.class {
                // 429 / overloaded: cool down at once, for the deployment's cooldown_time,
                // else the provider's Retry-After, else the router's.
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

#[allow(clippy::too_many_arguments)]
fn attempt_record(
    ctx: &Ctx,
    d: &Deployment,
    job_id: Uuid,
    attempt: i32,
    delivery: i32,
    started_at: DateTime<Utc>,
    request: &sluice_schemas::openai::ChatRequest,
    result: &Result<CallOutput, ProviderError>,
) -> AttemptRecord {
    let mut r = AttemptRecord {
        job_id,
        attempt,
        delivery,
        worker: ctx.worker_id.clone(),
        deployment: d.id.clone(),
        provider: d.provider.clone(),
        model: d.model.clone(),
        status: "failed".into(),
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
        started_at,
        finished_at: Utc::now(),
        dropped_params: None,
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let dropped = match result {
        Ok(out) => &out.dropped_params,
        Err(e) => &e.dropped_params,
    };
    r.dropped_params = (!dropped.is_empty()).then(|| dropped.clone());
    match result {
        Ok(out) => {
            let (usage, estimated) = match out.usage {
                Some(u) => (u, false),
                None => (
                    ledger::estimate_usage(request, &completion_text(&out.completion)),
                    true,
                ),
            };
            r.status = "succeeded".into();
            r.prompt_tokens = Some(usage.prompt_tokens as i64);
            r.completion_tokens = Some(usage.completion_tokens as i64);
            r.cached_tokens = Some(usage.cached_tokens() as i64);
            r.cache_creation_tokens = Some(usage.cache_creation_tokens() as i64);
            r.reasoning_tokens = Some(usage.reasoning_tokens() as i64);
            r.usage_estimated = estimated;
            r.cost = ctx.prices.cost(&d.id, &usage);
            r.pricing_missing = r.cost.is_none();
            r.ttft_ms = out.ttft.map(ms);
            r.latency_ms = Some(ms(out.latency));
        }
        Err(e) => {
            r.error_class = Some(e.class.as_str().to_string());
            r.error_message = Some(e.message.clone());
            r.latency_ms =
                Some((r.finished_at - started_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    r
}

fn record_usage(r: &AttemptRecord) -> Usage {
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

/// The job's cost: the sum over attempts that have a price.
fn total_cost(records: &[AttemptRecord]) -> Option<Decimal> {
    records.iter().filter_map(|r| r.cost).reduce(|a, b| a + b)
}

#[allow(clippy::too_many_arguments)]
fn succeeded(
    mut base: JobOutcome,
    records: Vec<AttemptRecord>,
    out: CallOutput,
    usage: Usage,
    cost: Option<Decimal>,
    pricing_missing: bool,
    publisher: EventPublisher,
    attempt: i32,
) -> Finished {
    let mut completion = out.completion;
    // Report the usage we billed (estimated when the provider sent none).
    completion.usage = Some(out.usage.unwrap_or(usage));
    let job_cost = if pricing_missing {
        None
    } else {
        total_cost(&records).or(cost)
    };
    base.status = JobStatus::Succeeded.as_str().to_string();
    base.result = serde_json::to_value(&completion).ok();
    base.usage = serde_json::to_value(completion.usage).ok();
    base.cost = job_cost;
    base.pricing_missing = pricing_missing;
    base.attempts = attempt;
    base.finished_at = Utc::now();
    let done = DoneEvent {
        job_id: base.id,
        status: JobStatus::Succeeded,
        usage: completion.usage,
        result: Some(completion),
        cost: job_cost,
        attempts: attempt as u32,
        error: None,
    };
    Finished {
        outcome: base,
        attempts: records,
        done,
        publisher,
        last_attempt: attempt as u32,
    }
}

fn failed(
    base: JobOutcome,
    records: Vec<AttemptRecord>,
    error: JobError,
    publisher: EventPublisher,
    attempt: i32,
) -> Finished {
    failed_as(JobStatus::Failed, base, records, error, publisher, attempt)
}

/// A job that ends without a result: failed, or cancelled.
fn failed_as(
    status: JobStatus,
    mut base: JobOutcome,
    records: Vec<AttemptRecord>,
    error: JobError,
    publisher: EventPublisher,
    attempt: i32,
) -> Finished {
    base.status = status.as_str().to_string();
    base.cost = total_cost(&records);
    base.attempts = attempt;
    base.error_class = Some(error.class.as_str().to_string());
    base.error_message = Some(error.message.clone());
    base.finished_at = Utc::now();
    let done = DoneEvent {
        job_id: base.id,
        status,
        result: None,
        usage: None,
        cost: base.cost,
        attempts: attempt.max(0) as u32,
        error: Some(error),
    };
    Finished {
        outcome: base,
        attempts: records,
        done,
        publisher,
        last_attempt: attempt.max(0) as u32,
    }
}

async fn republish_terminal(ctx: &Ctx, id: Uuid) {
    let row = match ctx.store.job(id).await {
        Ok(Some(row)) => row,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read finished job");
            return;
        }
    };
    let done = row.done_event();
    let mut publisher = EventPublisher::new(ctx.js.clone(), ctx.subjects.events(id), id);
    if let Err(e) = publisher.terminal(row.attempts.max(0) as u32, &done).await {
        tracing::warn!(error = %e, "cannot republish terminal event");
    }
}

/// Parks a message that can never be processed on the dead-letter subject, then
/// terminates it (in that order: on 2.9 `Term` deletes it from the work queue).
async fn dead_letter(ctx: &Ctx, msg: &jetstream::Message, reason: &str) {
    tracing::error!(subject = %msg.subject, %reason, "dead-lettering message");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_DLQ_REASON, reason);
    headers.insert("Sluice-Dlq-Subject", msg.subject.as_str());
    let published = async {
        ctx.js
            .publish_with_headers(ctx.subjects.dlq(), headers, Bytes::clone(&msg.payload))
            .await?
            .await?;
        Ok::<(), async_nats::Error>(())
    }
    .await;
    match published {
        Ok(()) => {
            let _ = msg.ack_with(AckKind::Term).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "dead-letter publish failed; retrying later");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}
