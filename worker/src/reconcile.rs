//! The reconciler: jobs recorded by the api whose publish is not known to have reached
//! JetStream (the api died between record and publish, or lost the ack) are published
//! again from the submission outbox (`api/src/outbox.rs`), under the same `Nats-Msg-Id`,
//! so a copy that did arrive is dropped by the stream's deduplication. Every worker runs
//! it; concurrent republishes of one entry are deduplicated the same way.
//!
//! It also ends jobs whose message is gone: when a publish is acknowledged, the
//! message's stream sequence is recorded beside the job row (`Store::outbox_published`,
//! table `job_stream_seqs`; a batch line's, on the row, by the batch driver,
//! `api/src/batches.rs`). An unfinished job
//! with no outbox entry, not updated for `sluice.worker.lost_message_grace_secs`, whose
//! sequence no longer holds its message in the jobs stream (purged or deleted by an
//! operator, expired by the stream's limits, lost with a NATS node's data) can never be
//! delivered again: it ends `failed` (`internal`, "queue message lost"), with its
//! terminal event and the delivery to its reply subject, like any job that ends. A job
//! without a recorded sequence (recorded before that column existed, or published
//! straight to NATS) is never ended here. A message still in the stream, however long
//! its backlog, leaves its job alone.
//!
//! It does not own the jobs' lifecycle after that: a published job is the pipeline's
//! (`worker/src/job.rs`).

use std::time::Duration;

use std::sync::Arc;

use async_nats::jetstream;
use async_nats::jetstream::stream::RawMessageErrorKind;
use sluice_core::Store;
use sluice_schemas::job::JobError;
use sluice_schemas::{ErrorClass, Subjects};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A reconciliation round failed; the cause (Postgres, JetStream) is its source.
pub type ReconcileError = sluice_core::error::Error<ReconcileErrorKind>;

/// What a round could not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileErrorKind {
    /// Read or write the outbox or the jobs in Postgres.
    #[error("cannot reach the ledger")]
    Ledger,
    /// Open the jobs stream.
    #[error("cannot open the jobs stream")]
    Stream,
}

/// Postgres failed under a round.
fn ledger(e: sluice_core::store::StoreError) -> ReconcileError {
    ReconcileError::new(ReconcileErrorKind::Ledger, e)
}

/// How often the outbox is looked at.
const EVERY: Duration = Duration::from_secs(5);
/// An outbox entry younger than this is still the api's to publish.
const GRACE: Duration = Duration::from_secs(10);
/// The most entries published per round.
const BATCH: i64 = 500;
/// The most jobs looked for in the jobs stream per round.
const LOST_BATCH: i64 = 200;
/// The message that ends a job whose queue message is gone.
pub const LOST_MESSAGE: &str = "queue message lost";

/// What the reconciler works with.
pub struct Reconciler {
    pub js: jetstream::Context,
    pub store: Store,
    pub subjects: Subjects,
    /// The subject prefix and safety settings a reply subject is checked against
    /// (`worker/src/destinations.rs`).
    pub prefix: String,
    pub safety: sluice_core::safety::SafetySettings,
    /// How long an unfinished job whose message is gone stays untouched before it ends.
    pub lost_grace: Duration,
    /// Rung when an ended job has deliveries (`worker/src/deliveries.rs`).
    pub deliveries: Arc<Notify>,
}

/// Publishes what the outbox holds past its grace time, and ends jobs whose message is
/// gone, until `stop` is cancelled.
pub async fn run(r: Reconciler, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match round(&r.js, &r.store).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "published jobs their api left in the outbox"),
            Err(e) => tracing::warn!(error = %e, "outbox reconciliation failed; retrying"),
        }
        match lost_round(&r).await {
            Ok(0) => {}
            Ok(n) => tracing::error!(jobs = n, "ended jobs whose queue message is gone"),
            Err(e) => tracing::warn!(error = %e, "lost-message reconciliation failed; retrying"),
        }
    }
}

