//! One job through the pipeline. This file handles the delivered message: parse it,
//! claim the job on this worker, skip a redelivery of a finished job, run the job while
//! keeping the message alive, and end the message the way the run ended.
//!
//! - `pipeline.rs`: the run itself, as named steps around one attempt at a time:
//!   admit → start → call → record → decide;
//! - `attempt.rs`: one admitted call, and what its outcome writes down (attempt row,
//!   deployment health);
//! - `route.rs`: where the job is in its model group and fallback chain;
//! - `outcome.rs`: how a run ends (record → publish → ack, defer, dead letter).
//!
//! The ack comes last: a job is acknowledged only after its result and every attempt are
//! durable in Postgres and its terminal event is stored in JetStream.

mod attempt;
mod cached;
pub(crate) mod eligible;
mod embed;
mod outcome;

pub(crate) use outcome::end_failed;
pub(crate) mod pipeline;
mod route;

use std::sync::Arc;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use chrono::Utc;
use sluice_schemas::job::JobError;
use sluice_schemas::{ErrorClass, JobEnvelope, Tier};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::Ctx;
use outcome::{Deferred, Ends, Finished, Halt};

/// Handles one delivered message to the end (ack, nak or term).
pub(crate) async fn handle(ctx: Arc<Ctx>, msg: jetstream::Message, tier: Tier) {
    let delivery = msg.info().map(|i| i.delivered).unwrap_or(1).max(1);
    // Boxed, like every await here that is not the run: a job task's future is as large
    // as its largest await, and thousands of tasks hold theirs while their runs stream.
    let payload = match Box::pin(crate::bodies::envelope(&ctx, &msg)).await {
        crate::bodies::Resolved::Body(b) => b,
        crate::bodies::Resolved::Missing(reason) => {
            Box::pin(outcome::dead_letter(&ctx, &msg, &reason)).await;
            return;
        }
        crate::bodies::Resolved::Handled => return,
    };
    // Boxed: the envelope (the whole chat request) lives as long as the job, and the job
    // task should hold only a pointer to it.
    let envelope: Box<JobEnvelope> = match serde_json::from_slice(&payload) {
        Ok(e) => e,
        Err(e) => {
            let reason = format!("unparseable job envelope: {e}");
            Box::pin(outcome::dead_letter(&ctx, &msg, &reason)).await;
            return;
        }
    };
    // The parsed envelope is all the run needs: the bytes would otherwise stay alive for
    // the whole job (a body read by reference is a fresh copy of the prompt).
    drop(payload);
    let id = envelope.id;
    let Some(cancel) = ctx.claim(id) else {
        // Our own earlier delivery of this job is still running (ack wait expired under
        // load): let that one finish; this copy comes back later and is skipped then.
        let _ = Box::pin(msg.ack_with(AckKind::Nak(Some(ctx.config.worker.ack_wait)))).await;
        return;
    };
    if let Some(inputs) = &ctx.callback_inputs {
        inputs.note(&envelope);
    }
    let span = crate::trace::job(id, tier, delivery, msg.headers.as_ref());
    span.in_scope(|| crate::trace::queue_wait(&msg));
    let delivery = u32::try_from(delivery).unwrap_or(u32::MAX);
    handle_claimed(&ctx, msg, envelope, tier, delivery, cancel)
        .instrument(span)
        .await;
    ctx.release(id);
}

/// The provider calls the job made so far (0 on a first delivery; each call's number is
/// allocated by the job row when it starts). `None` when this delivery ended the message:
/// the job already finished (its result republished, the message acked), it was
/// delivered more often than `max_deliver` allows (ended `failed`, message in the DLQ),
/// or it was deferred.
async fn calls_so_far(
    ctx: &Ctx,
    msg: jetstream::Message,
    envelope: &JobEnvelope,
    tier: Tier,
    delivery: u32,
) -> Option<(jetstream::Message, u32)> {
    if delivery <= 1 {
        return Some((msg, 0));
    }
    let id = envelope.id;
    match ctx.store.job_progress(id).await {
        Ok(p) if p.terminal => {
            tracing::info!("redelivered job is already finished; republishing its result");
            outcome::republish_terminal(ctx, id).await;
            let _ = msg.ack().await;
            None
        }
        Ok(p) if p.cut_short >= ctx.config.worker.max_deliver => {
            // Deliveries that died mid-call: workers died or stalled on this job. Counted
            // from the ledger, not from JetStream's delivery count, which also counts the
            // job's own waits (whose records a Postgres outage may have lost). The job
            // ends here, and its message goes to the dead-letter stream.
            let error = JobError {
                class: ErrorClass::DeliveriesExhausted,
                message: format!(
                    "{} deliveries died mid-call (delivery {delivery}, {} waits for limits); sluice.worker.max_deliver is {}",
                    p.cut_short, p.deferrals, ctx.config.worker.max_deliver
                ),
            };
            let ends = Ends {
                base: outcome::outcome_base(envelope, tier, p.calls),
                reply_subject: envelope.reply_subject.clone(),
                webhook_url: envelope.webhook_url.clone(),
            };
            outcome::end_early(ctx, msg, ends, Vec::new(), error, true).await;
            None
        }
        Ok(p) => Some((msg, p.calls)),
        Err(e) => {
            let d = Deferred::now(
                "postgres_unavailable",
                format!("cannot read job progress: {e}"),
            );
            outcome::defer(ctx, &msg, id, d).await;
            None
        }
    }
}

