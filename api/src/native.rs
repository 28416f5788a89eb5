//! Native mode of the batch driver ([`crate::batches`]): a batch's lines go through the
//! providers' own batch APIs (half price, within 24 h) instead of running as live jobs.
//! The provider side is `sluice_core::native_batches::NativeBackend`; the records are in
//! `core/src/native_batches.rs`.
//!
//! 1. **Plan** (once): every request line is checked as in live mode, routing picks its
//!    deployment, and the lines are grouped per deployment into upstream batches cut at the
//!    provider's limits (requests, bytes, and the deployment's enqueued-token limit when one
//!    is set). The line jobs (each naming its upstream
//!    batch) and the upstream batches (`pending`) are recorded in one transaction. A
//!    deployment without a batch API gets a `live` group whose lines run as live jobs.
//!    `auto` settles on live unless every line's deployment has a batch API and the
//!    window is at least the providers' 24 h.
//! 2. **Submit**: a group waits while its deployment's upstream batches in flight would
//!    take it past the enqueued-token limit. `submitting` (and when) is recorded before
//!    the create call, `submitted` with the upstream ids right after. A restart looks a
//!    `submitting` group up upstream before creating again (`NativeBackend::find`: by
//!    marker, or for Anthropic by request count and creation time), so an api that died
//!    during the create call does not submit twice.
//! 3. **Poll** each upstream batch with backoff (`native_poll_ms`, doubling up to
//!    `native_poll_max_ms`). When it ends, its result lines are written to the line jobs
//!    through the ledger (one attempt each, at batch prices), per-line errors included, and
//!    their costs are charged to the same Redis budgets as a live call's
//!    (`sluice_core::budgets`).
//! 4. Lines left without a result (the upstream batch failed or expired) run live while
//!    the batch's window is open and `native_rerun_live` allows it, else end `expired`.
//!    Cancel and the batch's own expiry cancel the upstream batches, keep the results
//!    that came back, and end the rest.
//!
//! Then the driver waits for live lines as in live mode and writes the output files.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rust_decimal::prelude::ToPrimitive;
use serde_json::{json, Value};
use sluice_core::batches::{line_job_id, BatchJob, BatchRow, Ending};
use sluice_core::budgets::{self, Budget, Charges};
use sluice_core::native_batches::{
    BatchMode, GroupRow, GroupState, LostCreate, NativeBackend, NativeJob, NativeLine,
    NativeResult, NewGroup, Placement, UpstreamEnd, WaitingLine, LIVE_GROUP, NATIVE_WORKER,
};
use sluice_core::store::{AttemptRecord, JobOutcome, LedgerEntry};
use sluice_core::terminal_event::terminal_message;
use sluice_schemas::batch::{BatchStatus, CHAT_COMPLETIONS};
use sluice_schemas::job::{AttemptStatus, JobError, JobResult};
use sluice_schemas::{DoneEvent, ErrorClass, JobStatus, Tier};
use uuid::Uuid;

use crate::batches::{batch_uuid, is_blank, Checked, DriveError, Driver, Mode, CHUNK_LINES};

/// The providers' completion window: `auto` goes native only when the batch allows this.
const PROVIDER_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Planning leaves this share of a provider's byte limit for the wrapping of each line.
const BYTES_HEADROOM: f64 = 0.9;
/// Ledger entries written per statement.
const LEDGER_CHUNK: usize = 500;

/// Runs the batch natively if it is (or, for `auto`, can be) a native batch. `None`: it
/// runs live, and the live driver goes on.
pub(crate) async fn drive(d: &Driver, row: &BatchRow) -> Result<Option<Mode>, DriveError> {
    let Some(backend) = d.state.native.clone() else {
        return Ok(None);
    };
    let mut groups = d.state.store.native_groups(&d.id).await?;
    if groups.is_empty() {
        let requested = BatchMode::parse(&row.mode).unwrap_or_default();
        // Live, or a plan already recorded (lines ingested) with nothing to send upstream.
        if requested == BatchMode::Live || row.ingested > 0 || row.status != BatchStatus::InProgress
        {
            return Ok(None);
        }
        if !plan(d, row, &*backend, requested).await? {
            return Ok(None);
        }
        groups = d.state.store.native_groups(&d.id).await?;
        if groups.is_empty() {
            return Ok(None);
        }
    }
    Follow::new(d, row, backend).run(groups).await.map(Some)
}

