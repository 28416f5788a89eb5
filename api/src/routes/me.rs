//! `GET /v1/me`: who the presented key is — the master key or a virtual key (its id, name,
//! allowed models and limits, never the key). The console calls it at sign-in to check
//! the key and to know which pages to show; what a key may see is still decided by each
//! endpoint.

use axum::Json;
use serde_json::{json, Value};

use crate::auth::Caller;

pub async fn show(caller: Caller) -> Json<Value> {
    Json(json!({
        "object": "sluice.caller",
        "key": caller.owner,
        "master": caller.is_master(),
        "record": caller.key.as_deref(),
    }))
}
