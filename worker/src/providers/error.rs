//! [`ProviderError`]: a failed provider call, classified once. Every failure leaves the
//! provider layer as one of these, with exactly one [`ErrorClass`].

use std::time::Duration;

use reqwest::header::HeaderMap;
use sluice_schemas::ErrorClass;

use super::ratelimit::{provider_wait, RateLimits};

/// The longest provider message kept in an error.
const MAX_ERROR_MESSAGE: usize = 4096;

/// A failed provider call, classified once.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{class}: {message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    pub message: String,
    pub status: Option<u16>,
    /// From `Retry-After` / `retry-after-ms` (or the provider's own hint, e.g. Gemini's
    /// `RetryInfo`).
    pub retry_after: Option<Duration>,
    /// The provider's rate-limit headers on the failed response, if it sent any (boxed:
    /// errors travel through many `Result`s and should stay small).
    pub rate_limits: Option<Box<RateLimits>>,
    /// Request parameters the provider cannot take, dropped (`drop_params`) before the
    /// call failed.
    pub dropped_params: Vec<String>,
}

impl ProviderError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        ProviderError {
            class,
            message: truncate(&message.into()),
            status: None,
            retry_after: None,
            rate_limits: None,
            dropped_params: Vec::new(),
        }
    }

    /// Adds what the response headers say (status, Retry-After, rate limits).
    pub fn with_response(mut self, status: u16, headers: &HeaderMap) -> Self {
        self.status = Some(status);
        if self.retry_after.is_none() {
            self.retry_after = retry_after(headers);
        }
        self.rate_limits = RateLimits::from_headers(headers).map(Box::new);
        self
    }

    /// Turns a transport error into a class without leaking the URL's secrets.
    pub fn from_reqwest(e: &reqwest::Error) -> Self {
        let e_url = e.url().cloned();
        let class = if e.is_timeout() {
            ErrorClass::Timeout
        } else if e.is_connect() {
            ErrorClass::Connection
        } else if e.is_body() || e.is_decode() {
            ErrorClass::TruncatedStream
        } else {
            ErrorClass::Connection
        };
        // The URL can carry a key (`?key=`); keep only its path.
        let mut e = e.to_string();
        if let Some(url) = e_url {
            e = e.replace(url.as_str(), url.path());
        }
        ProviderError::new(class, e)
    }
}

/// The one status → class table: what an HTTP status says when the protocol's own error
/// body does not settle it (each adapter's `classify` looks at its body first). `None`
/// (an error event inside a 200 stream) is the provider's fault. A 4xx not listed is
/// left to the adapter (`None`), which treats it as a bad request unless its body says
/// otherwise.
pub fn status_class(status: Option<u16>) -> Option<ErrorClass> {
    Some(match status? {
        400 | 413 | 422 => ErrorClass::BadRequest,
        401..=403 => ErrorClass::Auth,
        404 => ErrorClass::NotFound,
        408 | 504 => ErrorClass::Timeout,
        429 => ErrorClass::RateLimit,
        503 | 529 => ErrorClass::Overloaded,
        // 499: the upstream gave up on the call (Google: CANCELLED).
        499..=599 => ErrorClass::Server,
        _ => return None,
    })
}

/// [`status_class`], with an unlisted status read as a bad request and no status (an
/// error event in a stream) as a server error.
pub fn class_of_status(status: Option<u16>) -> ErrorClass {
    match status {
        None => ErrorClass::Server,
        s => status_class(s).unwrap_or(ErrorClass::BadRequest),
    }
}

/// `retry-after-ms`, then `retry-after` in seconds (HTTP dates are treated as absent),
/// clamped to `MAX_PROVIDER_WAIT`: these are the provider's bytes, not ours.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if let Some(d) = provider_wait(ms / 1000.0) {
            return Some(d);
        }
    }
    get("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(provider_wait)
}

/// Keeps error messages bounded (bodies can be whole HTML pages).
pub(crate) fn truncate(s: &str) -> String {
    if s.len() <= MAX_ERROR_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_ERROR_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Context-window wording shared by the OpenAI family, Anthropic, Gemini and Ollama
///
/// (their error bodies as the simulator in `tests/src/sim/` sends them), lower-cased.
pub(crate) fn is_context_message(lower: &str) -> bool {
    lower.contains("maximum context length")
        || lower.contains("context window")
        || lower.contains("context_length_exceeded")
        || lower.contains("prompt is too long")
        || lower.contains("exceed context limit")
        || lower.contains("range of input length should be")
        || (lower.contains("input token count") && lower.contains("exceeds the maximum"))
        || lower.contains("exceeds the context length")
        || lower.contains("longer than the context length")
}

/// A provider's 3xx: not followed (it would carry the prompt, and a header key, to
/// wherever it points); an attempt error naming the Location without its query string.
pub(crate) fn redirect_error(status: u16, headers: &reqwest::header::HeaderMap) -> ProviderError {
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| l.split(['?', '#']).next().unwrap_or_default().to_string())
        .unwrap_or_else(|| "(no Location)".into());
    let mut e = ProviderError::new(
        ErrorClass::Server,
        format!("provider answered {status} redirecting to {location}; redirects are not followed"),
    );
    e.status = Some(status);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn absurd_retry_after_is_clamped_not_a_panic() {
        let max = sluice_core::safety::MAX_PROVIDER_WAIT;
        for v in ["1e300", "99999999999999999999", "inf", "NaN", "-5"] {
            let mut h = HeaderMap::new();
            h.insert("retry-after", v.parse().unwrap());
            assert!(retry_after(&h).is_none_or(|d| d <= max), "{v}");
            let mut h = HeaderMap::new();
            h.insert("retry-after-ms", v.parse().unwrap());
            assert!(retry_after(&h).is_none_or(|d| d <= max), "{v}");
        }
        let mut h = HeaderMap::new();
        h.insert("retry-after", "1e300".parse().unwrap());
        assert_eq!(retry_after(&h), Some(max));
    }

    #[test]
    fn transport_errors_never_carry_the_query_string() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt.block_on(async {
            reqwest::Client::new()
                .get("http://127.0.0.1:1/v1beta/models/m:generateContent?key=sk-secret-1")
                .send()
                .await
                .unwrap_err()
        });
        let pe = ProviderError::from_reqwest(&e);
        assert_eq!(pe.class, ErrorClass::Connection);
        assert!(!pe.message.contains("sk-secret-1"), "{}", pe.message);
    }
}
