//! OpenAI Batch API shapes: the file and batch objects, the
//! input line and the output/error line. Sluice adds two fields to the batch object
//! (`priority`, `progress`); OpenAI's SDKs ignore fields they do not know.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The chat endpoint (batches run it unless they name another).
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// The embeddings endpoint, for batches whose lines embed.
pub const EMBEDDINGS: &str = "/v1/embeddings";

/// Error codes of output lines that never ran.
pub const CODE_EXPIRED: &str = "batch_expired";
pub const CODE_CANCELLED: &str = "batch_cancelled";

/// `object: "file"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileObject {
    pub id: String,
    pub object: String,
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    pub status: String,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub status_details: Option<String>,
}

/// `{"id","object":"file","deleted":true}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileDeleted {
    pub id: String,
    pub object: String,
    pub deleted: bool,
}

/// Batch statuses, as OpenAI names them; the `batches.status` column (a `CHECK`
/// constraint holds it to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type))]
#[cfg_attr(feature = "sqlx", sqlx(type_name = "text", rename_all = "snake_case"))]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub fn parse(s: &str) -> Option<BatchStatus> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// Nothing more will happen to the batch.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Failed
                | BatchStatus::Completed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }
}

impl std::fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `request_counts`: `failed` counts every line that ended without a result (failed,
/// invalid, cancelled or expired).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// Sluice's finer view of a running batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchProgress {
    /// Lines turned into jobs so far.
    pub ingested: u64,
    pub queued: u64,
    pub running: u64,
    pub cancelled: u64,
    pub expired: u64,
}

/// One problem with an input file; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchErrorItem {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub line: Option<u32>,
}

/// `errors` of a failed batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchErrors {
    pub object: String,
    pub data: Vec<BatchErrorItem>,
}

/// `object: "batch"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub id: String,
    pub object: String,
    pub endpoint: String,
    #[serde(default)]
    pub errors: Option<BatchErrors>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    pub created_at: i64,
    #[serde(default)]
    pub in_progress_at: Option<i64>,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub finalizing_at: Option<i64>,
    #[serde(default)]
    pub completed_at: Option<i64>,
    #[serde(default)]
    pub failed_at: Option<i64>,
    #[serde(default)]
    pub expired_at: Option<i64>,
    #[serde(default)]
    pub cancelling_at: Option<i64>,
    #[serde(default)]
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Sluice: the tier its lines run at.
    #[serde(default)]
    pub priority: Option<String>,
    /// Sluice: lines by state.
    #[serde(default)]
    pub progress: Option<BatchProgress>,
}

/// `GET /v1/batches`: a page, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchList {
    pub object: String,
    pub data: Vec<Batch>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// One input line: `{"custom_id","method","url","body"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchInputLine {
    pub custom_id: String,
    pub method: String,
    pub url: String,
    pub body: Value,
}

/// `response` of an output line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResponse {
    pub status_code: u16,
    pub request_id: String,
    pub body: Value,
}

/// `error` of an error line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchLineError {
    pub code: String,
    pub message: String,
}

/// One line of an output or error file, matched to its input by `custom_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchOutputLine {
    pub id: String,
    pub custom_id: String,
    pub response: Option<BatchResponse>,
    pub error: Option<BatchLineError>,
}