/// A group being planned.
struct Planned {
    group: NewGroup,
    max_lines: u32,
    max_bytes: u64,
    /// The deployment's enqueued-token limit: a group holds at most this many tokens.
    max_tokens: Option<u64>,
}

/// Plans the batch; `false` when it runs live after all (`auto` that cannot go native).
async fn plan(
    d: &Driver,
    row: &BatchRow,
    backend: &dyn NativeBackend,
    requested: BatchMode,
) -> Result<bool, DriveError> {
    let window = crate::routes::batches::parse_window(&row.completion_window).unwrap_or_default();
    let live = || async {
        d.state
            .store
            .set_batch_mode(&d.id, &d.holder, BatchMode::Live)
            .await
            .map(|_| false)
    };
    if row.endpoint != CHAT_COMPLETIONS {
        tracing::info!(batch_id = %d.id, endpoint = %row.endpoint, "native batches run chat completions only; running live");
        return Ok(live().await?);
    }
    if requested == BatchMode::Auto && window < PROVIDER_WINDOW {
        tracing::info!(batch_id = %d.id, "auto mode: the window is shorter than the providers' 24 h; running live");
        return Ok(live().await?);
    }
    let tier = row.tier;
    let batch = batch_uuid(&row.id);
    let now = Utc::now();
    let mut groups: Vec<Planned> = Vec::new();
    // The open group of each deployment.
    let mut open: HashMap<String, usize> = HashMap::new();
    let mut jobs: Vec<NativeJob> = Vec::with_capacity(row.total.max(0) as usize);
    let mut lines = d
        .state
        .store
        .file_lines(&row.input_file_id, d.state.config.max_body_bytes);
    let mut total: u32 = 0;
    while let Some((line_no, bytes)) = lines
        .next_line()
        .await
        .map_err(|e| DriveError::Read(e.to_string()))?
    {
        if is_blank(&bytes) {
            continue;
        }
        total += 1;
        if total.is_multiple_of(10_000) {
            d.renew().await?;
        }
        let id = line_job_id(batch, line_no);
        let base = |custom_id: String, model: String| {
            BatchJob::queued(row, id, line_no, tier, custom_id, model, now)
        };
        match d.check_request(&bytes, line_no, &row.endpoint) {
            Checked::Refused {
                custom_id,
                model,
                class,
                message,
            } => {
                let job = base(custom_id, model).refused(class, message, now);
                jobs.push(NativeJob {
                    job,
                    native_batch: None,
                });
            }
            Checked::Job {
                custom_id,
                request,
                tags,
                ..
            } => {
                // A group routing cannot place here (a wildcard group, or tags no
                // deployment has) runs live, where the worker routes or refuses it.
                // Placed by the line's tags, as live routing places it.
                let place = backend.place(&request.model, &tags).unwrap_or(Placement {
                    deployment: request.model.clone(),
                    provider: String::new(),
                    protocol: None,
                    max_lines: u32::MAX,
                    max_bytes: u64::MAX,
                    enqueued_tokens: None,
                });
                if place.protocol.is_none() && requested == BatchMode::Auto {
                    tracing::info!(batch_id = %d.id, deployment = %place.deployment, "auto mode: a deployment has no batch API; running live");
                    return Ok(live().await?);
                }
                let (key, protocol) = match place.protocol {
                    Some(p) => (place.deployment.clone(), p),
                    None => (format!("{LIVE_GROUP}:{}", place.deployment), LIVE_GROUP),
                };
                let size = bytes.len() as u64;
                // Counted only where a limit needs it (tokenizing every line costs).
                let tokens = match place.enqueued_tokens {
                    Some(_) => backend.prompt_tokens(&place.deployment, &request),
                    None => 0,
                };
                let fits = |g: &Planned| {
                    (g.group.lines as u32) < g.max_lines
                        && (g.group.bytes as u64 + size)
                            <= ((g.max_bytes as f64) * BYTES_HEADROOM) as u64
                        && g.max_tokens
                            .is_none_or(|max| g.group.tokens as u64 + tokens <= max)
                };
                let index = match open.get(&key) {
                    Some(&i) if fits(&groups[i]) || groups[i].group.lines == 0 => i,
                    _ => {
                        let seq = groups.len() as i32;
                        groups.push(Planned {
                            group: NewGroup {
                                id: format!("nb_{}", Uuid::now_v7().simple()),
                                batch_id: row.id.clone(),
                                seq,
                                deployment: place.deployment.clone(),
                                provider: place.provider.clone(),
                                protocol: protocol.to_string(),
                                lines: 0,
                                bytes: 0,
                                tokens: 0,
                            },
                            max_lines: place.max_lines.max(1),
                            max_bytes: place.max_bytes,
                            max_tokens: place.enqueued_tokens,
                        });
                        open.insert(key, groups.len() - 1);
                        groups.len() - 1
                    }
                };
                let g = &mut groups[index].group;
                g.lines += 1;
                g.bytes += size as i64;
                g.tokens += tokens as i64;
                jobs.push(NativeJob {
                    job: base(custom_id, request.model.clone()),
                    native_batch: Some(g.id.clone()),
                });
            }
        }
    }
    let groups: Vec<NewGroup> = groups.into_iter().map(|p| p.group).collect();
    if !d
        .state
        .store
        .record_native_plan(&d.id, &d.holder, total, &groups, &jobs)
        .await?
    {
        return Err(DriveError::LeaseLost);
    }
    tracing::info!(batch_id = %d.id, lines = total, upstream_batches = groups.len(), "native batch planned");
    Ok(true)
}