async fn handle_claimed(
    ctx: &Ctx,
    msg: jetstream::Message,
    envelope: Box<JobEnvelope>,
    tier: Tier,
    delivery: u32,
    cancel: CancellationToken,
) {
    let id = envelope.id;
    let Some((mut msg, calls)) = Box::pin(calls_so_far(ctx, msg, &envelope, tier, delivery)).await
    else {
        return;
    };
    // From here on the message is only acknowledged (its payload is dead-lettered only by
    // `calls_so_far`, above). Its payload shares the NATS connection's 64 KB read buffer
    // with the messages delivered beside it, so a job that kept it would keep that whole
    // buffer alive while any one of them runs.
    msg.message.payload = Bytes::new();
    // The job's row before any outcome: to end it with, should its wait run out.
    let ends = Ends {
        base: outcome::outcome_base(&envelope, tier, calls),
        reply_subject: envelope.reply_subject.clone(),
        webhook_url: envelope.webhook_url.clone(),
    };

    // Run the job, keeping the message alive with in-progress acks. Thousands of jobs
    // wait here at once, and each should hold only the state of that wait: the run is
    // boxed, and so is every other await here that `clippy::large_futures` (threshold
    // in clippy.toml) finds too large to keep inline.
    let mut work = Box::pin(pipeline::run(ctx, envelope, tier, delivery, calls));
    let mut keepalive = tokio::time::interval(ctx.config.worker.ack_wait / 3);
    keepalive.tick().await;
    let finished = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = keepalive.tick() => { let _ = Box::pin(msg.ack_with(AckKind::Progress)).await; }
            // `cancel` is a child of `hard_stop` (`Ctx::claim`): one token to poll.
            _ = cancel.cancelled() => {
                if ctx.hard_stop.is_cancelled() {
                    tracing::warn!("drain deadline passed; handing the job back");
                    let _ = Box::pin(msg.ack_with(AckKind::Nak(None))).await;
                    return;
                }
                // The api already marked the row cancelled; the call in flight is dropped
                // (its attempt stays on record as started).
                drop(work);
                Box::pin(outcome::stop_cancelled(ctx, msg, id)).await;
                return;
            }
        }
    };
    drop(work);
    Box::pin(end_run(ctx, msg, id, finished, ends)).await;
}

/// Ends the message the way the run ended: the job's end concluded, the job handed back
/// (or ended, past its wait), or the api's end of it acknowledged.
async fn end_run(
    ctx: &Ctx,
    msg: jetstream::Message,
    id: Uuid,
    finished: Result<Finished, Halt>,
    ends: Ends,
) {
    match finished {
        Ok(f) => {
            let Ends {
                reply_subject,
                webhook_url,
                ..
            } = ends;
            Box::pin(outcome::conclude(ctx, msg, f, reply_subject, webhook_url)).await
        }
        Err(Halt::Defer(deferred)) => Box::pin(defer_or_end(ctx, msg, id, deferred, ends)).await,
        Err(Halt::Ended(attempts)) => Box::pin(outcome::skip_ended(ctx, msg, id, attempts)).await,
    }
}

/// Hands the job back to wait for limits, unless it has waited longer than `max_wait`
/// since its submission: then it ends.
async fn defer_or_end(
    ctx: &Ctx,
    msg: jetstream::Message,
    id: Uuid,
    deferred: Deferred,
    ends: Ends,
) {
    let mut ends = ends;
    let waited = (Utc::now() - ends.base.created_at)
        .to_std()
        .unwrap_or_default();
    if waited <= ctx.config.limits.max_wait {
        outcome::defer(ctx, &msg, id, deferred).await;
        return;
    }
    let error = JobError {
        class: ErrorClass::WaitExceeded,
        message: format!(
            "waited {}s for limits or budget (sluice.limits.max_wait_secs is {}); last wait: {}",
            waited.as_secs(),
            ctx.config.limits.max_wait.as_secs(),
            deferred.reason
        ),
    };
    ends.base.attempts = deferred.calls_seen;
    outcome::end_early(ctx, msg, ends, deferred.attempts, error, false).await;
}
