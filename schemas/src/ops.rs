//! Operational wire types: the worker heartbeat and the queue view of `GET /v1/queue`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::Tier;

/// Published by every worker on [`crate::Subjects::worker_heartbeat`] every few seconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerHeartbeat {
    /// `<host>-<pid>`; never a secret.
    pub worker: String,
    /// Concurrent jobs this worker runs at most.
    pub capacity: usize,
    /// Jobs it is running now.
    pub in_flight: usize,
    /// `true` once it has stopped pulling and is finishing its jobs.
    pub draining: bool,
    /// Unix milliseconds when this heartbeat was sent.
    pub sent_at_ms: i64,
    /// Jobs this worker has recorded as finished since it started (any terminal status).
    #[serde(default)]
    pub finished: u64,
    /// Jobs it handed back to wait for a limit or an outage since it started, by reason.
    #[serde(default)]
    pub deferrals: BTreeMap<String, u64>,
}

/// One tier's backlog, from its durable consumer's info.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TierQueue {
    pub tier: Tier,
    pub stream: String,
    pub consumer: String,
    /// `pending + ack_pending`: what KEDA's `nats-jetstream` scaler calls lag.
    pub depth: u64,
    /// Not yet delivered to any worker.
    pub pending: u64,
    /// Delivered, not yet acknowledged (running, or waiting for a slot).
    pub ack_pending: u64,
    /// Messages delivered more than once.
    pub redelivered: u64,
    /// Pull requests waiting for messages.
    pub waiting: u64,
    /// Age of the oldest message not yet acknowledged; `None` when the tier is empty.
    pub oldest_age_seconds: Option<f64>,
}

/// A worker the API heard from recently.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerSeen {
    pub worker: String,
    pub capacity: usize,
    pub in_flight: usize,
    pub draining: bool,
    /// Seconds since its last heartbeat.
    pub last_seen_seconds: f64,
}

/// The body of `GET /v1/queue`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueView {
    pub object: String,
    pub tiers: Vec<TierQueue>,
    pub workers: Vec<WorkerSeen>,
}
