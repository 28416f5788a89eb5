//! The submission outbox, api side: a job's envelope is recorded with its row (see
//! `Store::record_new_jobs`), published, and dropped from the outbox once JetStream
//! acknowledged it. An entry left behind (the api died between record and publish, or the
//! ack was lost) is published by a worker's reconciler (`worker/src/reconcile.rs`) under
//! the same `Nats-Msg-Id`. So a recorded job always runs, and nothing here deletes a job
//! whose message may exist.

use futures::future::BoxFuture;
use sluice_core::group_commit::{Flush, FlushError};
use sluice_core::Store;
use uuid::Uuid;

/// Drops the outbox entries of published jobs, many per statement, recording each job's
/// stream sequence in the same statement (see `Store::outbox_published`).
pub struct OutboxFlush(pub Store);

impl Flush<(Uuid, u64)> for OutboxFlush {
    type Out = ();
    fn flush<'a>(&'a self, items: &'a [(Uuid, u64)]) -> BoxFuture<'a, Result<Vec<()>, FlushError>> {
        Box::pin(async move {
            self.0
                .outbox_published(items)
                .await
                .map_err(FlushError::from)?;
            Ok(vec![(); items.len()])
        })
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
