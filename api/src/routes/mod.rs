//! HTTP routes, one module per resource.

pub mod batches;
pub mod chat;
pub mod files;
pub mod health;
pub mod jobs;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod queue;
pub mod spend;
