//! What every API request goes through first: its request id (`x-request-id`, taken from
//! the caller when it is a sane token, else generated; echoed on the response and stored
//! with a job it submits), its trace span (continuing the caller's `traceparent`), the
//! request-duration histogram by route and status, and one access-log line (target
//! `sluice::access`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served by this task, if any.
pub fn request_id() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// A caller's request id is kept when it is 1 to 128 visible ASCII characters of a
/// token (letters, digits and `-_.:/+=`); anything else is replaced.
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    // Probes and scrapes are not traced (they would crowd out the jobs' traces).
    let probe = matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics");
    let span = if probe {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            target: sluice_core::telemetry::TARGET,
            "http request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            http.request.method = %method,
            http.route = %route,
            http.response.status_code = tracing::field::Empty,
            sluice.request_id = %id,
        )
    };
    let headers = req.headers();
    sluice_core::telemetry::continue_from(&span, &|k| headers.get(k).and_then(|v| v.to_str().ok()));
    let mut resp = CURRENT
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    let status = resp.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let elapsed = started.elapsed();
    crate::metrics::request(method.as_str(), &route, status, elapsed.as_secs_f64());
    // Inside the request's span: traced, the line carries its trace and span ids.
    span.in_scope(|| {
        tracing::info!(
            target: "sluice::access",
            method = %method,
            route = %route,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_id = %id,
            "request"
        )
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn request_ids_are_tokens() {
        assert!(acceptable("req-123_abc.def:ghi"));
        assert!(acceptable("6f1c0b5e-0c1a-4f6e-9d5a-3f2a1b0c9d8e"));
        assert!(!acceptable(""));
        assert!(!acceptable("has space"));
        assert!(!acceptable("line\nbreak"));
        assert!(!acceptable(&"x".repeat(129)));
        assert!(!acceptable("ünïcode"));
    }
}