/// Following the upstream batches of one batch.
struct Follow<'a> {
    d: &'a Driver,
    row: &'a BatchRow,
    backend: Arc<dyn NativeBackend>,
    /// Per group: when to look next, and the wait after that.
    due: HashMap<String, (Instant, Duration)>,
    cancel_sent: HashSet<String>,
    stopping: Option<Ending>,
    /// Key id → its budget, as read.
    key_budgets: HashMap<String, Option<Budget>>,
    /// Groups held back by an enqueued-token limit (logged once).
    held: HashSet<String>,
}

impl<'a> Follow<'a> {
    fn new(d: &'a Driver, row: &'a BatchRow, backend: Arc<dyn NativeBackend>) -> Self {
        Follow {
            d,
            row,
            backend,
            due: HashMap::new(),
            cancel_sent: HashSet::new(),
            stopping: None,
            key_budgets: HashMap::new(),
            held: HashSet::new(),
        }
    }

    fn store(&self) -> &sluice_core::Store {
        &self.d.state.store
    }

    fn is_due(&self, id: &str) -> bool {
        self.due.get(id).is_none_or(|(at, _)| Instant::now() >= *at)
    }

    /// Waits longer before the next look at `id` (doubling, up to `native_poll_max`).
    fn back_off(&mut self, id: &str) {
        let s = self.d.settings();
        let wait = match self.due.get(id) {
            None => s.native_poll,
            Some((_, w)) => (*w * 2).min(s.native_poll_max),
        };
        self.due
            .insert(id.to_string(), (Instant::now() + wait, wait));
    }

