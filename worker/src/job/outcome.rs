//! How a run ends: the result recorded, then published, then acked ([`conclude`]; the
//! last call's settlement runs meanwhile and is done before the ack); a job
//! handed back to the queue ([`defer`]); a job the api ended or cancelled; a message that
//! can never be processed ([`dead_letter`]).

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sluice_core::store::{AttemptRecord, JobDeferred, JobOutcome, LedgerEntry, NewDelivery};
use sluice_schemas::events::HEADER_DLQ_REASON;
use sluice_schemas::job::{JobError, JobResult};
use sluice_schemas::openai::Usage;
use sluice_schemas::{DoneEvent, EncodedDone, ErrorClass, JobEnvelope, JobStatus, Tier};
use tracing::Instrument as _;
use uuid::Uuid;

use super::attempt::record_usage;
use crate::events::EventPublisher;
use crate::providers::CallOutput;
use crate::Ctx;

/// A run that produced the job's end: its outcome, attempts and terminal event.
pub(super) struct Finished {
    pub(super) outcome: JobOutcome,
    pub(super) attempts: Vec<AttemptRecord>,
    /// The terminal event without its result: that is the outcome's, already JSON, and
    /// goes into the event as it is (see [`conclude`]).
    pub(super) done: DoneEvent,
    pub(super) publisher: EventPublisher,
    pub(super) last_attempt: u32,
    /// The last call's reservation being settled meanwhile (see `pipeline.rs`, `record`):
    /// awaited before the ack.
    pub(super) settling: Option<tokio::task::JoinHandle<()>>,
}

/// Why a job stopped without a result of its own.
pub(super) enum Halt {
    /// It cannot go on now: back to the queue.
    Defer(Deferred),
    /// The api ended it (cancel, batch expiry) before this worker could start its next
    /// attempt; holds the attempts this delivery made before that.
    Ended(Vec<AttemptRecord>),
}

/// The job cannot go on now (a limit is full, or Redis or Postgres is unreachable):
/// hand it back to the queue, with the attempts this delivery made.
pub(super) struct Deferred {
    /// When a limit frees up, if known.
    pub(super) after: Option<Duration>,
    /// Bounded label for the deferral metric.
    pub(super) cause: &'static str,
    pub(super) reason: String,
    pub(super) attempts: Vec<AttemptRecord>,
    /// The job's call count as this delivery last knew it: a deferral never resets a row
    /// another delivery started a call on since.
    pub(super) calls_seen: u32,
}

impl Deferred {
    pub(super) fn now(cause: &'static str, reason: String) -> Self {
        Deferred {
            after: None,
            cause,
            reason,
            attempts: Vec::new(),
            calls_seen: 0,
        }
    }
}

/// When the job was submitted (now, if the envelope does not say).
pub(super) fn submitted_at(envelope: &JobEnvelope) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(envelope.submitted_at_ms)
        .filter(|_| envelope.submitted_at_ms > 0)
        .unwrap_or_else(Utc::now)
}

/// The job's row as it stands before its outcome is known, after `calls` calls.
pub(super) fn outcome_base(envelope: &JobEnvelope, tier: Tier, calls: u32) -> JobOutcome {
    JobOutcome {
        id: envelope.id,
        owner: envelope
            .owner
            .clone()
            .unwrap_or_else(|| sluice_schemas::MASTER_OWNER.to_string()),
        model_group: envelope.request.model.clone(),
        tier,
        reply_subject: envelope.reply_subject.clone(),
        created_at: submitted_at(envelope),
        status: JobStatus::Failed,
        result: None,
        usage: None,
        cost: None,
        pricing_missing: false,
        attempts: calls,
        error_class: None,
        error_message: None,
        finished_at: Utc::now(),
        cache_hit: false,
        cost_saved: None,
    }
}

/// Ends the job of `envelope` `failed` with `error` after `calls` calls, the way every
/// job ends ([`conclude`]): recorded with the deliveries of its end, published, acked.
/// For a delivery that could not run the pipeline (`worker/src/panics.rs`).
pub(crate) async fn end_failed(
    ctx: &Ctx,
    msg: jetstream::Message,
    envelope: &JobEnvelope,
    tier: Tier,
    calls: u32,
    error: JobError,
) {
    let base = outcome_base(envelope, tier, calls);
    let publisher = EventPublisher::new(ctx.js.clone(), ctx.subjects.events(base.id), base.id);
    let finished =
        Finished::without_result(JobStatus::Failed, base, Vec::new(), error, publisher, calls);
    let (reply_subject, webhook_url) =
        (envelope.reply_subject.clone(), envelope.webhook_url.clone());
    conclude(ctx, msg, finished, reply_subject, webhook_url).await;
}

/// What a job that ends early is ended with.
pub(super) struct Ends {
    /// The job's row before any outcome.
    pub(super) base: JobOutcome,
    pub(super) reply_subject: Option<String>,
    pub(super) webhook_url: Option<String>,
}

