//! Submit-time guards against hostile input: fields Postgres cannot store, destinations
//! that point inward, and the `Idempotency-Key` header. Every refusal is a 400 naming the
//! field. The checks themselves live in `sluice_core::safety` and `sluice_core::pgtext`,
//! shared with the worker, which checks destinations again at delivery.
//!
//! Message content is not checked for U+0000: it travels to the worker in the job
//! envelope (NATS, or `job_bodies` as bytes) and is never stored as Postgres text, so
//! it reaches the provider exactly as sent.

use axum::http::HeaderMap;
use serde_json::{Map, Value};
use sluice_core::Config;

use crate::errors::ApiError;

/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// The job fields that end up in Postgres or leave Sluice, as submitted.
pub struct Destinations<'a> {
    pub metadata: Option<&'a Map<String, Value>>,
    pub idempotency_key: Option<&'a str>,
    pub reply_subject: Option<&'a str>,
    pub webhook_url: Option<&'a str>,
}

/// Checks what a submission stores and where it sends its result.
pub fn submission(config: &Config, d: &Destinations<'_>) -> Result<(), ApiError> {
    if let Some(meta) = d.metadata {
        for (k, v) in meta {
            let at = format!("metadata.{k}");
            let path = if k.contains('\0') {
                Some(at)
            } else {
                sluice_core::pgtext::nul_path(v, &at)
            };
            if let Some(path) = path {
                return Err(ApiError::bad_request(format!(
                    "`{path}` contains a NUL character (U+0000), which metadata cannot store"
                ))
                .param(path));
            }
        }
    }
    if let Some(k) = d.idempotency_key {
        if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY || k.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} characters, without NUL"
            ))
            .param("idempotency_key"));
        }
    }
    if let Some(subject) = d.reply_subject {
        sluice_core::safety::check_reply_subject(
            subject,
            &config.subject_prefix,
            config.safety.reply_subject_prefixes.as_deref(),
        )
        .map_err(|m| ApiError::bad_request(m).param("reply_subject"))?;
    }
    if let Some(url) = d.webhook_url {
        sluice_core::safety::check_webhook_url(url, &config.safety)
            .map_err(|e| ApiError::bad_request(e.to_string()).param("webhook_url"))?;
    }
    Ok(())
}

/// The `Idempotency-Key` header, if sent.
pub fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str().map(str::to_string).map_err(|_| {
                ApiError::bad_request("Idempotency-Key must be visible ASCII")
                    .param("Idempotency-Key")
            })
        })
        .transpose()
}

/// Reads a non-file multipart field as text, refusing it past `max` bytes (the upload
/// route has no body limit of its own: the file part is bounded by the file limits).
pub async fn small_field(
    field: &mut axum::extract::multipart::Field<'_>,
    max: usize,
    name: &str,
) -> Result<String, ApiError> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| ApiError::bad_request(format!("invalid `{name}`: {e}")).param(name))?
    {
        if buf.len() + chunk.len() > max {
            return Err(ApiError::bad_request(format!(
                "`{name}` is longer than the limit of {max} bytes"
            ))
            .param(name));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::bad_request(format!("`{name}` must be UTF-8 text")).param(name))
}

/// Deletes a file whose upload did not finish, also when the client goes away mid-upload
/// (the handler is then dropped, not returned from).
pub struct UploadCleanup {
    store: sluice_core::Store,
    id: String,
    armed: bool,
}

impl UploadCleanup {
    pub fn new(store: sluice_core::Store, id: String) -> Self {
        UploadCleanup {
            store,
            id,
            armed: true,
        }
    }

    /// The upload finished: keep the file.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for UploadCleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, id) = (self.store.clone(), std::mem::take(&mut self.id));
        // One bounded statement; it must outlive the dropped request to run at all.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.delete_file(&id).await {
                    tracing::warn!(error = %e, file_id = %id, "unfinished upload not removed");
                }
            });
        }
    }
}
