//! The submission outbox, api side: a job's envelope is recorded with its row (see
//! `Store::record_new_jobs`), published, and dropped from the outbox once JetStream
//! acknowledged it. An entry left behind (the api died between record and publish, or the
//! ack was lost) is published by a worker's reconciler (`worker/src/reconcile.rs`) under
//! the same `Nats-Msg-Id`. So a recorded job always runs, and nothing here deletes a job
//! whose message may exist.
//!
//! Dropping an entry (and recording the job's stream sequence) costs no statement of its
//! own: acknowledged publishes wait in [`Published`] and ride on the next job insert
//! (`Store::record_new_jobs_and_published`). Only when no insert comes along for
//! [`IDLE`] does [`run`] write them alone. The reconciler leaves entries younger than its
//! grace time (`worker/src/reconcile.rs`, 10 s) to the api, well above [`IDLE`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_core::Store;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long an acknowledged publish waits for a job insert to carry it.
pub const IDLE: Duration = Duration::from_millis(500);

/// Acknowledged publishes whose outbox entries are still to be dropped: `(job, stream
/// sequence)`, oldest first, with when each was acknowledged.
#[derive(Default)]
pub struct Published {
    pending: Mutex<Vec<(Uuid, u64, Instant)>>,
}

impl Published {
    /// Notes that job `id`'s publish was acknowledged at stream sequence `seq`.
    pub fn push(&self, id: Uuid, seq: u64) {
        self.lock().push((id, seq, Instant::now()));
    }

    /// Takes every pending entry (for a statement to write); `None` when there is none.
    pub fn take(&self) -> Option<Vec<(Uuid, u64, Instant)>> {
        let mut pending = self.lock();
        (!pending.is_empty()).then(|| std::mem::take(&mut *pending))
    }

    /// Takes every pending entry if the oldest has waited at least `idle`.
    fn take_stale(&self, idle: Duration) -> Option<Vec<(Uuid, u64, Instant)>> {
        let mut pending = self.lock();
        let stale = pending.first().is_some_and(|p| p.2.elapsed() >= idle);
        stale.then(|| std::mem::take(&mut *pending))
    }

    /// Puts back entries a statement failed to write.
    pub fn restore(&self, mut entries: Vec<(Uuid, u64, Instant)>) {
        let mut pending = self.lock();
        entries.append(&mut pending);
        *pending = entries;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Uuid, u64, Instant)>> {
        // A panic while holding the lock cannot leave the Vec half-changed.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The pairs a statement binds.
pub fn pairs(entries: &[(Uuid, u64, Instant)]) -> Vec<(Uuid, u64)> {
    entries.iter().map(|&(id, seq, _)| (id, seq)).collect()
}

/// Writes acknowledged publishes that no job insert carried within [`IDLE`], until
/// `stop`; then writes what is left.
pub async fn run(store: Store, published: std::sync::Arc<Published>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(IDLE / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let due = if stopping {
            published.take()
        } else {
            published.take_stale(IDLE)
        };
        if let Some(entries) = due {
            if let Err(e) = store.outbox_published(&pairs(&entries)).await {
                tracing::warn!(error = %e, jobs = entries.len(), "cannot drop published jobs from the outbox; retrying");
                published.restore(entries);
            }
        }
        if stopping {
            return;
        }
    }
}

/// A fault-injection point for the end-to-end tests: when `SLUICE_FAULT_EXIT_AT` names
/// `point`, the process exits at once there, as a SIGKILL would leave it.
pub fn fault_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("SLUICE_FAULT_EXIT_AT").ok());
    if at.as_deref() == Some(point) {
        tracing::error!(point, "SLUICE_FAULT_EXIT_AT: exiting here");
        std::process::exit(137);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_wait_for_an_insert_until_they_are_stale() {
        let p = Published::default();
        assert!(p.take().is_none());
        p.push(Uuid::nil(), 7);
        assert!(p.take_stale(Duration::from_secs(60)).is_none(), "fresh");
        assert_eq!(
            p.take_stale(Duration::ZERO).map(|e| pairs(&e)),
            Some(vec![(Uuid::nil(), 7)])
        );
        assert!(p.take().is_none(), "taken once");
    }

    #[test]
    fn restored_entries_come_back_before_newer_ones() {
        let p = Published::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        p.push(a, 1);
        let taken = p.take();
        p.push(b, 2);
        p.restore(taken.unwrap_or_default());
        assert_eq!(p.take().map(|e| pairs(&e)), Some(vec![(a, 1), (b, 2)]));
    }
}
