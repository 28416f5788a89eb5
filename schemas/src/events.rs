//! Job events on `<prefix>.events.<job_id>`: header names and bodies.
//!
//! `chunk` bodies are OpenAI `chat.completion.chunk` objects; `retry` tells subscribers to
//! drop the partial text of the earlier attempt; `done` carries the terminal result.

use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::job::{JobError, JobResult, JobStatus};
use crate::openai::Usage;

pub const HEADER_EVENT: &str = "Sluice-Event";
pub const HEADER_ATTEMPT: &str = "Sluice-Attempt";
pub const HEADER_SEQ: &str = "Sluice-Seq";
pub const HEADER_DLQ_REASON: &str = "Sluice-Dlq-Reason";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Chunk,
    Retry,
    Done,
    Error,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Chunk => "chunk",
            EventKind::Retry => "retry",
            EventKind::Done => "done",
            EventKind::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "chunk" => EventKind::Chunk,
            "retry" => EventKind::Retry,
            "done" => EventKind::Done,
            "error" => EventKind::Error,
            _ => return None,
        })
    }

    /// `done` and `error` end a job's event stream.
    pub fn is_terminal(self) -> bool {
        matches!(self, EventKind::Done | EventKind::Error)
    }
}

/// Body of a `retry` event.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RetryEvent {
    /// The attempt that failed.
    pub attempt: u32,
    pub deployment: String,
    pub error: JobError,
}

/// Body of the terminal (`done` or `error`) event: the job's result.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DoneEvent {
    pub job_id: Uuid,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Total USD across attempts; null when a price was missing.
    #[serde(default, with = "rust_decimal::serde::float_option")]
    #[schemars(with = "Option<f64>")]
    pub cost: Option<Decimal>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}
