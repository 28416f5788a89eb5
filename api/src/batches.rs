//! The batch driver: turns an uploaded JSONL file into jobs and the jobs' results into
//! OpenAI output and error files (shapes in `schemas/src/batch.rs`).
//!
//! Each API instance runs one [`run`] task. It takes the lease of active batches nobody
//! drives (a new batch, or one whose driver died) and drives each through:
//!
//! 1. **validating** — one streaming pass over the file. Structural problems (a line that
//!    is not JSON, a missing or duplicate `custom_id`, a wrong `method`/`url`, too many
//!    lines) fail the whole batch with `errors`, before anything is submitted.
//! 2. **in_progress** — a second pass turns each request line into a job, a chunk at a
//!    time: the job rows are recorded, then the envelopes published with
//!    `Nats-Msg-Id` = the line's deterministic job id, then the cursor (`ingested`) moves.
//!    A line whose request the API would refuse (unknown model, bad parameters) becomes a
//!    `failed` job at once, for the error file. Publishing is paced (`publish_rate`) and
//!    pauses while `max_queued` of the batch's lines wait in the queue.
//! 3. Progress is read from the jobs table (the source of truth, restart-safe; events
//!    age out and are delivered at least once) every `poll`.
//! 4. **finalizing** — when no line is queued or running, the output and error files
//!    are written from the job rows, in line order, keyed by `custom_id`.
//!
//! Cancel (`cancelling`) and expiry end the queued lines (deferred ones included) as
//! `cancelled`/`expired`, delete their messages from the jobs stream, record the lines
//! not yet ingested the same way, and let running lines finish.
//!
//! Restarts: everything lives in Postgres. A new driver resumes from the cursor; lines of
//! the chunk in doubt are re-recorded (`ON CONFLICT DO NOTHING`) and re-published only if
//! their job is still unpublished, under the same `Nats-Msg-Id`, which JetStream drops
//! within its duplicate window. This module does not touch the worker: batch lines are
//! ordinary jobs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sluice_core::batches::{line_job_id, BatchJob, BatchRow, Ending, LineResult};
use sluice_core::files::LineError;
use sluice_core::keys::KeyRecord;
use sluice_schemas::batch::{
    BatchErrorItem, BatchLineError, BatchOutputLine, BatchResponse, BatchStatus, CODE_CANCELLED,
    CODE_EXPIRED,
};
use sluice_schemas::embeddings::EmbeddingsRequest;
use sluice_schemas::openai::ChatRequest;
use sluice_schemas::{ErrorClass, JobEnvelope, JobStatus, Tier, MASTER_OWNER};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::AppState;

/// Lines recorded and published together.
pub(crate) const CHUNK_LINES: usize = 256;
/// File-level errors reported at most.
const MAX_ERRORS: usize = 100;
/// Output lines read from Postgres per query while finalizing.
const RESULT_PAGE: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Store(#[from] sluice_core::store::StoreError),
    #[error("cannot read the input file: {0}")]
    Read(String),
    #[error("cannot publish to the jobs stream: {0}")]
    Publish(String),
    #[error("the lease of the batch was lost")]
    LeaseLost,
    #[error("shutting down")]
    Stopped,
}

