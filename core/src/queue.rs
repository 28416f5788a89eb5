//! The queue as operators see it: per tier, what its durable consumer reports (pending,
//! ack pending, redelivered, waiting pulls) and the age of its oldest unacknowledged
//! message. Feeds `GET /v1/queue`, `sluice queue` and the `sluice_queue_*` gauges.
//!
//! Depth is `num_pending + num_ack_pending`, the same lag KEDA's `nats-jetstream` scaler
//! computes, so a dashboard and the autoscaler agree. Reading only; no set-up here.

use async_nats::jetstream;
use futures::TryStreamExt;
use sluice_schemas::ops::TierQueue;
use sluice_schemas::{Subjects, Tier};

/// Reading the queue from JetStream failed; the cause is its source.
pub type QueueError = crate::error::Error<QueueErrorKind>;

/// What could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueErrorKind {
    /// The stream or consumer `what`.
    #[error("cannot read JetStream {what}")]
    Read { what: String },
}

/// Reads every tier's consumer info, highest priority first.
pub async fn snapshot(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<Vec<TierQueue>, QueueError> {
    let stream_name = subjects.jobs_stream();
    let stream = js.get_stream_no_info(&stream_name).await.map_err(|e| {
        QueueError::new(
            QueueErrorKind::Read {
                what: format!("stream {stream_name}"),
            },
            e,
        )
    })?;
    let mut out = Vec::with_capacity(Tier::ALL.len());
    for tier in Tier::ALL {
        let name = subjects.tier_consumer(tier);
        let counts = match stream.consumer_info(&name).await {
            Ok(info) => Counts {
                pending: info.num_pending,
                ack_pending: info.num_ack_pending as u64,
                redelivered: info.num_redelivered as u64,
                waiting: info.num_waiting as u64,
            },
            // No worker has created the consumer yet: everything on the subject waits.
            Err(consumer_err) => Counts {
                pending: subject_count(&stream, &subjects.jobs(tier))
                    .await
                    .map_err(|_| {
                        QueueError::new(
                            QueueErrorKind::Read {
                                what: format!("consumer {name}"),
                            },
                            consumer_err,
                        )
                    })?,
                ack_pending: 0,
                redelivered: 0,
                waiting: 0,
            },
        };
        let ack_pending = counts.ack_pending;
        let depth = counts.pending + ack_pending;
        // On a work-queue stream an acknowledged message is deleted, so the first message
        // left on the tier's subject is the oldest one not yet done.
        let oldest_age_seconds = if depth == 0 {
            None
        } else {
            match stream
                .get_first_raw_message_by_subject(subjects.jobs(tier), 0)
                .await
            {
                Ok(msg) => {
                    let published_ns = msg.time.unix_timestamp_nanos();
                    let now_ns = chrono::Utc::now()
                        .timestamp_nanos_opt()
                        .map(i128::from)
                        .unwrap_or(published_ns);
                    Some(((now_ns - published_ns).max(0) as f64) / 1e9)
                }
                Err(e) => {
                    tracing::debug!(%tier, error = %e, "cannot read the oldest message");
                    None
                }
            }
        };
        out.push(TierQueue {
            tier,
            stream: stream_name.clone(),
            consumer: name,
            depth,
            pending: counts.pending,
            ack_pending,
            redelivered: counts.redelivered,
            waiting: counts.waiting,
            oldest_age_seconds,
        });
    }
    Ok(out)
}

struct Counts {
    pending: u64,
    ack_pending: u64,
    redelivered: u64,
    waiting: u64,
}

/// Messages stored on one subject of the stream.
async fn subject_count(
    stream: &jetstream::stream::Stream<()>,
    subject: &str,
) -> Result<u64, async_nats::Error> {
    let mut info = stream.info_with_subjects(subject).await?;
    let mut total = 0u64;
    while let Some((_, n)) = info.try_next().await? {
        total += n as u64;
    }
    Ok(total)
}

/// Sets the `sluice_queue_*` gauges from a snapshot.
pub fn record(tiers: &[TierQueue]) {
    for t in tiers {
        let tier = t.tier.as_str();
        metrics::gauge!("sluice_queue_depth", "tier" => tier).set(t.depth as f64);
        metrics::gauge!("sluice_queue_pending", "tier" => tier).set(t.pending as f64);
        metrics::gauge!("sluice_queue_ack_pending", "tier" => tier).set(t.ack_pending as f64);
        metrics::gauge!("sluice_queue_redelivered", "tier" => tier).set(t.redelivered as f64);
        metrics::gauge!("sluice_queue_oldest_age_seconds", "tier" => tier)
            .set(t.oldest_age_seconds.unwrap_or(0.0));
    }
}

/// Describes the queue gauges (HELP lines); call once per process.
pub fn describe() {
    metrics::describe_gauge!(
        "sluice_queue_depth",
        "Jobs in the tier not yet finished: pending + ack pending (KEDA's lag)"
    );
    metrics::describe_gauge!(
        "sluice_queue_pending",
        "Jobs in the tier not yet delivered to a worker"
    );
    metrics::describe_gauge!(
        "sluice_queue_ack_pending",
        "Jobs delivered to a worker and not yet acknowledged"
    );
    metrics::describe_gauge!(
        "sluice_queue_redelivered",
        "Messages of the tier delivered more than once"
    );
    metrics::describe_gauge!(
        "sluice_queue_oldest_age_seconds",
        "Age of the tier's oldest unacknowledged job (0 when empty)"
    );
}
