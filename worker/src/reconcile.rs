//! The reconciler: jobs recorded by the api whose publish is not known to have reached
//! JetStream (the api died between record and publish, or lost the ack) are published
//! again from the submission outbox (`api/src/outbox.rs`), under the same `Nats-Msg-Id`,
//! so a copy that did arrive is dropped by the stream's deduplication. Every worker runs
//! it; concurrent republishes of one entry are deduplicated the same way.
//!
//! It does not own the jobs' lifecycle after that: a published job is the pipeline's
//! (`worker/src/job.rs`).

use std::time::Duration;

use async_nats::jetstream;
use sluice_core::Store;
use tokio_util::sync::CancellationToken;

/// How often the outbox is looked at.
const EVERY: Duration = Duration::from_secs(5);
/// An outbox entry younger than this is still the api's to publish.
const GRACE: Duration = Duration::from_secs(10);
/// The most entries published per round.
const BATCH: i64 = 500;

/// Publishes what the outbox holds past its grace time until `stop` is cancelled.
pub async fn run(js: jetstream::Context, store: Store, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match round(&js, &store).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "published jobs their api left in the outbox"),
            Err(e) => tracing::warn!(error = %e, "outbox reconciliation failed; retrying"),
        }
    }
}

/// One pass: publishes due entries and drops those JetStream acknowledged.
pub async fn round(js: &jetstream::Context, store: &Store) -> Result<usize, String> {
    let due = store
        .outbox_due(GRACE, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let mut published = Vec::with_capacity(due.len());
    let max_payload = js.client().server_info().max_payload;
    for row in due {
        let ack = async {
            // Larger than a message may be: by reference (see `sluice_core::bodies`).
            let (headers, payload) = sluice_core::bodies::job_message(
                store,
                max_payload,
                row.job_id,
                row.payload.into_bytes(),
            )
            .await?;
            js.publish_with_headers(row.subject.clone(), headers, payload)
                .await?
                .await?;
            Ok::<(), async_nats::Error>(())
        }
        .await;
        match ack {
            Ok(()) => published.push(row.job_id),
            Err(e) => {
                // NATS is away: the entry stays for the next round.
                tracing::warn!(job_id = %row.job_id, error = %e, "outbox publish failed");
                break;
            }
        }
    }
    if !published.is_empty() {
        store
            .outbox_published(&published)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(published.len())
}
