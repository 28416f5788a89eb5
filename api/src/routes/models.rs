//! `GET /v1/models`: the model groups, in OpenAI's list shape.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::AppState;

pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let data: Vec<Value> = state
        .config
        .groups()
        .into_iter()
        .filter(|g| caller.may_use_model(g))
        .map(|g| json!({"id": g, "object": "model", "created": 0, "owned_by": "sluice"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
