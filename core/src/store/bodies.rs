//! Messages larger than the NATS server accepts travel by reference.
//!
//! The server's `max_payload` (read from its INFO, never assumed: 1 MiB by default) is far
//! below the api's `max_body_bytes`, so a job envelope, batch line, result or terminal
//! event may not fit in one message. Such a body is kept in Postgres (`job_bodies`, or the
//! job row for results) and the message carries the header [`HEADER_BODY_REF`] instead:
//!
//! - on a job envelope (`<prefix>.jobs.<tier>`): the body is empty and the envelope is
//!   `job_bodies.body` of the job id the header names;
//! - on a terminal event (`<prefix>.events.<id>`, and a reply subject): the body is the
//!   event without its `result`, and the whole event is the job's row
//!   (`GET /v1/jobs/{id}`).

use uuid::Uuid;

use super::{Store, StoreError};

/// Names the job whose body is kept in Postgres.
pub const HEADER_BODY_REF: &str = "Sluice-Body-Ref";

/// Room left for headers and the protocol line under `max_payload`.
const HEADROOM: usize = 4096;

/// Whether a body of `len` bytes fits in one message of a server with `max_payload`.
pub fn fits(len: usize, max_payload: usize) -> bool {
    len.saturating_add(HEADROOM) <= max_payload
}

/// The headers and body to publish for job `id`'s envelope `payload` on a server with
/// `max_payload`: as is when it fits, else by reference (the envelope stored first).
pub async fn job_message(
    store: &Store,
    max_payload: usize,
    id: Uuid,
    payload: Vec<u8>,
) -> Result<(async_nats::HeaderMap, bytes::Bytes), StoreError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    // The submitting request's trace, continued by the worker (see `telemetry.rs`).
    crate::telemetry::inject_nats(&mut headers);
    if fits(payload.len(), max_payload) {
        return Ok((headers, payload.into()));
    }
    store.put_job_body(id, &payload).await?;
    headers.insert(HEADER_BODY_REF, id.to_string().as_str());
    Ok((headers, bytes::Bytes::new()))
}

impl Store {
    /// Keeps a job envelope that is too large for a message.
    pub async fn put_job_body(&self, id: Uuid, body: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO job_bodies (job_id, body) VALUES ($1, $2)
             ON CONFLICT (job_id) DO UPDATE SET body = EXCLUDED.body",
        )
        .bind(id)
        .bind(body)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A job envelope kept by reference.
    pub async fn job_body(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT body FROM job_bodies WHERE job_id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_is_kept_below_max_payload() {
        assert!(fits(10, 1024 * 1024));
        assert!(!fits(1024 * 1024, 1024 * 1024));
        assert!(!fits(usize::MAX, 1024 * 1024));
    }
}
