//! The workers this API instance has heard from: it listens to the heartbeat subject and
//! remembers each worker's last heartbeat for [`STALE_AFTER`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_schemas::ops::{WorkerHeartbeat, WorkerSeen};
use tokio_util::sync::CancellationToken;

/// A worker not heard from for this long is no longer listed (three missed beats).
pub const STALE_AFTER: Duration = Duration::from_secs(15);
/// Workers remembered at most (a bound against a flood of made-up heartbeats).
const MAX_WORKERS: usize = 4096;

#[derive(Default)]
pub struct Workers {
    seen: Mutex<HashMap<String, (Instant, WorkerHeartbeat)>>,
}

impl Workers {
    pub fn record(&self, beat: WorkerHeartbeat) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, (at, _)| at.elapsed() < STALE_AFTER);
        if seen.len() >= MAX_WORKERS && !seen.contains_key(&beat.worker) {
            return;
        }
        seen.insert(beat.worker.clone(), (Instant::now(), beat));
    }

    /// Workers heard from within [`STALE_AFTER`], by name.
    pub fn seen(&self) -> Vec<WorkerSeen> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<WorkerSeen> = seen
            .values()
            .filter(|(at, _)| at.elapsed() < STALE_AFTER)
            .map(|(at, b)| WorkerSeen {
                worker: b.worker.clone(),
                capacity: b.capacity,
                in_flight: b.in_flight,
                draining: b.draining,
                last_seen_seconds: at.elapsed().as_secs_f64(),
            })
            .collect();
        out.sort_by(|a, b| a.worker.cmp(&b.worker));
        out
    }
}

/// Records heartbeats from `subscriber` until `stop` is cancelled.
pub async fn listen(
    mut subscriber: async_nats::Subscriber,
    workers: std::sync::Arc<Workers>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            m = subscriber.next() => m,
            _ = stop.cancelled() => break,
        };
        let Some(msg) = msg else { break };
        match serde_json::from_slice::<WorkerHeartbeat>(&msg.payload) {
            Ok(beat) => workers.record(beat),
            Err(e) => tracing::debug!(error = %e, "ignoring a malformed heartbeat"),
        }
    }
    let _ = subscriber.unsubscribe().await;
}