    async fn run(mut self, mut groups: Vec<GroupRow>) -> Result<Mode, DriveError> {
        loop {
            let now = self.d.renew().await?;
            if self.stopping.is_none() {
                if now.status == BatchStatus::Cancelling {
                    self.stopping = Some(Ending::Cancelled);
                } else if Utc::now() >= now.expires_at {
                    self.stopping = Some(Ending::Expired);
                }
                if let Some(e) = self.stopping {
                    tracing::info!(batch_id = %self.d.id, status = e.status().as_str(), "native batch ending early");
                }
            }
            let mut open = 0;
            for g in &groups {
                match g.state() {
                    GroupState::Ended => {}
                    GroupState::Pending => {
                        open += 1;
                        self.pending(g).await?;
                    }
                    GroupState::Submitting => {
                        open += 1;
                        self.submitting(g).await?;
                    }
                    GroupState::Submitted => {
                        open += 1;
                        self.submitted(g).await?;
                    }
                }
            }
            if open == 0 {
                break;
            }
            let nap = self
                .d
                .settings()
                .poll
                .min(self.d.settings().native_poll)
                .max(Duration::from_millis(10));
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = self.d.stop.cancelled() => return Err(DriveError::Stopped),
            }
            groups = self.store().native_groups(&self.d.id).await?;
        }
        // Live lines (deployments without a batch API, re-runs) finish as in live mode.
        let mut mode = match self.stopping {
            Some(e) => Mode::End(e),
            None => Mode::Publish,
        };
        if let Mode::End(e) = mode {
            self.d.end_queued(e).await?;
        }
        mode = self.d.wait(mode).await?;
        Ok(mode)
    }

    async fn pending(&mut self, g: &GroupRow) -> Result<(), DriveError> {
        if let Some(ending) = self.stopping {
            let n = self.end_lines(g, ending).await?;
            tracing::info!(batch_id = %self.d.id, group = %g.id, lines = n, "upstream batch not submitted: the batch ended");
            self.store()
                .native_ended(&g.id, "not_submitted", None, 0)
                .await?;
            return Ok(());
        }
        if g.protocol == LIVE_GROUP {
            let lines: Vec<i32> = self
                .store()
                .native_waiting(&g.id)
                .await?
                .iter()
                .map(|l| l.batch_line)
                .collect();
            let n = self.publish_live(&lines).await?;
            self.store().native_ended(&g.id, "live", None, n).await?;
            return Ok(());
        }
        if self.held_back(g).await? {
            return Ok(());
        }
        self.store().native_submitting(&g.id).await?;
        self.submit(g).await
    }

    /// Whether `g` must wait: its deployment's upstream batches in flight (this batch's
    /// and others') hold so many tokens that `g` would pass the provider's enqueued-token
    /// limit. A group is sent once nothing else is in flight, even if it alone is over
    /// the limit (planning cut it to fit unless one line is over).
    async fn held_back(&mut self, g: &GroupRow) -> Result<bool, DriveError> {
        let Some(limit) = self.backend.enqueued_limit(&g.deployment) else {
            return Ok(false);
        };
        let enqueued = self.store().native_enqueued(&g.deployment).await?;
        let held = enqueued > 0 && (enqueued + g.tokens) as u64 > limit;
        if held && self.held.insert(g.id.clone()) {
            tracing::info!(batch_id = %self.d.id, group = %g.id, deployment = %g.deployment, enqueued, tokens = g.tokens, limit, "upstream batch held back: the deployment's enqueued-token limit is reached");
        }
        Ok(held)
    }

    /// A create call may have reached the provider: look for the batch it made first
    /// (by marker, or for Anthropic by request count and creation time; see
    /// `worker/src/native/wire.rs`), skipping batches other records hold, and submit
    /// again only when there is none. A look-up that fails is tried again later; the
    /// batch's own expiry ends a group that can never be looked up.
    async fn submitting(&mut self, g: &GroupRow) -> Result<(), DriveError> {
        if !self.is_due(&g.id) {
            return Ok(());
        }
        let lost = LostCreate {
            marker: g.id.clone(),
            since: g.submitting_at.unwrap_or(g.created_at),
            lines: self.store().native_waiting(&g.id).await?.len(),
        };
        match self.backend.find(&g.deployment, &lost).await {
            Ok(found) => {
                for s in found {
                    if self
                        .store()
                        .native_upstream_taken(&g.id, &s.upstream_id)
                        .await?
                    {
                        continue;
                    }
                    tracing::info!(batch_id = %self.d.id, group = %g.id, upstream = %s.upstream_id, "found the upstream batch of an interrupted submit");
                    self.store().native_submitted(&g.id, &s).await?;
                    self.due.remove(&g.id);
                    self.back_off(&g.id);
                    return Ok(());
                }
                self.submit(g).await
            }
            Err(e) => {
                tracing::warn!(batch_id = %self.d.id, group = %g.id, error = %e, "cannot look up the upstream batch of an interrupted submit; will retry");
                self.back_off(&g.id);
                Ok(())
            }
        }
    }

    async fn submit(&mut self, g: &GroupRow) -> Result<(), DriveError> {
        if self.stopping.is_some() {
            // Nothing reached the provider that we know of; end the lines.
            return self.pending_ended(g).await;
        }
        let waiting = self.store().native_waiting(&g.id).await?;
        let wanted: HashMap<u32, &WaitingLine> =
            waiting.iter().map(|l| (l.batch_line as u32, l)).collect();
        let mut prepared: Vec<Value> = Vec::with_capacity(wanted.len());
        let mut refused: Vec<LedgerEntry> = Vec::new();
        let mut lines = self
            .store()
            .file_lines(&self.row.input_file_id, self.d.state.config.max_body_bytes);
        while let Some((line_no, bytes)) = lines
            .next_line()
            .await
            .map_err(|e| DriveError::Read(e.to_string()))?
        {
            if line_no.is_multiple_of(10_000) {
                self.d.renew().await?;
            }
            let Some(job) = wanted.get(&line_no) else {
                continue;
            };
            let request = match self.d.check_request(&bytes, line_no, &self.row.endpoint) {
                Checked::Job { request, .. } => *request,
                Checked::Refused { class, message, .. } => {
                    refused.push(failed(job, class, message, None));
                    continue;
                }
            };
            let line = NativeLine {
                custom_id: job.id.to_string(),
                request,
            };
            match self.backend.prepare(&g.deployment, &line) {
                Ok(v) => prepared.push(v),
                Err((class, message)) => refused.push(failed(job, class, message, None)),
            }
        }
        self.write(&g.provider, refused).await?;
        if prepared.is_empty() {
            self.store().native_ended(&g.id, "empty", None, 0).await?;
            return Ok(());
        }
        match self.backend.submit(&g.deployment, &g.id, &prepared).await {
            Ok(s) => {
                tracing::info!(batch_id = %self.d.id, group = %g.id, upstream = %s.upstream_id, lines = prepared.len(), "upstream batch submitted");
                self.store().native_submitted(&g.id, &s).await?;
                self.due.remove(&g.id);
                self.back_off(&g.id);
                Ok(())
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(batch_id = %self.d.id, group = %g.id, error = %e, "cannot submit the upstream batch; will retry");
                self.back_off(&g.id);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(batch_id = %self.d.id, group = %g.id, error = %e, "the provider refused the upstream batch");
                self.finish(g, &UpstreamEnd::Failed(e.message.clone()), Vec::new())
                    .await
            }
        }
    }

    async fn pending_ended(&mut self, g: &GroupRow) -> Result<(), DriveError> {
        let ending = self.stopping.unwrap_or(Ending::Expired);
        self.end_lines(g, ending).await?;
        self.store()
            .native_ended(&g.id, "not_submitted", None, 0)
            .await?;
        Ok(())
    }

    async fn submitted(&mut self, g: &GroupRow) -> Result<(), DriveError> {
        let Some(upstream) = g.upstream_id.as_deref() else {
            return Ok(());
        };
        if self.stopping.is_some() && self.cancel_sent.insert(g.id.clone()) {
            match self.backend.cancel(&g.deployment, upstream).await {
                Ok(()) => {
                    tracing::info!(batch_id = %self.d.id, group = %g.id, upstream, "upstream batch cancel sent")
                }
                Err(e) => {
                    tracing::warn!(batch_id = %self.d.id, group = %g.id, error = %e, "cannot cancel the upstream batch")
                }
            }
            self.due.remove(&g.id);
        }
        if !self.is_due(&g.id) {
            return Ok(());
        }
        let poll = match self.backend.poll(&g.deployment, upstream).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(batch_id = %self.d.id, group = %g.id, error = %e, "cannot poll the upstream batch; will retry");
                self.back_off(&g.id);
                return Ok(());
            }
        };
        self.store().native_status(&g.id, &poll.status).await?;
        let Some(end) = poll.end else {
            self.back_off(&g.id);
            return Ok(());
        };
        let results = match self.backend.results(&g.deployment, upstream).await {
            Ok(r) => r,
            Err(e) if matches!(end, UpstreamEnd::Completed) || e.is_transient() => {
                tracing::warn!(batch_id = %self.d.id, group = %g.id, error = %e, "cannot read the upstream results; will retry");
                self.back_off(&g.id);
                return Ok(());
            }
            // A failed batch has no results to read.
            Err(_) => Vec::new(),
        };
        self.finish(g, &end, results).await
    }

    /// Writes an ended upstream batch's results to its lines and settles the lines
    /// without one.
    async fn finish(
        &mut self,
        g: &GroupRow,
        end: &UpstreamEnd,
        results: Vec<NativeResult>,
    ) -> Result<(), DriveError> {
        let waiting = self.store().native_waiting(&g.id).await?;
        let mut by_id: HashMap<Uuid, &WaitingLine> = waiting.iter().map(|l| (l.id, l)).collect();
        let started = g.submitted_at.unwrap_or(g.created_at);
        let mut entries = Vec::with_capacity(results.len());
        // The terminal event of each line, as a worker publishes a live line's end.
        let mut ends: Vec<DoneEvent> = Vec::with_capacity(results.len());
        let (mut ok, mut errored) = (0u32, 0u32);
        for r in results {
            // Lines not of this group (or already written) are ignored.
            let Some(job) = Uuid::parse_str(&r.custom_id)
                .ok()
                .and_then(|id| by_id.remove(&id))
            else {
                continue;
            };
            let attempt = |status: AttemptStatus,
                           class: Option<ErrorClass>,
                           message: Option<String>| AttemptRecord {
                job_id: job.id,
                attempt: 1,
                delivery: 1,
                worker: NATIVE_WORKER.to_string(),
                deployment: g.deployment.clone(),
                provider: g.provider.clone(),
                model: g.deployment.clone(),
                status,
                error_class: class,
                error_message: message,
                prompt_tokens: None,
                completion_tokens: None,
                cached_tokens: None,
                cache_creation_tokens: None,
                reasoning_tokens: None,
                usage_estimated: false,
                cost: None,
                pricing_missing: false,
                ttft_ms: None,
                latency_ms: Some((Utc::now() - started).num_milliseconds().max(0) as f64),
                started_at: started,
                finished_at: Utc::now(),
                dropped_params: None,
            };
            match r.outcome {
                Ok(s) => {
                    ok += 1;
                    let mut a = attempt(AttemptStatus::Succeeded, None, None);
                    a.model = s.model.clone();
                    if let Some(u) = &s.usage {
                        a.prompt_tokens = Some(u.prompt_tokens as i64);
                        a.completion_tokens = Some(u.completion_tokens as i64);
                        a.cached_tokens = Some(u.cached_tokens() as i64);
                        a.cache_creation_tokens = Some(u.cache_creation_tokens() as i64);
                        a.reasoning_tokens = Some(u.reasoning_tokens() as i64);
                    }
                    a.cost = s.cost;
                    a.pricing_missing = s.cost.is_none();
                    ends.push(DoneEvent {
                        job_id: job.id,
                        status: JobStatus::Succeeded,
                        result: serde_json::from_value::<JobResult>(s.completion.clone()).ok(),
                        usage: s.usage,
                        cost: s.cost,
                        attempts: 1,
                        error: None,
                    });
                    entries.push(LedgerEntry::Finished {
                        job: JobOutcome {
                            id: job.id,
                            owner: job.owner.clone(),
                            model_group: job.model_group.clone(),
                            tier: Tier::parse(&job.tier).unwrap_or(Tier::Low),
                            reply_subject: None,
                            created_at: job.created_at,
                            status: JobStatus::Succeeded,
                            result: serde_json::value::to_raw_value(&s.completion).ok(),
                            usage: s.usage.as_ref().and_then(|u| serde_json::to_value(u).ok()),
                            cost: s.cost,
                            pricing_missing: s.cost.is_none(),
                            attempts: 1,
                            error_class: None,
                            error_message: None,
                            finished_at: Utc::now(),
                            cache_hit: false,
                            cost_saved: None,
                        },
                        attempts: vec![a],
                        deliveries: Vec::new(),
                    });
                }
                Err((class, message)) => {
                    errored += 1;
                    let a = attempt(AttemptStatus::Failed, Some(class), Some(message.clone()));
                    ends.push(DoneEvent {
                        job_id: job.id,
                        status: JobStatus::Failed,
                        result: None,
                        usage: None,
                        cost: None,
                        attempts: 1,
                        error: Some(JobError {
                            class,
                            message: message.clone(),
                        }),
                    });
                    entries.push(failed(job, class, message, Some(a)));
                }
            }
        }
        self.write(&g.provider, entries).await?;
        self.publish_ends(&ends).await;
        let rest: Vec<i32> = by_id.values().map(|l| l.batch_line).collect();
        let (status, error) = match end {
            UpstreamEnd::Completed => ("completed", None),
            UpstreamEnd::Failed(m) => ("failed", Some(m.as_str())),
            UpstreamEnd::Expired => ("expired", None),
            UpstreamEnd::Cancelled => ("cancelled", None),
        };
        let mut rerun = 0;
        if !rest.is_empty() {
            let window_open = Utc::now() < self.row.expires_at;
            if let Some(ending) = self.stopping {
                self.end_lines(g, ending).await?;
            } else if self.d.settings().native_rerun_live && window_open {
                rerun = self.publish_live(&rest).await?;
            } else {
                self.end_lines(g, Ending::Expired).await?;
            }
        }
        self.store()
            .native_ended(&g.id, status, error, rerun)
            .await?;
        tracing::info!(batch_id = %self.d.id, group = %g.id, status, succeeded = ok, errored, without_result = rest.len(), rerun_live = rerun, "upstream batch ended");
        Ok(())
    }

    async fn end_lines(&self, g: &GroupRow, ending: Ending) -> Result<u64, DriveError> {
        let status = match ending {
            Ending::Cancelled => JobStatus::Cancelled,
            _ => JobStatus::Expired,
        };
        Ok(self
            .store()
            .end_native_lines(&g.id, status.as_str())
            .await?)
    }

    /// Writes line results to the ledger and charges their costs to the budgets of
    /// `provider` and of each line's key, as the worker settles a live call.
    async fn write(&mut self, provider: &str, entries: Vec<LedgerEntry>) -> Result<(), DriveError> {
        for chunk in entries.chunks(LEDGER_CHUNK) {
            self.store().write_ledger(chunk).await?;
            self.charge(provider, chunk).await;
        }
        Ok(())
    }

    /// Charges the costs of `entries` (written to the ledger) to the Redis budgets a live
    /// call to `provider` by the same key would charge (`sluice_core::budgets`). Best
    /// effort, like the worker's settlement: a charge lost to a Redis outage is rebuilt
    /// from the ledger once Redis has lost the counters, else the budget undercounts.
    async fn charge(&mut self, provider: &str, entries: &[LedgerEntry]) {
        let config = &self.d.state.config;
        let provider_budgets: Vec<Budget> =
            budgets::provider_budgets(provider, &config.limits.provider_budgets).collect();
        let mut charges = Charges::default();
        for entry in entries {
            let LedgerEntry::Finished { job, .. } = entry else {
                continue;
            };
            let Some(usd) = job.cost.and_then(|c| c.to_f64()) else {
                continue;
            };
            for b in &provider_budgets {
                charges.add(b, usd);
            }
            match self.key_budget(&job.owner).await {
                Ok(Some(b)) => charges.add(&b, usd),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(batch_id = %self.d.id, error = %e, "cannot read the key's budget; native spend not charged to it in Redis")
                }
            }
        }
        if let Err(e) = charges
            .charge(&self.d.state.redis, &config.subject_prefix)
            .await
        {
            tracing::warn!(batch_id = %self.d.id, error = %e, "native spend not charged to the budgets in Redis; the ledger has it");
        }
    }

    /// Publishes the terminal event of each line that `ends` (recorded first), the same
    /// message a worker publishes when a live line ends (`sluice_core::terminal_event`),
    /// so event subscribers see native lines end as live ones do. Batch lines have no
    /// reply subject or webhook. An event not stored is logged; the line's row has its end.
    async fn publish_ends(&self, ends: &[DoneEvent]) {
        let js = &self.d.state.js;
        let max_payload = self.d.state.nats.server_info().max_payload;
        for chunk in ends.chunks(LEDGER_CHUNK) {
            let mut acks = Vec::with_capacity(chunk.len());
            for done in chunk {
                let m = match terminal_message(done, done.attempts, 1, max_payload) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(job_id = %done.job_id, error = %e, "terminal event not encoded");
                        continue;
                    }
                };
                let subject = self.d.state.subjects.events(done.job_id);
                match js.publish_with_headers(subject, m.headers, m.sent).await {
                    Ok(ack) => acks.push((done.job_id, ack)),
                    Err(e) => {
                        tracing::warn!(job_id = %done.job_id, error = %e, "terminal event not published")
                    }
                }
            }
            for (job_id, ack) in acks {
                if let Err(e) = ack.await {
                    tracing::warn!(%job_id, error = %e, "terminal event not stored");
                }
            }
        }
    }

    /// The budget of `owner`'s key (none for the master key), read once per driver.
    async fn key_budget(&mut self, owner: &str) -> Result<Option<Budget>, DriveError> {
        if sluice_schemas::is_master_owner(owner) {
            return Ok(None);
        }
        if let Some(b) = self.key_budgets.get(owner) {
            return Ok(b.clone());
        }
        let b = self
            .store()
            .api_key(owner)
            .await?
            .and_then(|k| budgets::key_budget(&k));
        self.key_budgets.insert(owner.to_string(), b.clone());
        Ok(b)
    }

    /// Publishes `lines` (line numbers) as live jobs, as the live driver does. Returns
    /// how many were published.
    async fn publish_live(&self, lines: &[i32]) -> Result<u32, DriveError> {
        if lines.is_empty() {
            return Ok(0);
        }
        let wanted: HashSet<u32> = lines.iter().map(|l| *l as u32).collect();
        let tier = self.row.tier;
        let batch = batch_uuid(&self.row.id);
        let mut file = self
            .store()
            .file_lines(&self.row.input_file_id, self.d.state.config.max_body_bytes);
        let mut chunk: Vec<(u32, Vec<u8>)> = Vec::with_capacity(CHUNK_LINES);
        let mut published = 0usize;
        while let Some((line_no, bytes)) = file
            .next_line()
            .await
            .map_err(|e| DriveError::Read(e.to_string()))?
        {
            if !wanted.contains(&line_no) {
                continue;
            }
            chunk.push((line_no, bytes));
            if chunk.len() == CHUNK_LINES {
                published += self
                    .d
                    .ingest_chunk(self.row, batch, tier, Mode::Publish, &chunk)
                    .await?;
                chunk.clear();
                self.d.renew().await?;
            }
        }
        if !chunk.is_empty() {
            published += self
                .d
                .ingest_chunk(self.row, batch, tier, Mode::Publish, &chunk)
                .await?;
        }
        tracing::info!(batch_id = %self.d.id, lines = published, "lines running live");
        Ok(published as u32)
    }
}

