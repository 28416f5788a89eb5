//! Job envelopes too large for one NATS message travel by reference (see
//! `sluice_core::bodies`): kept in Postgres, published as an empty message naming the job.

use bytes::Bytes;
use sluice_core::bodies::{fits, HEADER_BODY_REF};
use sluice_core::store::StoreError;
use uuid::Uuid;

use crate::AppState;

/// The headers and body to publish for job `id`'s envelope `payload`: as is when it fits
/// the server's `max_payload`, else by reference (the envelope stored first).
pub async fn job_message(
    state: &AppState,
    id: Uuid,
    payload: Vec<u8>,
) -> Result<(async_nats::HeaderMap, Bytes), StoreError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    if fits(payload.len(), state.nats.server_info().max_payload) {
        return Ok((headers, payload.into()));
    }
    state.store.put_job_body(id, &payload).await?;
    headers.insert(HEADER_BODY_REF, id.to_string().as_str());
    Ok((headers, Bytes::new()))
}
