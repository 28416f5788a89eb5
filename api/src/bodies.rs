//! Job envelopes too large for one NATS message travel by reference (see
//! `sluice_core::bodies`): kept in Postgres, published as an empty message naming the job.

use bytes::Bytes;
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
    let max_payload = state.nats.server_info().max_payload;
    sluice_core::bodies::job_message(&state.store, max_payload, id, payload).await
}
