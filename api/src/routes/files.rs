//! `POST /v1/files` (multipart, `purpose=batch`), `GET /v1/files/{id}`,
//! `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}` — OpenAI's Files API, enough of
//! it for batches. Uploads are stored chunk by chunk as they arrive and downloads are
//! streamed the same way, so memory stays flat whatever the file's size. A caller sees only
//! its own files (404 otherwise).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_core::files::FileRow;
use sluice_schemas::batch::{FileDeleted, FileObject};
use uuid::Uuid;

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::AppState;

/// Purposes a caller may upload.
const UPLOAD_PURPOSES: [&str; 1] = ["batch"];

fn store_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "file storage failed");
    ApiError::unavailable("cannot store or read files right now")
}

pub fn file_object(row: &FileRow) -> FileObject {
    FileObject {
        id: row.id.clone(),
        object: "file".into(),
        bytes: row.bytes.max(0) as u64,
        created_at: row.created_at.timestamp(),
        filename: row.filename.clone(),
        purpose: row.purpose.clone(),
        status: "processed".into(),
        expires_at: None,
        status_details: None,
    }
}

pub async fn upload(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    mut multipart: Multipart,
) -> Result<(StatusCode, Json<FileObject>), ApiError> {
    let limits = &state.config.batches;
    let id = format!("file-{}", Uuid::now_v7().simple());
    let cleanup = crate::guard::UploadCleanup::new(state.store.clone(), id.clone());
    let mut purpose: Option<String> = None;
    let mut stored: Option<(String, sluice_core::files::FileWriter)> = None;
    let outcome: Result<(), ApiError> = async {
        while let Some(mut field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?
        {
            match field.name() {
                Some("purpose") => {
                    let text = crate::guard::small_field(
                        &mut field,
                        state.config.safety.max_form_field_bytes,
                        "purpose",
                    )
                    .await?;
                    purpose = Some(text.trim().to_string());
                }
                Some("file") => {
                    if stored.is_some() {
                        return Err(
                            ApiError::bad_request("only one `file` per upload").param("file")
                        );
                    }
                    let filename = field
                        .file_name()
                        .unwrap_or("upload.jsonl")
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(255)
                        .collect::<String>();
                    state
                        .store
                        .create_file(&id, &caller.owner, "batch", &filename)
                        .await
                        .map_err(store_error)?;
                    let mut writer = state.store.file_writer(&id);
                    while let Some(chunk) = field.chunk().await.map_err(|e| {
                        ApiError::bad_request(format!("upload interrupted: {e}")).param("file")
                    })? {
                        writer.write(&chunk).await.map_err(store_error)?;
                        if writer.bytes() > limits.max_file_bytes {
                            return Err(file_too_large(limits.max_file_bytes));
                        }
                        if writer.lines() > limits.max_lines {
                            return Err(too_many_lines(limits.max_lines));
                        }
                    }
                    stored = Some((filename, writer));
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    let fail = |e: ApiError| async {
        let _ = state.store.delete_file(&id).await;
        Err(e)
    };
    if let Err(e) = outcome {
        return fail(e).await;
    }
    let purpose = match purpose {
        Some(p) if UPLOAD_PURPOSES.contains(&p.as_str()) => p,
        Some(p) => {
            return fail(
                ApiError::bad_request(format!("purpose {p:?} is not supported; use \"batch\""))
                    .param("purpose"),
            )
            .await
        }
        None => {
            return fail(ApiError::bad_request("missing required field `purpose`").param("purpose"))
                .await
        }
    };
    let Some((_, writer)) = stored else {
        return fail(ApiError::bad_request("missing required field `file`").param("file")).await;
    };
    if let Err(e) = writer.finish(&purpose).await {
        return fail(store_error(e)).await;
    }
    cleanup.disarm();
    let row = load(&state, &caller, &id).await?;
    Ok((StatusCode::OK, Json(file_object(&row))))
}

fn file_too_large(limit: u64) -> ApiError {
    ApiError::too_large_file(format!("file is larger than the limit of {limit} bytes"))
}

fn too_many_lines(limit: u32) -> ApiError {
    ApiError::too_large_file(format!("file has more than the limit of {limit} lines"))
}

/// A file this caller may see.
pub async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<FileRow, ApiError> {
    let row = state.store.file(id).await.map_err(store_error)?;
    match row {
        Some(row) if caller.may_see(&row.owner) => Ok(row),
        _ => Err(ApiError::not_found(format!("no such file: {id}")).param("file_id")),
    }
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    let row = load(&state, &caller, &id).await?;
    Ok(Json(file_object(&row)))
}

/// Streams the body chunk by chunk.
pub async fn content(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = load(&state, &caller, &id).await?;
    let store = state.store.clone();
    let chunks = futures::stream::try_unfold(0i32, move |seq| {
        let store = store.clone();
        let id = row.id.clone();
        async move {
            match store.file_chunk(&id, seq).await {
                Ok(Some(data)) => Ok(Some((bytes::Bytes::from(data), seq + 1))),
                Ok(None) => Ok(None),
                Err(e) => {
                    tracing::error!(error = %e, "file read failed mid-stream");
                    Err(std::io::Error::other("file read failed"))
                }
            }
        }
    });
    let mut resp = Body::from_stream(chunks).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/jsonl"),
    );
    Ok(resp)
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FileDeleted>, ApiError> {
    let row = load(&state, &caller, &id).await?;
    if state
        .store
        .file_in_use(&row.id)
        .await
        .map_err(store_error)?
    {
        return Err(ApiError::conflict(format!(
            "file {id} is the input of a batch that has not finished"
        )));
    }
    let deleted = state
        .store
        .delete_file(&row.id)
        .await
        .map_err(store_error)?;
    Ok(Json(FileDeleted {
        id: row.id,
        object: "file".into(),
        deleted,
    }))
}
