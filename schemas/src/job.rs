//! Job states and the failure a job ended in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::embeddings::EmbeddingsResponse;
use crate::error::ErrorClass;
use crate::openai::ChatCompletion;

/// How one provider call stands; the `job_attempts.status` column (a `CHECK` constraint
/// holds it to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type))]
#[cfg_attr(feature = "sqlx", sqlx(type_name = "text", rename_all = "snake_case"))]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// The call is being made (or its worker died making it).
    Started,
    /// The provider answered.
    Succeeded,
    /// The call failed; the attempt's error class says how.
    Failed,
}

impl AttemptStatus {
    /// The status as the column and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Started => "started",
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::Failed => "failed",
        }
    }
}

/// A job's state; the `jobs.status` column (a `CHECK` constraint holds it to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type))]
#[cfg_attr(feature = "sqlx", sqlx(type_name = "text", rename_all = "snake_case"))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "expired" => JobStatus::Expired,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Expired
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job (or one attempt) failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobError {
    pub class: ErrorClass,
    pub message: String,
}

/// What a successful job produced: a `chat.completion`, or an embeddings `list`.
/// Serialized as the object itself (no tag), so it reads as OpenAI's answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum JobResult {
    Chat(ChatCompletion),
    Embeddings(EmbeddingsResponse),
}

impl JobResult {
    /// The chat completion, for a chat job.
    pub fn chat(&self) -> Option<&ChatCompletion> {
        match self {
            JobResult::Chat(c) => Some(c),
            JobResult::Embeddings(_) => None,
        }
    }

    /// The model the provider says answered.
    pub fn model(&self) -> &str {
        match self {
            JobResult::Chat(c) => &c.model,
            JobResult::Embeddings(e) => &e.model,
        }
    }
}
