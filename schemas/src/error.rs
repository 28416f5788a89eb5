//! Error classes (decided once, in the provider layer) and the OpenAI-style error body.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What kind of failure a provider call ended in. Retry, cooldown and fallback decide on
/// this, never on message strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    RateLimit,
    Overloaded,
    Timeout,
    Server,
    Connection,
    ContextWindow,
    ContentPolicy,
    Auth,
    BadRequest,
    NotFound,
    TruncatedStream,
    /// Not a provider failure: the job could not be routed or was malformed.
    Internal,
    /// Not a provider failure: the job waited for limits, budget or a cooldown longer than
    /// its bound (`sluice.limits.max_wait_secs`).
    WaitExceeded,
    /// Not a provider failure: the job's message was delivered more often than
    /// `sluice.worker.max_deliver` without the job ending (workers died or stalled on it).
    DeliveriesExhausted,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::RateLimit => "rate_limit",
            ErrorClass::Overloaded => "overloaded",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Server => "server",
            ErrorClass::Connection => "connection",
            ErrorClass::ContextWindow => "context_window",
            ErrorClass::ContentPolicy => "content_policy",
            ErrorClass::Auth => "auth",
            ErrorClass::BadRequest => "bad_request",
            ErrorClass::NotFound => "not_found",
            ErrorClass::TruncatedStream => "truncated_stream",
            ErrorClass::Internal => "internal",
            ErrorClass::WaitExceeded => "wait_exceeded",
            ErrorClass::DeliveriesExhausted => "deliveries_exhausted",
        }
    }

    /// Whether another try of the same request can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimit
                | ErrorClass::Overloaded
                | ErrorClass::Timeout
                | ErrorClass::Server
                | ErrorClass::Connection
                | ErrorClass::TruncatedStream
        )
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error":{"message","type","param","code"}}`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ApiErrorBody {
    pub error: ApiError,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}