/// One pass: publishes due entries and drops those JetStream acknowledged.
pub async fn round(js: &jetstream::Context, store: &Store) -> Result<usize, ReconcileError> {
    let due = store.outbox_due(GRACE, BATCH).await.map_err(ledger)?;
    let mut published = Vec::with_capacity(due.len());
    let max_payload = js.client().server_info().max_payload;
    for row in due {
        let ack = async {
            // Larger than a message may be: by reference (see `sluice_core::bodies`).
            let (mut headers, payload) = sluice_core::bodies::job_message(
                store,
                max_payload,
                row.job_id,
                row.payload.into_bytes(),
            )
            .await?;
            // The submitting request's trace, as its first publish carried it: the
            // worker's job span continues it (`telemetry::continue_from_nats`).
            if let Some(tp) = &row.traceparent {
                headers.insert("traceparent", tp.as_str());
            }
            let ack = js
                .publish_with_headers(row.subject.clone(), headers, payload)
                .await?
                .await?;
            Ok::<u64, async_nats::Error>(ack.sequence)
        }
        .await;
        match ack {
            // A duplicate's ack carries the sequence of the message already stored.
            Ok(seq) => published.push((row.job_id, seq)),
            Err(e) => {
                // NATS is away: the entry stays for the next round.
                tracing::warn!(job_id = %row.job_id, error = %e, "outbox publish failed");
                break;
            }
        }
    }
    if !published.is_empty() {
        store.outbox_published(&published).await.map_err(ledger)?;
    }
    Ok(published.len())
}

/// Is the message at `seq` in the jobs stream the job `id`'s? `None` when that cannot be
/// told now (NATS unreachable, any error but "no message found").
async fn message_present(stream: &jetstream::stream::Stream, id: Uuid, seq: u64) -> Option<bool> {
    match stream.get_raw_message(seq).await {
        // The stream may have been recreated, its sequences reused by other jobs.
        Ok(msg) => Some(
            msg.headers
                .get("Nats-Msg-Id")
                .is_some_and(|v| v.as_str() == id.to_string()),
        ),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Some(false),
        Err(e) => {
            tracing::warn!(job_id = %id, seq, error = %e, "cannot look up a job's message");
            None
        }
    }
}

/// One pass: looks up due unfinished jobs' messages and ends those whose message is gone.
pub async fn lost_round(r: &Reconciler) -> Result<usize, ReconcileError> {
    let due = r
        .store
        .lost_candidates(r.lost_grace, LOST_BATCH)
        .await
        .map_err(ledger)?;
    if due.is_empty() {
        return Ok(0);
    }
    let stream =
        r.js.get_stream(r.subjects.jobs_stream())
            .await
            .map_err(|e| ReconcileError::new(ReconcileErrorKind::Stream, e))?;
    let error = JobError {
        class: ErrorClass::Internal,
        message: LOST_MESSAGE.into(),
    };
    let mut ended = 0;
    for (id, seq) in due {
        match message_present(&stream, id, seq).await {
            Some(false) => {}
            Some(true) => continue,
            // NATS cannot answer now: this round stops; the rows are looked at again.
            None => break,
        }
        let Some((row, replies)) = r
            .store
            .end_lost_job(id, seq, &error, |subject| {
                crate::destinations::reply_subject(Some(subject), &r.prefix, &r.safety).is_some()
            })
            .await
            .map_err(ledger)?
        else {
            continue;
        };
        tracing::error!(job_id = %id, seq, "job's queue message is gone; ended failed");
        ended += 1;
        if let Err(e) = crate::events::publish_ended(&r.js, &r.subjects, &row, 3).await {
            tracing::warn!(job_id = %id, error = %e, "terminal event of a lost job not stored");
        }
        if replies {
            r.deliveries.notify_one();
        }
    }
    Ok(ended)
}