/// Ends a job without (more) calls: it exhausted its deliveries or its wait. Records it
/// `failed` with `error` (and the attempts this delivery made), publishes the end, acks;
/// with `dead_letter`, a copy of the message goes to the dead-letter stream first.
pub(super) async fn end_early(
    ctx: &Ctx,
    msg: jetstream::Message,
    ends: Ends,
    attempts: Vec<AttemptRecord>,
    error: JobError,
    dead_letter: bool,
) {
    let Ends {
        base,
        reply_subject,
        webhook_url,
    } = ends;
    tracing::warn!(class = %error.class, error = %error.message, "job ends without a result");
    if dead_letter {
        if let Err(e) = park(ctx, &msg, &error.message).await {
            tracing::warn!(error = %e, "dead-letter publish failed; retrying later");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
            return;
        }
    }
    let calls = base.attempts;
    let publisher = EventPublisher::new(ctx.js.clone(), ctx.subjects.events(base.id), base.id);
    let finished =
        Finished::without_result(JobStatus::Failed, base, attempts, error, publisher, calls);
    conclude(ctx, msg, finished, reply_subject, webhook_url).await;
}

impl Finished {
    /// The job succeeded with `out`, the call of the last of `records`.
    pub(super) fn succeeded(
        mut base: JobOutcome,
        records: Vec<AttemptRecord>,
        out: CallOutput,
        publisher: EventPublisher,
        attempt: u32,
    ) -> Finished {
        let last = records.last();
        let usage = last.map(record_usage).unwrap_or_default();
        let cost = last.and_then(|r| r.cost);
        let pricing_missing = last.is_some_and(|r| r.pricing_missing);
        let (result, usage) = match out.result {
            JobResult::Chat(mut completion) => {
                // Report the usage we billed (estimated when the provider sent none).
                completion.usage = Some(out.usage.unwrap_or(usage));
                let usage = completion.usage;
                (JobResult::Chat(completion), usage)
            }
            JobResult::Embeddings(e) => {
                let usage = Some(Usage::new(e.usage.prompt_tokens, 0));
                (JobResult::Embeddings(e), usage)
            }
        };
        let job_cost = if pricing_missing {
            None
        } else {
            total_cost(&records).or(cost)
        };
        base.status = JobStatus::Succeeded;
        base.result = serde_json::value::to_raw_value(&result).ok();
        base.usage = serde_json::to_value(usage).ok();
        base.cost = job_cost;
        base.pricing_missing = pricing_missing;
        base.attempts = attempt;
        base.finished_at = Utc::now();
        let done = DoneEvent {
            job_id: base.id,
            status: JobStatus::Succeeded,
            usage,
            result: None,
            cost: job_cost,
            attempts: attempt,
            error: None,
        };
        Finished {
            outcome: base,
            attempts: records,
            done,
            publisher,
            last_attempt: attempt,
            settling: None,
        }
    }

    /// The job ends without a result: `failed`, or `cancelled`.
    pub(super) fn without_result(
        status: JobStatus,
        mut base: JobOutcome,
        records: Vec<AttemptRecord>,
        error: JobError,
        publisher: EventPublisher,
        attempt: u32,
    ) -> Finished {
        base.status = status;
        base.cost = total_cost(&records);
        base.attempts = attempt;
        base.error_class = Some(error.class);
        base.error_message = Some(error.message.clone());
        base.finished_at = Utc::now();
        let done = DoneEvent {
            job_id: base.id,
            status,
            result: None,
            usage: None,
            cost: base.cost,
            attempts: attempt,
            error: Some(error),
        };
        Finished {
            outcome: base,
            attempts: records,
            done,
            publisher,
            last_attempt: attempt,
            settling: None,
        }
    }
}

/// The job's cost: the sum over attempts that have a price.
fn total_cost(records: &[AttemptRecord]) -> Option<Decimal> {
    records.iter().filter_map(|r| r.cost).reduce(|a, b| a + b)
}

