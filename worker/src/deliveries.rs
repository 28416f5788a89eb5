//! Durable deliveries of a job's end: its webhook POST and its reply-subject message.
//!
//! They are recorded with the job's result, in the same transaction (`job_deliveries`,
//! see `Store::write_ledger`), so the worker that ran the job may die at any point after
//! and they still go out. Every worker works them off: it claims due rows with a lease
//! (a worker that dies mid-try leaves its claim to another once the lease passes), tries
//! each once, and records the outcome; a failed try is due again after
//! `retry::delivery_delay`, until `MAX_TRIES`. The webhook's outcome is on the job
//! (`webhook_status`, `webhook_attempts`).
//!
//! Deliveries are at least once: a worker that dies after a receiver answered and before
//! the outcome is recorded makes the receiver see the end twice (`Sluice-Job-Id` tells).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_core::safety::DestinationError;
use sluice_core::store::{DeliveryRow, NewDelivery};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::Ctx;

/// Tries per delivery before it is given up (about an hour and a half of retries).
pub const MAX_TRIES: i32 = 20;
/// How long a claimed try may take before another worker may take it over.
const CLAIM: Duration = Duration::from_secs(60);
/// The most tries one worker runs at once.
const BATCH: i64 = 32;
/// How often due rows are looked for when nobody rings.
const POLL: Duration = Duration::from_secs(1);

/// The deliveries of a job's end, as recorded with its result.
pub fn for_job(
    id: Uuid,
    reply_subject: Option<&str>,
    webhook_url: Option<&str>,
    body: &[u8],
) -> Vec<NewDelivery> {
    let body = String::from_utf8_lossy(body).into_owned();
    let mut out = Vec::new();
    if let Some(subject) = reply_subject {
        out.push(NewDelivery {
            job_id: id,
            kind: "reply".into(),
            target: subject.to_string(),
            body: body.clone(),
        });
    }
    if let Some(url) = webhook_url {
        out.push(NewDelivery {
            job_id: id,
            kind: "webhook".into(),
            target: url.to_string(),
            body,
        });
    }
    out
}

/// Works off due deliveries until `stop`; `bell` wakes it when a job ended here.
pub(crate) async fn run(ctx: std::sync::Weak<Ctx>, bell: Arc<Notify>, stop: CancellationToken) {
    let tries = TaskTracker::new();
    loop {
        tokio::select! {
            _ = bell.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.cancelled() => break,
        }
        let Some(ctx) = ctx.upgrade() else { break };
        let claimed = match ctx.store.claim_deliveries(BATCH, CLAIM).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim deliveries; retrying");
                continue;
            }
        };
        for row in claimed {
            let ctx = Arc::clone(&ctx);
            tries.spawn(async move { attempt(&ctx, row).await });
        }
        drop(ctx);
        // One round of tries at a time: bounded, and each row is claimed by one worker.
        tries.close();
        tries.wait().await;
        tries.reopen();
    }
    tries.close();
    tries.wait().await;
}

/// One try of one delivery, and its outcome recorded.
async fn attempt(ctx: &Ctx, row: DeliveryRow) {
    let body = Bytes::from(row.body.clone().into_bytes());
    let mut refused = false;
    let outcome = match row.kind.as_str() {
        "webhook" => {
            let secret = ctx
                .config
                .webhook_secret
                .as_ref()
                .map(|server| sluice_core::keys::webhook_secret(server, &row.owner));
            // Resolved and checked again at every try, connected to the vetted
            // addresses only, no redirects (`destinations.rs`); refused: no more tries.
            match crate::destinations::vetted_client(
                &row.target,
                &ctx.config.safety,
                crate::webhook::TIMEOUT,
            )
            .await
            {
                Ok(http) => {
                    crate::webhook::try_once(
                        &http,
                        &row.target,
                        body,
                        secret.as_ref(),
                        &row.job_id.to_string(),
                    )
                    .await
                }
                Err(e @ DestinationError::Host(_)) => Err(e.to_string()),
                Err(e) => {
                    refused = true;
                    Err(e.to_string())
                }
            }
        }
        "reply" => {
            async {
                crate::destinations::reply_subject(
                    Some(&row.target),
                    &ctx.config.subject_prefix,
                    &ctx.config.safety,
                )
                .ok_or_else(|| {
                    refused = true;
                    "the reply subject points inward".to_string()
                })?;
                // Larger than a message may be: by reference (see `sluice_core::bodies`).
                let max_payload = ctx.nats.server_info().max_payload;
                let (headers, body) = crate::events::reply_message(row.job_id, body, max_payload);
                ctx.nats
                    .publish_with_headers(row.target.clone(), headers, body)
                    .await
                    .map_err(|e| e.to_string())?;
                ctx.nats.flush().await.map_err(|e| e.to_string())
            }
            .await
        }
        other => Err(format!("unknown delivery kind {other:?}")),
    };
    let retry = match &outcome {
        Ok(()) => None,
        Err(_) if refused => None,
        Err(_) if row.attempts >= MAX_TRIES => None,
        Err(_) => Some(crate::retry::delivery_delay(row.attempts.max(1) as u32 - 1)),
    };
    match &outcome {
        Ok(()) => {
            tracing::debug!(job_id = %row.job_id, kind = %row.kind, tries = row.attempts, "delivered")
        }
        Err(e) if retry.is_some() => {
            tracing::info!(job_id = %row.job_id, kind = %row.kind, tries = row.attempts, error = %e, "delivery failed; will retry")
        }
        Err(e) => {
            tracing::warn!(job_id = %row.job_id, kind = %row.kind, tries = row.attempts, error = %e, "delivery given up")
        }
    }
    if let Err(e) = ctx.store.delivery_tried(&row, outcome, retry).await {
        // The claim lapses and another try follows: at least once.
        tracing::warn!(job_id = %row.job_id, error = %e, "delivery outcome not recorded");
    }
}
