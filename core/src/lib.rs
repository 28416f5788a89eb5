//! What the api and the worker share at runtime: the typed config, NATS stream and
//! consumer set-up, the Postgres store and the group-commit batch writer; the queue view,
//! readiness checks, virtual-key records and the process-wide metrics recorder.
//!
//! (DESIGN §1 names four crates; this fifth one keeps the api and the worker from
//! depending on each other.)
#![forbid(unsafe_code)]

pub mod batch_settings;
pub mod batches;
pub mod bodies;
pub mod cancel;
pub mod config;
pub mod files;
pub mod group_commit;
pub mod keys;
pub mod metrics;
pub mod nats;
pub mod pgtext;
pub mod queue;
pub mod readiness;
pub mod redis;
pub mod safety;
pub mod secret;
pub mod spend;
pub mod store;

pub use config::Config;
pub use secret::Secret;
pub use store::Store;
