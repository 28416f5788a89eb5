//! Job envelopes that travel by reference (`sluice_core::bodies`): a message with the
//! `Sluice-Body-Ref` header has an empty body; the envelope is in Postgres.
//!
//! Owns resolving a message to its envelope bytes; parsing stays in `job.rs`.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use sluice_core::bodies::HEADER_BODY_REF;
use uuid::Uuid;

use crate::Ctx;

/// What a job message's envelope turned out to be.
pub(crate) enum Resolved {
    /// The envelope bytes, from the message or from Postgres.
    Body(Bytes),
    /// The reference points nowhere and the job has not ended: dead-letter it.
    Missing(String),
    /// Already answered (acked or naked here); nothing more to do.
    Handled,
}

/// The envelope bytes of `msg`.
pub(crate) async fn envelope(ctx: &Ctx, msg: &jetstream::Message) -> Resolved {
    let Some(reference) = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_BODY_REF))
        .map(|v| v.as_str().to_string())
    else {
        return Resolved::Body(msg.payload.clone());
    };
    let Ok(id) = Uuid::parse_str(&reference) else {
        return Resolved::Missing(format!("{HEADER_BODY_REF} {reference:?} is not a job id"));
    };
    match ctx.store.job_body(id).await {
        Ok(Some(body)) => Resolved::Body(Bytes::from(body)),
        Ok(None) => match ctx.store.job_progress(id).await {
            // The body is dropped once the job ends: a late redelivery has nothing to do.
            Ok(p) if p.terminal => {
                let _ = msg.ack().await;
                Resolved::Handled
            }
            Ok(_) => Resolved::Missing(format!("the body of job {id} is not on record")),
            Err(e) => retry_later(msg, &e).await,
        },
        Err(e) => retry_later(msg, &e).await,
    }
}

async fn retry_later(msg: &jetstream::Message, e: &sluice_core::store::StoreError) -> Resolved {
    tracing::warn!(error = %e, "cannot read a job body kept by reference; retrying");
    let _ = msg
        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
        .await;
    Resolved::Handled
}