/// The job was cancelled while it ran here: subscribers get the end, the message goes.
pub(super) async fn stop_cancelled(ctx: &Ctx, msg: jetstream::Message, id: Uuid) {
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
pub(super) async fn skip_ended(
    ctx: &Ctx,
    msg: jetstream::Message,
    id: Uuid,
    attempts: Vec<AttemptRecord>,
) {
    tracing::info!("job ended by the api before this attempt; not calling it");
    if !attempts.is_empty() {
        if let Err(e) = ctx.ledger.write(LedgerEntry::Attempts(attempts)).await {
            tracing::error!(error = %e, "attempts not recorded; the job will be redelivered");
            nak_soon(&msg).await;
            return;
        }
    }
    republish_terminal(ctx, id).await;
    let _ = msg.ack().await;
}

/// Records the result (with the deliveries of its end), then publishes it, then acks;
/// then rings the deliveries (`worker/src/deliveries.rs`).
pub(super) async fn conclude(
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
        settling,
    } = finished;
    // The event is encoded once, around the result's JSON the row holds, for the event
    // and the deliveries alike.
    let body = match serde_json::to_vec(&EncodedDone::new(&done, outcome.result.as_deref())) {
        Ok(body) => Bytes::from(body),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the job's end; the job will be redelivered");
            nak_soon(&msg).await;
            return;
        }
    };
    let deliveries = deliveries_of(ctx, done.job_id, &body, reply_subject, webhook_url);
    let deliver = !deliveries.is_empty();
    // Record, then publish, then ack.
    crate::trace::finished(&outcome, &attempts);
    let entry = LedgerEntry::Finished {
        job: outcome,
        attempts,
        deliveries,
    };
    if let Err(e) = ctx
        .ledger
        .write(entry)
        .instrument(crate::trace::record())
        .await
    {
        tracing::error!(error = %e, "result not recorded; the job will be redelivered");
        nak_soon(&msg).await;
        return;
    }
    ctx.tally.finished();
    let terminal = publisher.encoded_terminal(last_attempt, &EncodedDone::new(&done, None), body);
    let stored = match terminal {
        Ok(m) => publisher.store(m).instrument(crate::trace::publish()).await,
        Err(e) => Err(e),
    };
    if let Err(e) = stored {
        tracing::warn!(error = %e, "terminal event not stored; redelivery will republish it");
        nak_soon(&msg).await;
        return;
    }
    if let Some(settling) = settling {
        // Settled before the ack, as before: the limits hold the call's real usage by the
        // time the message goes.
        let _ = settling.await;
    }
    if let Err(e) = msg.ack().await {
        tracing::warn!(error = %e, "ack failed; a redelivery will find the job finished");
    }
    if deliver {
        ctx.deliveries.notify_one();
    }
    tracing::debug!(status = %done.status, "job finished");
}

/// The deliveries of the end of job `job_id`, its terminal event `body`: to its reply
/// subject (one that points inward is dropped here: a trusted service may have published
/// the envelope straight to NATS, past the api's check) and its webhook.
fn deliveries_of(
    ctx: &Ctx,
    job_id: Uuid,
    body: &[u8],
    reply_subject: Option<String>,
    webhook_url: Option<String>,
) -> Vec<NewDelivery> {
    let reply_subject = crate::destinations::reply_subject(
        reply_subject.as_deref(),
        &ctx.config.subject_prefix,
        &ctx.config.safety,
    );
    if reply_subject.is_none() && webhook_url.is_none() {
        return Vec::new();
    }
    crate::deliveries::for_job(job_id, reply_subject, webhook_url.as_deref(), body)
}

/// Hands the message back for a redelivery in a second (the job's end was not stored).
async fn nak_soon(msg: &jetstream::Message) {
    let _ = msg
        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
        .await;
}

/// Hands a job back to the queue until a limit frees up (bounded, with jitter); records
/// the attempts made and marks the job `queued` with `not_before`. No attempt is counted
/// for the deferral itself.
pub(super) async fn defer(ctx: &Ctx, msg: &jetstream::Message, id: Uuid, d: Deferred) {
    let base = d
        .after
        .unwrap_or(Duration::from_secs(1))
        .min(ctx.config.limits.max_defer);
    let jitter = base.mul_f64(rand::random::<f64>() * 0.1)
        + Duration::from_millis(rand::random::<u64>() % 50);
    let delay = base + jitter;
    tracing::info!(reason = %d.reason, delay_ms = delay.as_millis() as u64, "job deferred");
    crate::metrics::deferral(d.cause);
    ctx.tally.deferred(d.cause);
    if !d.attempts.is_empty() {
        if let Err(e) = ctx.ledger.write(LedgerEntry::Attempts(d.attempts)).await {
            tracing::warn!(error = %e, "attempts of a deferred job not recorded");
        }
    }
    let not_before = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
    let _ = ctx
        .ledger
        .send(LedgerEntry::Deferred(JobDeferred {
            id,
            not_before,
            calls_seen: d.calls_seen,
        }))
        .await;
    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
}

/// Publishes the terminal event of a job that already ended, as its row has it.
pub(super) async fn republish_terminal(ctx: &Ctx, id: Uuid) {
    let row = match ctx.store.job(id).await {
        Ok(Some(row)) => row,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read finished job");
            return;
        }
    };
    if let Err(e) = crate::events::publish_ended(&ctx.js, &ctx.subjects, &row, 1).await {
        tracing::warn!(error = %e, "cannot republish terminal event");
    }
}

/// Parks a message that can never be processed on the dead-letter subject, then
/// terminates it (in that order: on 2.9 `Term` deletes it from the work queue).
pub(super) async fn dead_letter(ctx: &Ctx, msg: &jetstream::Message, reason: &str) {
    tracing::error!(subject = %msg.subject, %reason, "dead-lettering message");
    match park(ctx, msg, reason).await {
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

/// Stores a copy of `msg` on the dead-letter subject with `reason`.
async fn park(ctx: &Ctx, msg: &jetstream::Message, reason: &str) -> Result<(), async_nats::Error> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_DLQ_REASON, reason);
    headers.insert("Sluice-Dlq-Subject", msg.subject.as_str());
    ctx.js
        .publish_with_headers(ctx.subjects.dlq(), headers, Bytes::clone(&msg.payload))
        .await?
        .await?;
    Ok(())
}
