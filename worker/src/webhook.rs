//! Webhooks: the terminal result POSTed to a job's `webhook_url`, signed, retried.
//!
//! The body is the job's `done`/`error` event. `Sluice-Signature: t=<unix seconds>,
//! v1=<hex HMAC-SHA256 of "<t>.<body>" with the webhook secret>` lets the receiver check
//! both origin and freshness. Delivery runs after the job is recorded and acked, so a
//! slow receiver never holds a worker slot; `deliveries.rs` retries it durably with
//! backoff (`retry.rs`, `delivery_delay`) and its outcome is written on the job
//! (`webhook_status`, `webhook_attempts`).

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_core::Secret;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// `t=<unix>,v1=<hex>` for `body` at time `t`.
#[allow(
    clippy::expect_used,
    reason = "HMAC takes keys of any length (RFC 2104)"
)]
pub fn signature(secret: &Secret, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// One POST of `body` to `url`: `Ok` on a 2xx answer, else what went wrong. Retries
/// are the caller's (`worker/src/deliveries.rs` keeps them durable).
pub async fn try_once(
    http: &reqwest::Client,
    url: &str,
    body: Bytes,
    secret: Option<&Secret>,
    job_id: &str,
) -> Result<(), String> {
    let mut req = http
        .post(url)
        .timeout(TIMEOUT)
        .header("content-type", "application/json")
        .header("Sluice-Job-Id", job_id);
    if let Some(secret) = secret {
        req = req.header(
            "Sluice-Signature",
            signature(secret, chrono::Utc::now().timestamp(), &body),
        );
    }
    match req.body(body).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("the receiver answered {}", r.status().as_u16())),
        Err(e) => Err(format!("the receiver is unreachable: {}", e.without_url())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Known answer: HMAC-SHA256("secret", "1700000000.{}").
        let s = signature(&Secret::new("secret"), 1_700_000_000, b"{}");
        assert!(s.starts_with("t=1700000000,v1="));
        assert_eq!(s.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(s, signature(&Secret::new("secret2"), 1_700_000_000, b"{}"));
        assert_ne!(s, signature(&Secret::new("secret"), 1_700_000_001, b"{}"));
    }
}
