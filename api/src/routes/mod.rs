//! HTTP routes, one module per resource.

pub mod batches;
pub mod chat;
pub mod embeddings;
pub mod files;
pub mod health;
pub mod job_list;
pub mod jobs;
pub mod keys;
pub mod limits;
pub mod me;
pub mod metrics;
pub mod models;
pub mod overview;
pub mod queue;
pub mod spend;
pub mod ui;
