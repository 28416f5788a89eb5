//! What this worker has done since it started, for its heartbeat: jobs finished and
//! deferrals by reason. The API sums these over the workers it hears from, which gives
//! the console a cluster-wide jobs/s and deferral count without scraping every worker's
//! `/metrics` (see `api/src/workers.rs`). Reasons are a fixed set of static strings, so
//! the map stays small.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Tally {
    finished: AtomicU64,
    deferrals: Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    /// A job's terminal state was recorded.
    pub fn finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// A job was handed back to run later.
    pub fn deferred(&self, reason: &'static str) {
        let mut map = self.deferrals.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(reason).or_default() += 1;
    }

    /// Jobs finished, and deferrals by reason, so far.
    pub fn snapshot(&self) -> (u64, BTreeMap<String, u64>) {
        let map = self.deferrals.lock().unwrap_or_else(|p| p.into_inner());
        (
            self.finished.load(Ordering::Relaxed),
            map.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        )
    }
}