/// Drives batches until `stop` is cancelled; `wake` makes it look for new ones at once.
pub async fn run(state: Arc<AppState>, wake: Arc<Notify>, stop: CancellationToken) {
    let holder = format!("api-{}", Uuid::now_v7());
    let settings = state.config.batches.clone();
    let mut driving: JoinSet<String> = JoinSet::new();
    // The batch each driver task drives, so a task that panics frees only its own.
    let mut active: HashMap<tokio::task::Id, String> = HashMap::new();
    loop {
        let room = settings.concurrent.saturating_sub(active.len());
        if room > 0 {
            let skip: Vec<String> = active.values().cloned().collect();
            match state
                .store
                .claim_batches(&holder, settings.lease, &skip, room as i64)
                .await
            {
                Ok(ids) => {
                    for id in ids {
                        let task = driving.spawn(drive(
                            Arc::clone(&state),
                            holder.clone(),
                            id.clone(),
                            stop.clone(),
                        ));
                        active.insert(task.id(), id);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot look for batches to drive"),
            }
        }
        tokio::select! {
            Some(done) = driving.join_next_with_id() => {
                let task = match &done {
                    Ok((task, _)) => *task,
                    Err(e) => e.id(),
                };
                if let (Some(id), Err(e)) = (active.remove(&task), &done) {
                    // Only this batch loses its driver; its lease is given up so it is
                    // driven again soon, here or elsewhere.
                    tracing::error!(batch_id = %id, error = %e, "batch driver panicked");
                    if let Err(e) = state.store.release_batch(&id, &holder).await {
                        tracing::warn!(batch_id = %id, error = %e, "cannot release batch lease");
                    }
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(settings.poll) => {}
            _ = stop.cancelled() => break,
        }
    }
    while driving.join_next().await.is_some() {}
}

/// Drives one batch while this instance holds its lease; gives the lease up at the end.
async fn drive(
    state: Arc<AppState>,
    holder: String,
    id: String,
    stop: CancellationToken,
) -> String {
    let mut driver = Driver {
        state: Arc::clone(&state),
        holder: holder.clone(),
        id: id.clone(),
        stop,
        owner_key: None,
        owner_revoked: false,
    };
    match driver.drive().await {
        Ok(()) | Err(DriveError::Stopped) | Err(DriveError::LeaseLost) => {}
        Err(e) => tracing::warn!(batch_id = %id, error = %e, "batch driver stopped; will retry"),
    }
    if let Err(e) = state.store.release_batch(&id, &holder).await {
        tracing::warn!(batch_id = %id, error = %e, "cannot release batch lease");
    }
    id
}

/// What happens to lines from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Publish,
    /// Lines end as `cancelled` or `expired` without running.
    End(Ending),
}

/// One request line, checked.
/// The tags a batch line asked for: its body's `tags` (a chat line's, or an embeddings
/// line's) and `metadata.tags`, each once.
fn line_tags(submit: &crate::submit::SubmitBody) -> Vec<String> {
    let own = match &submit.embeddings {
        Some(e) => e.extra.get("tags"),
        None => submit.request.extra.get("tags"),
    };
    let mut tags: Vec<String> = Vec::new();
    for t in [own, submit.metadata.as_ref().and_then(|m| m.get("tags"))]
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
    {
        if !tags.iter().any(|have| have == t) {
            tags.push(t.to_string());
        }
    }
    tags
}

pub(crate) enum Checked {
    Job {
        custom_id: String,
        request: Box<ChatRequest>,
        /// An embeddings line's request (`request` then only names the group).
        embeddings: Option<Box<EmbeddingsRequest>>,
        /// The tags the line asked for (`body.tags`, `body.metadata.tags`), for tag
        /// routing: live lines carry them in their envelope's `metadata.tags`, native
        /// lines are placed by them.
        tags: Vec<String>,
    },
    /// The request would be refused: the line becomes a failed job.
    Refused {
        custom_id: String,
        /// The line's `body.model`, when it has one.
        model: String,
        class: ErrorClass,
        message: String,
    },
}

pub(crate) struct Driver {
    pub(crate) state: Arc<AppState>,
    pub(crate) holder: String,
    pub(crate) id: String,
    pub(crate) stop: CancellationToken,
    /// The batch owner's virtual key (`None`: the master key), for model permissions.
    owner_key: Option<Option<Arc<KeyRecord>>>,
    /// The batch owner is a key that was revoked: its lines are refused, never run as
    /// the master key's.
    owner_revoked: bool,
}

impl Driver {
    pub(crate) fn settings(&self) -> &sluice_core::batch_settings::BatchSettings {
        &self.state.config.batches
    }

    pub(crate) async fn renew(&self) -> Result<BatchRow, DriveError> {
        if self.stop.is_cancelled() {
            return Err(DriveError::Stopped);
        }
        self.state
            .store
            .renew_batch(&self.id, &self.holder, self.settings().lease)
            .await?
            .ok_or(DriveError::LeaseLost)
    }

    async fn drive(&mut self) -> Result<(), DriveError> {
        let mut row = self.renew().await?;
        self.owner_key = Some(if row.owner == MASTER_OWNER {
            None
        } else {
            let key = self.state.store.api_key(&row.owner).await?.map(Arc::new);
            self.owner_revoked = key.is_none();
            key
        });
        if row.total == 0 {
            match self.validate(&row).await? {
                Ok(total) => {
                    if !self
                        .state
                        .store
                        .batch_validated(&self.id, &self.holder, total)
                        .await?
                    {
                        return Err(DriveError::LeaseLost);
                    }
                    tracing::info!(batch_id = %self.id, lines = total, "batch validated");
                }
                Err(errors) => {
                    let errors = json!({"object": "list", "data": errors});
                    self.state
                        .store
                        .batch_failed(&self.id, &self.holder, &errors)
                        .await?;
                    tracing::info!(batch_id = %self.id, "batch failed validation");
                    return Ok(());
                }
            }
            row = self.renew().await?;
        }
        let mode = match crate::native::drive(self, &row).await? {
            // Native mode followed its upstream batches and live lines to the end.
            Some(mode) => mode,
            None => {
                let mut mode = self.mode_for(&row);
                if let Mode::End(ending) = mode {
                    self.end_queued(ending).await?;
                }
                if row.status != BatchStatus::Finalizing {
                    mode = self.ingest(&row, mode).await?;
                    mode = self.wait(mode).await?;
                }
                mode
            }
        };
        let ending = match mode {
            Mode::Publish => {
                self.state
                    .store
                    .batch_finalizing(&self.id, &self.holder)
                    .await?;
                Ending::Completed
            }
            Mode::End(e) => e,
        };
        self.finalize(&row, ending).await
    }

    fn mode_for(&self, row: &BatchRow) -> Mode {
        if row.status == BatchStatus::Cancelling {
            Mode::End(Ending::Cancelled)
        } else if Utc::now() >= row.expires_at && row.status == BatchStatus::InProgress {
            Mode::End(Ending::Expired)
        } else {
            Mode::Publish
        }
    }

    /// Re-reads the batch; switches to ending lines when it was cancelled or expired.
    async fn check(&self, mode: Mode) -> Result<Mode, DriveError> {
        let row = self.renew().await?;
        let now = self.mode_for(&row);
        if mode == Mode::Publish && now != Mode::Publish {
            if let Mode::End(ending) = now {
                tracing::info!(batch_id = %self.id, status = %ending.status(), "batch ending early");
                self.end_queued(ending).await?;
            }
            return Ok(now);
        }
        Ok(mode)
    }

    /// Ends the queued lines (deferred ones too) and takes their messages back from the
    /// jobs stream; running lines finish.
    ///
    /// The job row decides which is which. A worker starts a line only by claiming its row
    /// in the attempt-started write, which refuses a row already ended, and this ends only
    /// rows still `queued`; Postgres orders the two. So a line either ends here or runs
    /// there, never both, whatever the consumer has delivered. Deleting the messages only
    /// spares workers the deliveries they would refuse.
    pub(crate) async fn end_queued(&self, ending: Ending) -> Result<(), DriveError> {
        let seqs = self
            .state
            .store
            .end_queued_lines(&self.id, ending.line_status())
            .await?;
        let published: Vec<u64> = seqs.iter().flatten().map(|s| *s as u64).collect();
        if !published.is_empty() {
            let stream = self
                .state
                .js
                .get_stream(self.state.subjects.jobs_stream())
                .await
                .map_err(|e| DriveError::Publish(e.to_string()))?;
            for seq in &published {
                // Gone already: acked by a worker that refused it, or deleted by an
                // earlier driver.
                let _ = stream.delete_message(*seq).await;
            }
        }
        tracing::info!(batch_id = %self.id, ended = seqs.len(), taken_back = published.len(), "queued lines ended");
        Ok(())
    }

    /// Pass 1: checks every line. `Err` holds the file-level errors.
    async fn validate(
        &self,
        row: &BatchRow,
    ) -> Result<Result<u32, Vec<BatchErrorItem>>, DriveError> {
        let max_lines = self.settings().max_lines;
        let mut errors: Vec<BatchErrorItem> = Vec::new();
        let push = |errors: &mut Vec<BatchErrorItem>, e: BatchErrorItem| {
            if errors.len() < MAX_ERRORS {
                errors.push(e);
            }
        };
        let mut seen: HashMap<u128, u32> = HashMap::new();
        let mut requests: u32 = 0;
        let mut lines = self
            .state
            .store
            .file_lines(&row.input_file_id, self.state.config.max_body_bytes);
        loop {
            let (line_no, bytes) = match lines.next_line().await {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(LineError::TooLong { line, max }) => {
                    push(
                        &mut errors,
                        file_error(
                            "line_too_long",
                            format!("line {line} is longer than {max} bytes"),
                            None,
                            Some(line),
                        ),
                    );
                    break;
                }
                Err(LineError::Store(e)) => return Err(e.into()),
            };
            if is_blank(&bytes) {
                continue;
            }
            requests += 1;
            if requests.is_multiple_of(10_000) {
                self.renew().await?;
            }
            if requests > max_lines {
                push(
                    &mut errors,
                    file_error(
                        "too_many_requests",
                        format!("the file has more than {max_lines} request lines"),
                        None,
                        Some(line_no),
                    ),
                );
                break;
            }
            match parse_line(&bytes, line_no, &row.endpoint) {
                Ok((custom_id, _)) => {
                    let key = stable_hash("custom_id:", &custom_id);
                    if let Some(first) = seen.insert(key, line_no) {
                        push(&mut errors, file_error(
                            "duplicate_custom_id",
                            format!(
                                "line {line_no}: custom_id {custom_id:?} is already used on line {first}; custom_id must be unique within a batch"
                            ),
                            Some("custom_id"),
                            Some(line_no),
                        ));
                    }
                }
                Err(e) => push(&mut errors, e),
            }
        }
        if requests == 0 && errors.is_empty() {
            push(
                &mut errors,
                file_error(
                    "empty_file",
                    "the input file has no request lines".into(),
                    None,
                    None,
                ),
            );
        }
        if errors.is_empty() {
            Ok(Ok(requests))
        } else {
            Ok(Err(errors))
        }
    }

    /// Pass 2: turns lines after the cursor into jobs.
    async fn ingest(&self, row: &BatchRow, mut mode: Mode) -> Result<Mode, DriveError> {
        let settings = self.settings().clone();
        let tier = row.tier;
        let batch_uuid = batch_uuid(&row.id);
        let mut lines = self
            .state
            .store
            .file_lines(&row.input_file_id, self.state.config.max_body_bytes);
        let mut cursor: u32 = 0;
        let resume_at = row.ingested.max(0) as u32;
        let started = Instant::now();
        let mut published_total: u64 = 0;
        loop {
            if mode == Mode::Publish {
                mode = self.wait_for_room(mode, settings.max_queued).await?;
            }
            let mut chunk: Vec<(u32, Vec<u8>)> = Vec::with_capacity(CHUNK_LINES);
            while chunk.len() < CHUNK_LINES {
                let Some((line_no, bytes)) = lines
                    .next_line()
                    .await
                    .map_err(|e| DriveError::Read(e.to_string()))?
                else {
                    break;
                };
                if is_blank(&bytes) {
                    continue;
                }
                cursor += 1;
                if cursor <= resume_at {
                    continue;
                }
                chunk.push((line_no, bytes));
            }
            if chunk.is_empty() {
                break;
            }
            let published = self
                .ingest_chunk(row, batch_uuid, tier, mode, &chunk)
                .instrument(lines_span(row, chunk.len()))
                .await?;
            published_total += published as u64;
            if !self
                .state
                .store
                .batch_ingested(&self.id, &self.holder, cursor)
                .await?
            {
                return Err(DriveError::LeaseLost);
            }
            mode = self.check(mode).await?;
            // Pace: `published_total` lines may take this long at `publish_rate`.
            let due =
                Duration::from_secs_f64(published_total as f64 / settings.publish_rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::select! {
                    _ = tokio::time::sleep(ahead) => {}
                    _ = self.stop.cancelled() => return Err(DriveError::Stopped),
                }
            }
        }
        tracing::info!(batch_id = %self.id, lines = cursor, elapsed_ms = started.elapsed().as_millis() as u64, "batch ingested");
        Ok(mode)
    }

    /// Waits while `max_queued` of the batch's lines are still in the queue.
    async fn wait_for_room(&self, mut mode: Mode, max_queued: u32) -> Result<Mode, DriveError> {
        loop {
            let queued = self.state.store.queued_lines(&self.id).await?;
            if queued < i64::from(max_queued) {
                return Ok(mode);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings().poll.min(Duration::from_millis(100))) => {}
                _ = self.stop.cancelled() => return Err(DriveError::Stopped),
            }
            mode = self.check(mode).await?;
            if mode != Mode::Publish {
                return Ok(mode);
            }
        }
    }

    /// Records one chunk's jobs and publishes those not yet published. Returns how many
    /// were published.
    pub(crate) async fn ingest_chunk(
        &self,
        row: &BatchRow,
        batch_uuid: Uuid,
        tier: Tier,
        mode: Mode,
        chunk: &[(u32, Vec<u8>)],
    ) -> Result<usize, DriveError> {
        let now = Utc::now();
        let mut jobs: Vec<BatchJob> = Vec::with_capacity(chunk.len());
        let mut envelopes: Vec<JobEnvelope> = Vec::new();
        for (line_no, bytes) in chunk {
            let id = line_job_id(batch_uuid, *line_no);
            let base = |custom_id: String, model: String| {
                BatchJob::queued(row, id, *line_no, tier, custom_id, model, now)
            };
            match self.check_request(bytes, *line_no, &row.endpoint) {
                Checked::Job {
                    custom_id,
                    request,
                    embeddings,
                    tags,
                } => {
                    let mut job = base(custom_id.clone(), request.model.clone());
                    match mode {
                        Mode::Publish => {
                            let mut metadata = Map::new();
                            metadata.insert("batch_id".into(), Value::String(row.id.clone()));
                            metadata.insert("custom_id".into(), Value::String(custom_id));
                            if !tags.is_empty() {
                                metadata.insert("tags".into(), json!(tags));
                            }
                            envelopes.push(JobEnvelope {
                                id,
                                request: *request,
                                embeddings,
                                tier,
                                owner: Some(row.owner.clone()),
                                reply_subject: None,
                                webhook_url: None,
                                metadata: Some(metadata),
                                submitted_at_ms: now.timestamp_millis(),
                                fallbacks: None,
                                disable_fallbacks: false,
                                user_agent: None,
                            });
                        }
                        Mode::End(ending) => {
                            job.status = ending.line_status();
                            job.finished_at = Some(now);
                        }
                    }
                    jobs.push(job);
                }
                Checked::Refused {
                    custom_id,
                    model,
                    class,
                    message,
                } => {
                    let job = base(custom_id, model).refused(class, message, now);
                    jobs.push(job);
                }
            }
        }
        self.state.store.insert_batch_jobs(&jobs).await?;
        drop(jobs);
        if envelopes.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = envelopes.iter().map(|e| e.id).collect();
        let fresh: HashSet<Uuid> = self
            .state
            .store
            .unpublished(&ids)
            .await?
            .into_iter()
            .collect();
        let subject = self.state.subjects.jobs(tier);
        let mut acks = Vec::with_capacity(fresh.len());
        for envelope in envelopes.iter().filter(|e| fresh.contains(&e.id)) {
            let payload =
                serde_json::to_vec(envelope).map_err(|e| DriveError::Publish(e.to_string()))?;
            let (headers, payload) =
                crate::bodies::job_message(&self.state, envelope.id, payload).await?;
            let ack = self
                .state
                .js
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|e| DriveError::Publish(e.to_string()))?;
            acks.push((envelope, ack));
        }
        let mut seqs = Vec::with_capacity(acks.len());
        for (envelope, ack) in acks {
            let ack = ack.await.map_err(|e| DriveError::Publish(e.to_string()))?;
            seqs.push((envelope.id, ack.sequence));
            let owner = envelope.owner.as_deref().unwrap_or_default();
            crate::metrics::submitted(tier, &envelope.request.model, owner);
        }
        self.state.store.record_batch_seqs(&seqs).await?;
        Ok(seqs.len())
    }

    /// A request line, checked as `POST /v1/jobs` would check its body.
    pub(crate) fn check_request(&self, bytes: &[u8], line_no: u32, endpoint: &str) -> Checked {
        let (custom_id, body) = match parse_line(bytes, line_no, endpoint) {
            Ok(parsed) => parsed,
            // Validation passed, so this does not happen; keep the line on record anyway.
            Err(e) => {
                return Checked::Refused {
                    custom_id: format!("line-{line_no}"),
                    model: String::new(),
                    class: ErrorClass::BadRequest,
                    message: e.message,
                }
            }
        };
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let refused = |class: ErrorClass, message: String| Checked::Refused {
            custom_id: custom_id.clone(),
            model: model.clone(),
            class,
            message: format!("line {line_no}: {message}"),
        };
        let bytes = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => return refused(ErrorClass::BadRequest, e.to_string()),
        };
        let parsed = if endpoint == sluice_schemas::batch::EMBEDDINGS {
            crate::submit::parse_embeddings(&bytes)
        } else {
            crate::submit::parse_submit(&bytes)
        };
        let submit = match parsed {
            Ok(s) => s,
            Err(e) => return refused(ErrorClass::BadRequest, e.message),
        };
        let tags = line_tags(&submit);
        let mut request = submit.request;
        let embeddings = submit.embeddings;
        let valid = crate::submit::validate(&self.state, &request).and_then(|()| {
            embeddings
                .as_deref()
                .map_or(Ok(()), crate::submit::validate_embeddings)
        });
        if let Err(e) = valid {
            let class = if e.code == Some("model_not_found") {
                ErrorClass::NotFound
            } else {
                ErrorClass::BadRequest
            };
            return refused(class, e.message);
        }
        if self.owner_revoked {
            return refused(
                ErrorClass::Auth,
                "the API key of this batch was revoked".to_string(),
            );
        }
        match &self.owner_key {
            Some(Some(key)) if !key.allows_model(&request.model) => {
                return refused(
                    ErrorClass::Auth,
                    format!("this API key may not use model group {:?}", request.model),
                )
            }
            Some(None) | None => {}
            Some(Some(_)) => {}
        }
        // Results are collected whole; nobody follows a batch line's chunks.
        request.stream = None;
        request.stream_options = None;
        Checked::Job {
            custom_id,
            request: Box::new(request),
            embeddings,
            tags,
        }
    }

    /// Waits until no line is queued or running, following cancel and expiry.
    pub(crate) async fn wait(&self, mut mode: Mode) -> Result<Mode, DriveError> {
        loop {
            mode = self.check(mode).await?;
            let mut counts = self.state.store.line_counts(&self.id).await?;
            if let (Mode::End(ending), true) = (mode, counts.queued > 0) {
                // A running line that had to wait (a limit, a retry) went back to the queue
                // after the batch ended: it ends too.
                self.end_queued(ending).await?;
                counts = self.state.store.line_counts(&self.id).await?;
            }
            if counts.unfinished() == 0 {
                return Ok(mode);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings().poll) => {}
                _ = self.stop.cancelled() => return Err(DriveError::Stopped),
            }
        }
    }

    /// Writes the output and error files from the job rows, then ends the batch.
    async fn finalize(&self, row: &BatchRow, ending: Ending) -> Result<(), DriveError> {
        let store = &self.state.store;
        let hex = batch_uuid(&row.id).simple().to_string();
        let out_id = format!("file-{hex}-output");
        let err_id = format!("file-{hex}-errors");
        // A driver that died here left partial files: start them again.
        store.delete_file(&out_id).await?;
        store.delete_file(&err_id).await?;
        store
            .create_file(
                &out_id,
                &row.owner,
                "batch_output",
                &format!("{}_output.jsonl", row.id),
            )
            .await?;
        store
            .create_file(
                &err_id,
                &row.owner,
                "batch_output",
                &format!("{}_error.jsonl", row.id),
            )
            .await?;
        let mut out = store.file_writer(&out_id);
        let mut err = store.file_writer(&err_id);
        let mut after = 0i32;
        let (mut n_out, mut n_err) = (0u64, 0u64);
        loop {
            let page = store.line_results(&self.id, after, RESULT_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.batch_line;
            for line in page {
                let (is_output, record) = output_line(line);
                let mut text =
                    serde_json::to_vec(&record).map_err(|e| DriveError::Read(e.to_string()))?;
                text.push(b'\n');
                if is_output {
                    out.write(&text).await?;
                    n_out += 1;
                } else {
                    err.write(&text).await?;
                    n_err += 1;
                }
            }
            self.renew().await?;
        }
        out.finish("batch_output").await?;
        err.finish("batch_output").await?;
        let out_file = if n_out > 0 {
            Some(out_id.as_str())
        } else {
            store.delete_file(&out_id).await?;
            None
        };
        let err_file = if n_err > 0 {
            Some(err_id.as_str())
        } else {
            store.delete_file(&err_id).await?;
            None
        };
        if !store
            .batch_ended(&self.id, &self.holder, ending, out_file, err_file)
            .await?
        {
            return Err(DriveError::LeaseLost);
        }
        tracing::info!(batch_id = %self.id, status = %ending.status(), output_lines = n_out, error_lines = n_err, "batch ended");
        Ok(())
    }
}

