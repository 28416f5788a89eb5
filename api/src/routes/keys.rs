//! `POST /v1/keys`, `GET /v1/keys`, `DELETE /v1/keys/{id}` (master key only).
//!
//! Creating a key answers with the key itself, and the secret that signs its jobs'
//! webhooks, once; afterwards only its id and a hint
//! (`sk-…abcd`) are ever shown. Deleting revokes it (the row stays so its jobs and spend
//! keep a known owner).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use sluice_core::keys::{self, KeyRecord, KeySettings};

use crate::auth::Master;
use crate::errors::ApiError;
use crate::AppState;

/// The answer to a create: the record plus the key, shown this once.
#[derive(Serialize)]
struct Created {
    object: &'static str,
    key: String,
    /// Signs the webhooks of this key's jobs (when the server has a webhook secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_secret: Option<String>,
    #[serde(flatten)]
    record: KeyRecord,
}

const MAX_MODELS: usize = 256;

pub async fn create(
    State(state): State<Arc<AppState>>,
    _master: Master,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let settings: KeySettings = if body.iter().all(u8::is_ascii_whitespace) {
        KeySettings::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid key settings: {e}")))?
    };
    validate(&state, &settings)?;
    let (id, key) = keys::generate();
    let record = state
        .store
        .create_api_key(&id, &key, &settings)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot create API key");
            ApiError::unavailable("cannot create keys right now")
        })?;
    state.keys.forget_hash(&keys::hash_key(key.expose()));
    tracing::info!(key_id = %record.id, "API key created");
    let webhook_secret = state.config.webhook_secret.as_ref().map(|server| {
        keys::webhook_secret(server, &record.id)
            .expose()
            .to_string()
    });
    let created = Created {
        object: "sluice.key",
        key: key.expose().to_string(),
        webhook_secret,
        record,
    };
    let body = serde_json::to_value(created).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(body)))
}

fn validate(state: &AppState, s: &KeySettings) -> Result<(), ApiError> {
    if s.models.len() > MAX_MODELS {
        return Err(
            ApiError::bad_request(format!("at most {MAX_MODELS} models per key")).param("models"),
        );
    }
    for m in &s.models {
        if !state.config.has_group(m) {
            return Err(
                ApiError::bad_request(format!("model group {m:?} does not exist")).param("models"),
            );
        }
    }
    for (name, v) in [
        ("rpm_limit", s.rpm_limit),
        ("tpm_limit", s.tpm_limit),
        ("max_parallel_requests", s.max_parallel_requests),
    ] {
        if v.is_some_and(|v| v < 0) {
            return Err(ApiError::bad_request(format!("`{name}` cannot be negative")).param(name));
        }
    }
    if s.max_budget.is_some_and(|b| b.is_sign_negative()) {
        return Err(ApiError::bad_request("`max_budget` cannot be negative").param("max_budget"));
    }
    if let Some(d) = &s.budget_duration {
        if !keys::valid_budget_duration(d) {
            return Err(ApiError::bad_request(format!(
                "`budget_duration` {d:?} is not like 30s, 30m, 24h or 30d"
            ))
            .param("budget_duration"));
        }
    }
    if s.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request("`metadata` must be an object").param("metadata"));
    }
    Ok(())
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    _master: Master,
) -> Result<Json<Value>, ApiError> {
    let data = state.store.api_keys().await.map_err(|e| {
        tracing::error!(error = %e, "cannot list API keys");
        ApiError::unavailable("cannot list keys right now")
    })?;
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    _master: Master,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let revoked = state.store.revoke_api_key(&id).await.map_err(|e| {
        tracing::error!(error = %e, "cannot revoke API key");
        ApiError::unavailable("cannot delete keys right now")
    })?;
    state.keys.forget(&id);
    if !revoked {
        return Err(ApiError::not_found(format!("no key {id:?}")).param("id"));
    }
    // Its queued jobs end now (`failed`, class `auth`); a worker that takes one of their
    // messages publishes that end to its subscribers and never calls it.
    match state.store.end_jobs_of_revoked_key(&id).await {
        Ok(ended) => {
            tracing::info!(key_id = %id, queued_jobs_ended = ended.len(), "API key revoked")
        }
        Err(e) => {
            tracing::error!(key_id = %id, error = %e, "API key revoked; its queued jobs are ended by the workers");
        }
    }
    Ok(Json(
        json!({"id": id, "object": "sluice.key", "deleted": true}),
    ))
}
