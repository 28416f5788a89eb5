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
    /// Not a provider failure: `sluice.worker.max_deliver` deliveries of the job died
    /// mid-call (workers died or stalled on it).
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

    /// The HTTP status a caller sees for a job that failed with this class: the one
    /// mapping used by the chat facade, its streams and batch output lines.
    ///
    /// Sluice is a gateway, so an upstream's failure is reported as one: its 5xx and
    /// broken connections are `502 Bad Gateway`, its timeouts `504 Gateway Timeout`, and
    /// only Sluice's own failures are `500`. An upstream credential or billing failure is
    /// `403`: the caller's own key was accepted (`401` stays reserved for that).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::BadRequest | ErrorClass::ContextWindow | ErrorClass::ContentPolicy => 400,
            ErrorClass::Auth => 403,
            ErrorClass::NotFound => 404,
            ErrorClass::RateLimit | ErrorClass::WaitExceeded => 429,
            ErrorClass::Internal | ErrorClass::DeliveriesExhausted => 500,
            ErrorClass::Server | ErrorClass::Connection | ErrorClass::TruncatedStream => 502,
            ErrorClass::Overloaded => 503,
            ErrorClass::Timeout => 504,
        }
    }

    /// The OpenAI error `type` that goes with [`ErrorClass::http_status`].
    pub fn openai_type(self) -> &'static str {
        match self {
            ErrorClass::BadRequest
            | ErrorClass::ContextWindow
            | ErrorClass::ContentPolicy
            | ErrorClass::NotFound => "invalid_request_error",
            ErrorClass::Auth => "permission_error",
            ErrorClass::RateLimit | ErrorClass::WaitExceeded => "rate_limit_error",
            ErrorClass::Internal
            | ErrorClass::DeliveriesExhausted
            | ErrorClass::Server
            | ErrorClass::Connection
            | ErrorClass::TruncatedStream
            | ErrorClass::Overloaded
            | ErrorClass::Timeout => "server_error",
        }
    }

    /// The OpenAI-style error body for a job that failed with this class (`code` is the
    /// class itself).
    pub fn error_body(self, message: impl Into<String>) -> ApiErrorBody {
        ApiErrorBody {
            error: ApiError {
                message: message.into(),
                kind: self.openai_type().to_string(),
                param: None,
                code: Some(self.as_str().to_string()),
            },
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorClass; 12] = [
        ErrorClass::RateLimit,
        ErrorClass::Overloaded,
        ErrorClass::Timeout,
        ErrorClass::Server,
        ErrorClass::Connection,
        ErrorClass::ContextWindow,
        ErrorClass::ContentPolicy,
        ErrorClass::Auth,
        ErrorClass::BadRequest,
        ErrorClass::NotFound,
        ErrorClass::TruncatedStream,
        ErrorClass::Internal,
    ];

    /// The status and the OpenAI type of a class tell the same story: `server_error`
    /// exactly for 5xx, and a caller's own mistakes are 4xx.
    #[test]
    fn status_and_type_agree_for_every_class() {
        for class in ALL {
            let status = class.http_status();
            assert!((400..600).contains(&status), "{class}: {status}");
            assert_eq!(
                status >= 500,
                class.openai_type() == "server_error",
                "{class}: {status} {}",
                class.openai_type()
            );
            let body = class.error_body("m");
            assert_eq!(body.error.code.as_deref(), Some(class.as_str()));
        }
        // Upstream failures are reported as a gateway's.
        assert_eq!(ErrorClass::Timeout.http_status(), 504);
        assert_eq!(ErrorClass::Server.http_status(), 502);
        assert_eq!(ErrorClass::Internal.http_status(), 500);
        assert_eq!(ErrorClass::Auth.http_status(), 403);
    }
}