/// The UUID inside a `batch_<hex>` id; for an id made elsewhere, one derived from it by
/// [`stable_hash`], so the batch's line job ids are the same on every run and build
/// (they are the lines' idempotency keys).
pub fn batch_uuid(id: &str) -> Uuid {
    id.strip_prefix("batch_")
        .and_then(|h| Uuid::parse_str(h).ok())
        .unwrap_or_else(|| Uuid::from_u128(stable_hash("sluice-batch-id:", id)))
}

pub(crate) fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// The first 128 bits of SHA-256(`domain` + `s`): the same on every platform, process
/// and Rust release (std's `DefaultHasher` promises none of that).
fn stable_hash(domain: &str, s: &str) -> u128 {
    let digest = Sha256::new()
        .chain_update(domain.as_bytes())
        .chain_update(s.as_bytes())
        .finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

fn file_error(
    code: &str,
    message: String,
    param: Option<&str>,
    line: Option<u32>,
) -> BatchErrorItem {
    BatchErrorItem {
        code: code.into(),
        message,
        param: param.map(str::to_string),
        line,
    }
}

/// The envelope of a line: `custom_id`, `method`, `url`, `body` (an object).
fn parse_line(
    bytes: &[u8],
    line_no: u32,
    endpoint: &str,
) -> Result<(String, Value), BatchErrorItem> {
    let invalid = |param: Option<&str>, message: String| {
        file_error(
            "invalid_request",
            format!("line {line_no}: {message}"),
            param,
            Some(line_no),
        )
    };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(None, format!("not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(invalid(None, "must be a JSON object".into()));
    };
    let custom_id = match obj.remove("custom_id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) => {
            return Err(invalid(
                Some("custom_id"),
                "`custom_id` must not be empty".into(),
            ))
        }
        None | Some(Value::Null) => {
            return Err(invalid(
                Some("custom_id"),
                "missing required field `custom_id`".into(),
            ))
        }
        Some(_) => {
            return Err(invalid(
                Some("custom_id"),
                "`custom_id` must be a string".into(),
            ))
        }
    };
    if custom_id.len() > 512 {
        return Err(invalid(
            Some("custom_id"),
            "`custom_id` is longer than 512 characters".into(),
        ));
    }
    match obj.get("method").and_then(Value::as_str) {
        Some("POST") => {}
        Some(m) => {
            return Err(invalid(
                Some("method"),
                format!("`method` must be \"POST\", not {m:?}"),
            ))
        }
        None => {
            return Err(invalid(
                Some("method"),
                "missing required field `method`".into(),
            ))
        }
    }
    match obj.get("url").and_then(Value::as_str) {
        Some(u) if u == endpoint => {}
        Some(u) => {
            return Err(invalid(
                Some("url"),
                format!("`url` {u:?} does not match the batch's endpoint {endpoint:?}"),
            ))
        }
        None => return Err(invalid(Some("url"), "missing required field `url`".into())),
    }
    match obj.remove("body") {
        Some(body @ Value::Object(_)) => Ok((custom_id, body)),
        _ => Err(invalid(Some("body"), "`body` must be a JSON object".into())),
    }
}

/// A line's outcome as an OpenAI output line; `true` for the output file, `false` for
/// the error file.
fn output_line(line: LineResult) -> (bool, BatchOutputLine) {
    let id = format!("batch_req_{}", line.id.simple());
    let request_id = line.id.to_string();
    let ended = |code: &str, message: &str| BatchOutputLine {
        id: id.clone(),
        custom_id: line.custom_id.clone(),
        response: None,
        error: Some(BatchLineError {
            code: code.into(),
            message: message.into(),
        }),
    };
    match line.status {
        JobStatus::Succeeded => (
            true,
            BatchOutputLine {
                id: id.clone(),
                custom_id: line.custom_id.clone(),
                response: Some(BatchResponse {
                    status_code: 200,
                    request_id,
                    body: line.result.unwrap_or(Value::Null),
                }),
                error: None,
            },
        ),
        JobStatus::Cancelled => (
            false,
            ended(
                CODE_CANCELLED,
                "the batch was cancelled before this request ran",
            ),
        ),
        JobStatus::Expired => (
            false,
            ended(CODE_EXPIRED, "the batch expired before this request ran"),
        ),
        _ => {
            let class = line.error_class.unwrap_or(ErrorClass::Internal);
            let message = line
                .error_message
                .clone()
                .unwrap_or_else(|| format!("the request ended {}", line.status));
            (
                false,
                BatchOutputLine {
                    id,
                    custom_id: line.custom_id,
                    response: Some(BatchResponse {
                        status_code: class.http_status(),
                        request_id,
                        body: serde_json::to_value(class.error_body(message.clone()))
                            .unwrap_or_default(),
                    }),
                    error: Some(BatchLineError {
                        code: class.as_str().into(),
                        message,
                    }),
                },
            )
        }
    }
}

/// The span of publishing a chunk of a batch's lines, in the trace of the request that
/// created the batch: each line's job continues it (its `traceparent` goes into the NATS
/// headers, see `core/src/store/bodies.rs`).
fn lines_span(row: &BatchRow, lines: usize) -> tracing::Span {
    if !sluice_core::telemetry::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: sluice_core::telemetry::TARGET,
        "batch lines",
        otel.name = "send jobs",
        otel.kind = "producer",
        sluice.batch_id = %row.id,
        lines,
    );
    if let Some(tp) = &row.traceparent {
        sluice_core::telemetry::continue_from(&span, &|k| {
            (k == "traceparent").then_some(tp.as_str())
        });
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_needs_custom_id_post_the_endpoint_and_an_object_body() {
        let ep = "/v1/chat/completions";
        let ok = br#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#;
        assert_eq!(parse_line(ok, 1, ep).unwrap().0, "a");
        let e = parse_line(b"{not json", 3, ep).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.starts_with("line 3:"), "{}", e.message);
        let get = br#"{"custom_id":"a","method":"GET","url":"/v1/chat/completions","body":{}}"#;
        assert_eq!(
            parse_line(get, 1, ep).unwrap_err().param.as_deref(),
            Some("method")
        );
        let url = br#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{}}"#;
        assert_eq!(
            parse_line(url, 1, ep).unwrap_err().param.as_deref(),
            Some("url")
        );
        let no_id = br#"{"method":"POST","url":"/v1/chat/completions","body":{}}"#;
        assert_eq!(
            parse_line(no_id, 1, ep).unwrap_err().param.as_deref(),
            Some("custom_id")
        );
    }

    #[test]
    fn batch_ids_carry_their_uuid() {
        let u = Uuid::now_v7();
        assert_eq!(batch_uuid(&format!("batch_{}", u.simple())), u);
    }

    /// Line job ids derive from the batch UUID, so an id made elsewhere must map to the
    /// same UUID on every build: pinned to SHA-256("sluice-batch-id:batch-from-elsewhere").
    #[test]
    fn an_id_made_elsewhere_maps_to_a_pinned_uuid() {
        assert_eq!(
            batch_uuid("batch-from-elsewhere").to_string(),
            "aab7fbfb-e806-ef25-9bc1-c279007914e0"
        );
        assert_ne!(batch_uuid("batch-from-elsewhere"), batch_uuid("another"));
    }
}
