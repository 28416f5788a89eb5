//! Job events on `<prefix>.events.<job_id>`: header names and bodies.
//!
//! `chunk` bodies are OpenAI `chat.completion.chunk` objects; `retry` tells subscribers to
//! drop the partial text of the earlier attempt; `done` carries the terminal result.

use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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

/// A terminal event whose result is JSON already (the job row's): it encodes to the very
/// bytes of the [`DoneEvent`] holding that result, without encoding the result again.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EncodedDone<'a> {
    pub job_id: Uuid,
    pub status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(with = "rust_decimal::serde::float_option")]
    pub cost: Option<Decimal>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a JobError>,
}

impl<'a> EncodedDone<'a> {
    /// `done` with `result` (its result's JSON) in place of its own result.
    pub fn new(done: &'a DoneEvent, result: Option<&'a RawValue>) -> Self {
        EncodedDone {
            job_id: done.job_id,
            status: done.status,
            result,
            usage: done.usage,
            cost: done.cost,
            attempts: done.attempts,
            error: done.error.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobResult;

    /// The terminal event encoded around its result's JSON is byte for byte the event
    /// encoded whole, with and without a result.
    #[test]
    fn an_event_around_an_encoded_result_encodes_like_the_whole_event() {
        let result: JobResult = serde_json::from_value(serde_json::json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi \"there\"\n"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        }))
        .unwrap();
        let raw = serde_json::value::to_raw_value(&result).unwrap();
        let done = DoneEvent {
            job_id: Uuid::from_u128(7),
            status: JobStatus::Succeeded,
            result: Some(result),
            usage: Some(Usage::new(3, 2)),
            cost: Some(Decimal::new(12345, 7)),
            attempts: 2,
            error: None,
        };
        let encoded = serde_json::to_vec(&EncodedDone::new(&done, Some(&raw))).unwrap();
        assert_eq!(encoded, serde_json::to_vec(&done).unwrap());
        let failed = DoneEvent {
            status: JobStatus::Failed,
            result: None,
            usage: None,
            cost: None,
            error: Some(JobError {
                class: crate::ErrorClass::Timeout,
                message: "slow".into(),
            }),
            ..done
        };
        let encoded = serde_json::to_vec(&EncodedDone::new(&failed, None)).unwrap();
        assert_eq!(encoded, serde_json::to_vec(&failed).unwrap());
    }
}
