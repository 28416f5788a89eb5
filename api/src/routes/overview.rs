//! `GET /v1/overview` (master key): what the console's overview page polls — each tier's
//! backlog, the workers heard from, and what they did (jobs/s, jobs finished, deferrals
//! by reason, from their heartbeats). Limits and cooldowns come from `GET /v1/limits`
//! (`routes/limits.rs`).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use sluice_schemas::ops::{TierQueue, WorkerSeen};

use crate::auth::Master;
use crate::errors::ApiError;
use crate::workers::Activity;
use crate::AppState;

#[derive(Debug, Serialize)]
pub struct Overview {
    object: &'static str,
    tiers: Vec<TierQueue>,
    workers: Vec<WorkerSeen>,
    #[serde(flatten)]
    activity: Activity,
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    _master: Master,
) -> Result<Json<Overview>, ApiError> {
    let tiers = sluice_core::queue::snapshot(&state.js, &state.subjects)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "queue snapshot failed");
            ApiError::unavailable("cannot read the queue right now")
        })?;
    sluice_core::queue::record(&tiers);
    Ok(Json(Overview {
        object: "sluice.overview",
        tiers,
        workers: state.workers.seen(),
        activity: state.workers.activity(),
    }))
}
