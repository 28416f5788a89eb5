//! Rate-limit headers (`x-ratelimit-*`, `anthropic-ratelimit-*`) parsed into one small
//! struct, kept on every call result and error for flow control.
//!
//! Owns only parsing; nothing here decides whether to wait or where to route.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName};

/// What the provider said about its limits on one response. Absent or unparsable values
/// (Azure sometimes sends `-1`) are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    /// Time until the request window resets.
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

impl RateLimits {
    /// Reads OpenAI-style (`x-ratelimit-*`, Go durations) and Anthropic-style
    /// (`anthropic-ratelimit-*`, RFC 3339 reset times) headers; `None` when there are none.
    pub fn from_headers(headers: &HeaderMap) -> Option<RateLimits> {
        Self::from_headers_at(headers, chrono::Utc::now())
    }

    fn from_headers_at(
        headers: &HeaderMap,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<RateLimits> {
        // Most answers carry none (a local model, a proxy): one pass over the names then,
        // instead of a dozen lookups that each parse and hash a name.
        let rate_limit_header = |name: &HeaderName| {
            let name = name.as_str();
            name.starts_with("x-ratelimit-") || name.starts_with("anthropic-ratelimit-")
        };
        if !headers.keys().any(rate_limit_header) {
            return None;
        }
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let count = |name: &str| get(name).and_then(|v| v.trim().parse::<u64>().ok());
        let openai = RateLimits {
            limit_requests: count("x-ratelimit-limit-requests"),
            remaining_requests: count("x-ratelimit-remaining-requests"),
            reset_requests: get("x-ratelimit-reset-requests").and_then(go_duration),
            limit_tokens: count("x-ratelimit-limit-tokens"),
            remaining_tokens: count("x-ratelimit-remaining-tokens"),
            reset_tokens: get("x-ratelimit-reset-tokens").and_then(go_duration),
        };
        let reset = |name: &str| get(name).and_then(|v| until(v, now));
        let anthropic = RateLimits {
            limit_requests: count("anthropic-ratelimit-requests-limit"),
            remaining_requests: count("anthropic-ratelimit-requests-remaining"),
            reset_requests: reset("anthropic-ratelimit-requests-reset"),
            limit_tokens: count("anthropic-ratelimit-tokens-limit"),
            remaining_tokens: count("anthropic-ratelimit-tokens-remaining"),
            reset_tokens: reset("anthropic-ratelimit-tokens-reset"),
        };
        let merged = RateLimits {
            limit_requests: openai.limit_requests.or(anthropic.limit_requests),
            remaining_requests: openai.remaining_requests.or(anthropic.remaining_requests),
            reset_requests: openai.reset_requests.or(anthropic.reset_requests),
            limit_tokens: openai.limit_tokens.or(anthropic.limit_tokens),
            remaining_tokens: openai.remaining_tokens.or(anthropic.remaining_tokens),
            reset_tokens: openai.reset_tokens.or(anthropic.reset_tokens),
        };
        (merged != RateLimits::default()).then_some(merged)
    }
}

/// Go-style durations as OpenAI sends them: `20ms`, `1s`, `6m0s`, `1h2m3.5s`.
fn go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" | "" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    provider_wait(total)
}

/// An RFC 3339 reset time as the time left until it (zero if already past).
fn until(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let at = chrono::DateTime::parse_from_rfc3339(v.trim()).ok()?;
    let left = (at.with_timezone(&chrono::Utc) - now)
        .to_std()
        .unwrap_or_default();
    Some(left.min(sluice_core::safety::MAX_PROVIDER_WAIT))
}

/// A provider-given wait in seconds as a duration no longer than `MAX_PROVIDER_WAIT`;
/// `None` for negative or non-finite values.
pub fn provider_wait(secs: f64) -> Option<Duration> {
    use sluice_core::safety::MAX_PROVIDER_WAIT;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(if secs >= MAX_PROVIDER_WAIT.as_secs_f64() {
        MAX_PROVIDER_WAIT
    } else {
        Duration::from_secs_f64(secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn openai_headers_with_go_durations() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-reset-requests", "120ms"),
            ("x-ratelimit-limit-tokens", "30000"),
            ("x-ratelimit-remaining-tokens", "-1"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        let r = RateLimits::from_headers(&h).unwrap();
        assert_eq!(r.limit_requests, Some(500));
        assert_eq!(r.remaining_requests, Some(499));
        assert_eq!(r.reset_requests, Some(Duration::from_millis(120)));
        assert_eq!(r.remaining_tokens, None, "Azure's -1 means unknown");
        assert_eq!(r.reset_tokens, Some(Duration::from_secs(360)));
        assert_eq!(
            go_duration("52m3.5s"),
            Some(Duration::from_secs_f64(3123.5))
        );
        // Longer than an hour is the provider's bytes talking: clamped.
        assert_eq!(
            go_duration("99999999999999h"),
            Some(sluice_core::safety::MAX_PROVIDER_WAIT)
        );
        assert_eq!(go_duration("soon"), None);
    }

    #[test]
    fn anthropic_headers_with_rfc3339_resets() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2026-01-01T00:00:30Z"),
            ("anthropic-ratelimit-tokens-remaining", "12000"),
        ]);
        let r = RateLimits::from_headers_at(&h, now).unwrap();
        assert_eq!(r.limit_requests, Some(50));
        assert_eq!(r.remaining_requests, Some(0));
        assert_eq!(r.reset_requests, Some(Duration::from_secs(30)));
        assert_eq!(r.remaining_tokens, Some(12000));
        assert!(RateLimits::from_headers(&HeaderMap::new()).is_none());
        let plain = headers(&[("content-type", "application/json"), ("x-request-id", "r")]);
        assert!(RateLimits::from_headers(&plain).is_none());
    }
}
