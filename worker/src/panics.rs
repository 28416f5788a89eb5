//! A job task that panics anyway (a bug, or provider bytes no guard foresaw) ends its job,
//! not the worker: the job is recorded `failed` with class `internal`, its in-flight entry
//! and slot are released (the slot by the spawning task, which lives on), its terminal
//! event is published and its message acked. A reservation it held in Redis (rate, token
//! and concurrency leases) is released as the unwinding drops it (`limits::Held`).
//!
//! Owns only the catching and the ending; the pipeline is `job.rs`'s.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::FutureExt;
use sluice_schemas::job::JobError;
use sluice_schemas::{ErrorClass, JobEnvelope, Tier};

use crate::Ctx;

/// Runs `job::handle` for `msg`, ending the job `failed` if it panics.
pub(crate) async fn guarded(ctx: Arc<Ctx>, msg: jetstream::Message, tier: Tier) {
    // Without the payload: thousands of jobs wait at once, and a payload kept here would
    // keep the NATS read buffer it was cut from alive for the whole job
    // (`worker/src/job/mod.rs` drops the job's own copy once parsed). The message is still
    // in its stream when a job panics (it is acked last), so it is read back from there.
    let mut copy = msg.clone();
    copy.message.payload = Bytes::new();
    let run = AssertUnwindSafe(Box::pin(crate::job::handle(Arc::clone(&ctx), msg, tier)));
    let Err(panic) = run.catch_unwind().await else {
        return;
    };
    let what = message(&*panic);
    tracing::error!(panic = %what, "job task panicked; ending the job failed");
    crate::metrics::panicked();
    Box::pin(end_failed(&ctx, copy, tier, &what)).await;
}

/// Debug builds only (the end-to-end tests): a call whose request names the user
/// `sluice-debug-panic` panics in its job task, after admission (a concurrency lease is
/// held), so the path above is exercised for real. Release builds have no such switch.
#[cfg(debug_assertions)]
#[allow(clippy::panic)]
pub(crate) fn debug_panic(request: &sluice_schemas::openai::ChatRequest) {
    if request.user.as_deref() == Some("sluice-debug-panic") {
        panic!("debug panic requested by the job's request");
    }
}

#[cfg(not(debug_assertions))]
pub(crate) fn debug_panic(_: &sluice_schemas::openai::ChatRequest) {}

fn message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

async fn end_failed(ctx: &Ctx, mut msg: jetstream::Message, tier: Tier, what: &str) {
    match stored_payload(ctx, &msg).await {
        Ok(payload) => msg.message.payload = payload,
        Err(e) => {
            // Acked already, or the stream is unreachable: a redelivery (if any) ends it.
            tracing::warn!(error = %e, "cannot read back the message of a panicked job");
            return;
        }
    }
    let payload = match crate::bodies::envelope(ctx, &msg).await {
        crate::bodies::Resolved::Body(b) => b,
        _ => return,
    };
    let Ok(envelope) = serde_json::from_slice::<JobEnvelope>(&payload) else {
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    };
    let id = envelope.id;
    ctx.release(id);
    let attempts = ctx
        .store
        .job_progress(id)
        .await
        .map(|p| p.calls)
        .unwrap_or(0);
    let error = JobError {
        class: ErrorClass::Internal,
        message: format!("the worker failed on this job: {what}")
            .chars()
            .take(2048)
            .collect(),
    };
    crate::job::end_failed(ctx, msg, &envelope, tier, attempts, error).await;
}

/// The payload of `msg` as its stream still holds it (by the stream sequence in its reply
/// subject).
async fn stored_payload(ctx: &Ctx, msg: &jetstream::Message) -> Result<Bytes, async_nats::Error> {
    let info = msg.info()?;
    let stream = ctx.js.get_stream(info.stream).await?;
    Ok(stream.get_raw_message(info.stream_sequence).await?.payload)
}