/// A line that ended failed, with its attempt if a call was made.
fn failed(
    job: &WaitingLine,
    class: ErrorClass,
    message: String,
    attempt: Option<AttemptRecord>,
) -> LedgerEntry {
    LedgerEntry::Finished {
        job: JobOutcome {
            id: job.id,
            owner: job.owner.clone(),
            model_group: job.model_group.clone(),
            tier: Tier::parse(&job.tier).unwrap_or(Tier::Low),
            reply_subject: None,
            created_at: job.created_at,
            status: JobStatus::Failed,
            result: None,
            usage: None,
            cost: None,
            pricing_missing: false,
            attempts: u32::from(attempt.is_some()),
            error_class: Some(class),
            error_message: Some(message),
            finished_at: Utc::now(),
            cache_hit: false,
            cost_saved: None,
        },
        attempts: attempt.into_iter().collect(),
        deliveries: Vec::new(),
    }
}

/// The upstream batches of a batch, for its batch object.
pub fn upstream_view(groups: &[GroupRow]) -> Vec<Value> {
    groups
        .iter()
        .map(|g| {
            json!({
                "id": g.id,
                "provider": g.provider,
                "protocol": g.protocol,
                "deployment": g.deployment,
                "upstream_batch_id": g.upstream_id,
                "upstream_file_id": g.upstream_file_id,
                "state": g.state,
                "upstream_status": g.upstream_status,
                "lines": g.lines,
                "tokens": g.tokens,
                "rerun_live": g.rerun_live,
                "error": g.error,
            })
        })
        .collect()
}
