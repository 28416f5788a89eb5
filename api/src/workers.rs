//! The workers this API instance has heard from: it listens to the heartbeat subject and
//! remembers each worker's last heartbeat for [`STALE_AFTER`]. From two beats in a row it
//! also knows how fast each worker finishes jobs ([`Workers::activity`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_schemas::ops::{WorkerHeartbeat, WorkerSeen};
use tokio_util::sync::CancellationToken;

/// A worker not heard from for this long is no longer listed (three missed beats).
pub const STALE_AFTER: Duration = Duration::from_secs(15);
/// Workers remembered at most (a bound against a flood of made-up heartbeats).
const MAX_WORKERS: usize = 4096;

/// A worker's last heartbeat, when it came, and the jobs/s since the one before.
struct Seen {
    at: Instant,
    beat: WorkerHeartbeat,
    jobs_per_second: f64,
}

/// What the live workers did, summed: for the console's overview.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Activity {
    /// Jobs finished per second, between each worker's last two heartbeats.
    pub jobs_per_second: f64,
    /// Jobs finished since those workers started.
    pub finished: u64,
    /// Deferrals by reason since those workers started.
    pub deferrals: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct Workers {
    seen: Mutex<HashMap<String, Seen>>,
}

impl Workers {
    pub fn record(&self, beat: WorkerHeartbeat) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, s| s.at.elapsed() < STALE_AFTER);
        if seen.len() >= MAX_WORKERS && !seen.contains_key(&beat.worker) {
            return;
        }
        let jobs_per_second = seen
            .get(&beat.worker)
            .map(|prev| rate(&prev.beat, &beat))
            .unwrap_or(0.0);
        seen.insert(
            beat.worker.clone(),
            Seen {
                at: Instant::now(),
                beat,
                jobs_per_second,
            },
        );
    }

    /// Jobs/s and deferrals of the workers heard from within [`STALE_AFTER`].
    pub fn activity(&self) -> Activity {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Activity::default();
        for s in seen.values().filter(|s| s.at.elapsed() < STALE_AFTER) {
            out.jobs_per_second += s.jobs_per_second;
            out.finished += s.beat.finished;
            for (reason, n) in &s.beat.deferrals {
                *out.deferrals.entry(reason.clone()).or_default() += n;
            }
        }
        out
    }

    /// Workers heard from within [`STALE_AFTER`], by name.
    pub fn seen(&self) -> Vec<WorkerSeen> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<WorkerSeen> = seen
            .values()
            .filter(|s| s.at.elapsed() < STALE_AFTER)
            .map(|s| WorkerSeen {
                worker: s.beat.worker.clone(),
                capacity: s.beat.capacity,
                in_flight: s.beat.in_flight,
                draining: s.beat.draining,
                last_seen_seconds: s.at.elapsed().as_secs_f64(),
            })
            .collect();
        out.sort_by(|a, b| a.worker.cmp(&b.worker));
        out
    }
}

/// Jobs/s between two heartbeats of one worker (0 when the counter went back: a restart
/// under the same name).
fn rate(prev: &WorkerHeartbeat, now: &WorkerHeartbeat) -> f64 {
    let secs = (now.sent_at_ms - prev.sent_at_ms) as f64 / 1000.0;
    if secs <= 0.0 || now.finished < prev.finished {
        return 0.0;
    }
    (now.finished - prev.finished) as f64 / secs
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

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(sent_at_ms: i64, finished: u64, limit: u64) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker: "w1".into(),
            capacity: 4,
            in_flight: 1,
            draining: false,
            sent_at_ms,
            finished,
            deferrals: [("limit".to_string(), limit)].into(),
        }
    }

    #[test]
    fn activity_is_the_rate_between_two_beats_and_the_latest_totals() {
        let w = Workers::default();
        w.record(beat(1_000, 10, 1));
        assert_eq!(w.activity().jobs_per_second, 0.0, "one beat gives no rate");
        w.record(beat(6_000, 35, 3));
        let a = w.activity();
        assert_eq!(a.jobs_per_second, 5.0);
        assert_eq!(a.finished, 35);
        assert_eq!(a.deferrals.get("limit"), Some(&3));
        // A restarted worker (counter back to 0) does not report a negative rate.
        w.record(beat(11_000, 2, 0));
        assert_eq!(w.activity().jobs_per_second, 0.0);
    }
}
