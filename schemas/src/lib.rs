//! Wire types shared by every Sluice part.
//!
//! Everything that crosses a process boundary — the job envelope on NATS, the OpenAI chat
//! request/response/chunk shapes, job events and their headers, subject names and error
//! classes — is defined here once. This crate does no I/O.
#![forbid(unsafe_code)]

pub mod batch;
pub mod embeddings;
pub mod envelope;
pub mod error;
pub mod events;
pub mod job;
pub mod openai;
pub mod ops;
pub mod sse;
pub mod subjects;

pub use envelope::{is_master_owner, JobEnvelope, Tier, MASTER_OWNER};
pub use error::{ApiErrorBody, ErrorClass};
pub use events::{DoneEvent, EncodedDone, EventKind, RetryEvent};
pub use job::{AttemptStatus, JobStatus};
pub use subjects::Subjects;

/// JSON Schema of the job envelope, for services that publish jobs straight to NATS.
pub fn envelope_json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(JobEnvelope)).unwrap_or_default()
}
