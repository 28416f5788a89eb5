//! What the api and the worker share at runtime: the typed config, NATS stream and
//! consumer set-up, the Postgres store and its group-commit writer ([`group_commit`]);
//! the queue view, readiness checks, virtual-key records and the process-wide metrics
//! recorder.
//!
//! This crate keeps the api and the worker from depending on each other.
#![forbid(unsafe_code)]

pub mod batch_settings;
pub mod budgets;
pub mod cancel;
pub mod config;
pub mod error;
pub mod group_commit;
pub mod metrics;
pub mod native_batches;
pub mod nats;
pub mod pgtext;
pub mod queue;
pub mod readiness;
pub mod redis;
pub mod safety;
pub mod secret;
pub mod store;
// Each of these is a concept of the store (`core/src/store/`), kept at its old path.
pub use store::{batches, bodies, budget_ledger, files, job_list, keys, spend};
pub mod telemetry;
pub mod terminal_event;
pub mod tls;

pub use config::Config;
pub use secret::Secret;
pub use store::Store;
