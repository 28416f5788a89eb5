//! The worker's heartbeat: every few seconds a [`WorkerHeartbeat`] on core NATS
//! (`<prefix>.workers.heartbeat`), so `GET /v1/queue` can list the workers it has seen,
//! with their capacity, load and whether they are draining. Best effort: a lost
//! heartbeat only makes a worker look older.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_schemas::ops::WorkerHeartbeat;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::scheduler::Slots;
use crate::tally::Tally;

/// How often a worker says it is alive.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Publishes heartbeats until `stop` is cancelled, then one last one.
pub async fn run(
    worker: String,
    slots: Arc<Slots>,
    admin: Arc<AdminState>,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let subject = admin.subjects.worker_heartbeat();
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let (finished, deferrals) = tally.snapshot();
        let beat = WorkerHeartbeat {
            worker: worker.clone(),
            capacity: slots.capacity(),
            in_flight: slots.in_use(),
            draining: admin.draining.load(Ordering::Relaxed),
            sent_at_ms: chrono::Utc::now().timestamp_millis(),
            finished,
            deferrals,
        };
        sluice_core::metrics::upkeep();
        match serde_json::to_vec(&beat) {
            Ok(body) => {
                if let Err(e) = admin.nats.publish(subject.clone(), body.into()).await {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat not encoded"),
        }
        if stopping {
            return;
        }
    }
}
