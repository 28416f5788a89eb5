//! LiteLLM-style usage callbacks (`litellm_settings.success_callback`, `failure_callback`,
//! `callbacks`; see `core/src/config/callbacks.rs`): each finished job goes to Langfuse's
//! ingestion API as a trace with one generation per provider attempt (model, usage, cost,
//! timings, errors).
//!
//! Fired once the job's result is durable (the ledger writer is wrapped by [`Fired`]),
//! through a bounded queue: a job never waits for a callback and holds no slot for one.
//! The prompt (chat messages, or embeddings input) is the trace's and each generation's
//! `input`: it is noted when the job starts here ([`Inputs`]) and taken when its end is
//! queued. `turn_off_message_logging` leaves both the input and the output out.
//! One background task batches the queue and posts it. A post that fails for a reason
//! that may pass (no connection, a 5xx, a 429) is tried again after a backoff
//! (`retry::CallbackRetry`, a few tries; none once the worker stops), in that task only:
//! jobs keep queueing meanwhile. Whatever cannot be queued or delivered is counted in
//! `sluice_callback_failures_total`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use metrics::{counter, describe_counter};
use rust_decimal::prelude::ToPrimitive;
use serde_json::{json, Value};
use sluice_core::config::callbacks::{Callbacks, Langfuse};
use sluice_core::group_commit::{Flush, FlushError};
use sluice_core::store::{AttemptRecord, JobOutcome, LedgerEntry};
use sluice_schemas::{JobEnvelope, JobStatus};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Jobs waiting to be sent; beyond this, callbacks are dropped (and counted).
const QUEUE: usize = 10_000;
/// Events per ingestion request (Langfuse takes batches up to 3.5 MB).
const BATCH: usize = 200;
/// How long a partial batch waits for company.
const LINGER: Duration = Duration::from_secs(1);

/// Describes the callback metrics.
pub fn describe() {
    describe_counter!(
        "sluice_callback_failures_total",
        "Usage callbacks not delivered, by callback and reason (queue_full, http, rejected)"
    );
    describe_counter!(
        "sluice_callback_retries_total",
        "Usage callback posts tried again after a failure that may pass, by callback"
    );
    describe_counter!(
        "sluice_callback_events_total",
        "Usage callback events delivered, by callback"
    );
}

fn failed(reason: &'static str, n: usize) {
    counter!("sluice_callback_failures_total", "callback" => "langfuse", "reason" => reason)
        .increment(n as u64);
}

/// The prompts of the jobs running on this worker, for their callbacks: noted when a job
/// starts ([`Inputs::note`]), taken when its end is queued, forgotten when it leaves the
/// worker any other way (`Ctx::release` in `worker/src/lib.rs`). Empty when messages are
/// not logged.
#[derive(Default)]
pub struct Inputs {
    redact: bool,
    by_job: Mutex<HashMap<Uuid, Value>>,
}

impl Inputs {
    /// Notes the prompt of the job in `envelope` (unless messages are not logged).
    pub fn note(&self, envelope: &JobEnvelope) {
        if self.redact {
            return;
        }
        let input = match &envelope.embeddings {
            Some(e) => serde_json::to_value(&e.input),
            None => serde_json::to_value(&envelope.request.messages),
        };
        if let Ok(input) = input {
            self.lock().insert(envelope.id, input);
        }
    }

    /// The prompt noted for job `id`, taken.
    fn take(&self, id: Uuid) -> Option<Value> {
        self.lock().remove(&id)
    }

    /// Drops what was noted for job `id` (it left this worker).
    pub fn forget(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Value>> {
        // A panic while holding the lock cannot leave the map half-changed.
        self.by_job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The queue's sending end, with which outcomes to send.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Value>,
    on_success: bool,
    on_failure: bool,
    inputs: Arc<Inputs>,
}

/// The queue and its sending end when the config names Langfuse; `None` otherwise.
pub fn channel(callbacks: &Callbacks) -> Option<(Sender, mpsc::Receiver<Value>, Langfuse)> {
    let langfuse = callbacks.langfuse.clone()?;
    let (tx, rx) = mpsc::channel(QUEUE);
    Some((
        Sender {
            tx,
            on_success: callbacks.langfuse_on_success,
            on_failure: callbacks.langfuse_on_failure,
            inputs: Arc::new(Inputs {
                redact: callbacks.redact_messages,
                by_job: Mutex::default(),
            }),
        },
        rx,
        langfuse,
    ))
}

impl Sender {
    /// Where the worker notes the prompts of the jobs it starts.
    pub fn inputs(&self) -> Arc<Inputs> {
        Arc::clone(&self.inputs)
    }

    fn offer(&self, job: &JobOutcome, attempts: &[AttemptRecord]) {
        let input = self.inputs.take(job.id);
        let wanted = if job.status == JobStatus::Succeeded {
            self.on_success
        } else {
            self.on_failure
        };
        if !wanted {
            return;
        }
        let messages = (!self.inputs.redact).then_some(Messages {
            input: input.as_ref(),
        });
        for event in events(job, attempts, messages) {
            if self.tx.try_send(event).is_err() {
                failed("queue_full", 1);
            }
        }
    }
}

/// Wraps the ledger writer: after a batch is durably written, queues its finished jobs.
pub struct Fired<F> {
    inner: F,
    sender: Option<Sender>,
}

impl<F> Fired<F> {
    pub fn new(inner: F, sender: Option<Sender>) -> Self {
        Fired { inner, sender }
    }
}

impl<F: Flush<LedgerEntry>> Flush<LedgerEntry> for Fired<F> {
    type Out = F::Out;
    fn flush<'a>(
        &'a self,
        items: &'a [LedgerEntry],
    ) -> BoxFuture<'a, Result<Vec<Self::Out>, FlushError>> {
        Box::pin(async move {
            let out = self.inner.flush(items).await?;
            if let Some(sender) = &self.sender {
                for entry in items {
                    if let LedgerEntry::Finished { job, attempts, .. } = entry {
                        sender.offer(job, attempts);
                    }
                }
            }
            Ok(out)
        })
    }
}

fn event_id(kind: &str, id: &str) -> String {
    format!("{id}-{kind}")
}

/// What of the conversation a job's events carry; `None` (to [`events`]) when messages
/// are not logged: then neither the input nor the output.
#[derive(Clone, Copy)]
struct Messages<'a> {
    input: Option<&'a Value>,
}

/// Langfuse ingestion events for a finished job: its trace, and one generation per call.
fn events(job: &JobOutcome, attempts: &[AttemptRecord], messages: Option<Messages>) -> Vec<Value> {
    let trace_id = job.id.to_string();
    let ts = job.finished_at.to_rfc3339();
    let mut out = Vec::with_capacity(1 + attempts.len());
    let input = messages.and_then(|m| m.input).cloned();
    let output = job
        .result
        .as_ref()
        .filter(|_| messages.is_some())
        .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
        .and_then(|r| r.get("choices")?.get(0)?.get("message").cloned());
    out.push(json!({
        "id": event_id("trace", &trace_id),
        "timestamp": ts,
        "type": "trace-create",
        "body": {
            "id": trace_id,
            "timestamp": job.created_at.to_rfc3339(),
            "name": job.model_group,
            "userId": job.owner,
            "input": input,
            "output": output,
            "metadata": {
                "sluice.job_id": trace_id,
                "tier": job.tier.as_str(),
                "status": job.status.as_str(),
                "cost_usd": job.cost.and_then(|c| c.to_f64()),
            },
            "tags": ["sluice"],
        }
    }));
    let last = attempts.len().saturating_sub(1);
    for (i, a) in attempts.iter().enumerate() {
        let gen_id = format!("{trace_id}-{}", a.attempt);
        let mut usage = serde_json::Map::new();
        if let Some(n) = a.prompt_tokens {
            usage.insert("input".into(), json!(n));
        }
        if let Some(n) = a.completion_tokens {
            usage.insert("output".into(), json!(n));
        }
        if let (Some(p), Some(c)) = (a.prompt_tokens, a.completion_tokens) {
            usage.insert("total".into(), json!(p + c));
        }
        if let Some(n) = a.cached_tokens.filter(|n| *n > 0) {
            usage.insert("input_cached_tokens".into(), json!(n));
        }
        let cost = a.cost.and_then(|c| c.to_f64()).map(|c| json!({"total": c}));
        let completion_start = a.ttft_ms.map(|ms| {
            (a.started_at + chrono::Duration::microseconds((ms * 1000.0) as i64)).to_rfc3339()
        });
        let (level, status) = match (&a.error_class, &a.error_message) {
            (Some(class), msg) => (
                "ERROR",
                Some(format!(
                    "{}: {}",
                    class.as_str(),
                    msg.as_deref().unwrap_or("")
                )),
            ),
            (None, _) => ("DEFAULT", None),
        };
        out.push(json!({
            "id": event_id("generation", &gen_id),
            "timestamp": ts,
            "type": "generation-create",
            "body": {
                "id": gen_id,
                "traceId": trace_id,
                "name": format!("chat {}", a.model),
                "startTime": a.started_at.to_rfc3339(),
                "endTime": a.finished_at.to_rfc3339(),
                "completionStartTime": completion_start,
                "model": a.model,
                "usageDetails": usage,
                "costDetails": cost,
                "level": level,
                "statusMessage": status,
                "input": input,
                "output": if i == last && a.error_class.is_none() { output.clone() } else { None },
                "metadata": {
                    "deployment": a.deployment,
                    "provider": a.provider,
                    "attempt": a.attempt,
                },
            }
        }));
    }
    out
}

/// Sends queued events to Langfuse in batches until the queue closes or `stop` (then
/// what is queued goes out in a last batch).
pub async fn run(mut rx: mpsc::Receiver<Value>, langfuse: Langfuse, stop: CancellationToken) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            langfuse.public_key,
            langfuse.secret_key.expose()
        ))
    );
    let url = format!("{}/api/public/ingestion", langfuse.host);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            e = rx.recv() => e,
            _ = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        send(&http, &url, &auth, &mut batch, &stop).await;
    }
    while let Ok(e) = rx.try_recv() {
        batch.push(e);
        if batch.len() >= BATCH {
            send(&http, &url, &auth, &mut batch, &stop).await;
        }
    }
    if !batch.is_empty() {
        send(&http, &url, &auth, &mut batch, &stop).await;
    }
}

/// Whether a failed post may succeed if tried again: no answer, a server error, or
/// "too many requests". Other refusals (bad keys, a malformed batch) will not pass.
fn worth_retrying(resp: &Result<reqwest::Response, reqwest::Error>) -> bool {
    match resp {
        Ok(r) => {
            r.status().is_server_error() || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
        }
        Err(_) => true,
    }
}

/// Posts one batch, trying again after a backoff while the failure may pass and tries
/// are left (none once `stop` is cancelled: the worker is going).
async fn send(
    http: &reqwest::Client,
    url: &str,
    auth: &str,
    batch: &mut Vec<Value>,
    stop: &CancellationToken,
) {
    let n = batch.len();
    let body = json!({ "batch": std::mem::take(batch) });
    let mut retry = crate::retry::CallbackRetry::new();
    let resp = loop {
        let resp = http
            .post(url)
            .header("authorization", auth)
            .json(&body)
            .send()
            .await;
        if !worth_retrying(&resp) || stop.is_cancelled() {
            break resp;
        }
        let Some(wait) = retry.after_failure() else {
            break resp;
        };
        match &resp {
            Ok(r) => {
                tracing::debug!(status = %r.status(), events = n, ?wait, "langfuse ingestion failed; trying again")
            }
            Err(e) => {
                tracing::debug!(error = %e, events = n, ?wait, "cannot reach langfuse; trying again")
            }
        }
        counter!("sluice_callback_retries_total", "callback" => "langfuse").increment(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {}
        }
    };
    match resp {
        Ok(r) if r.status().is_success() => {
            // 207: each event's own status is in `errors`.
            let rejected = r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.get("errors").and_then(Value::as_array).map(Vec::len))
                .unwrap_or(0);
            if rejected > 0 {
                tracing::warn!(rejected, "langfuse rejected callback events");
                failed("rejected", rejected);
            }
            counter!("sluice_callback_events_total", "callback" => "langfuse")
                .increment(n.saturating_sub(rejected) as u64);
        }
        Ok(r) => {
            tracing::warn!(status = %r.status(), events = n, "langfuse ingestion refused the batch");
            failed("http", n);
        }
        Err(e) => {
            tracing::warn!(error = %e, events = n, "cannot reach langfuse");
            failed("http", n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use rust_decimal::Decimal;
    use sluice_schemas::{ErrorClass, Tier};

    fn outcome(status: JobStatus) -> JobOutcome {
        JobOutcome {
            id: uuid::Uuid::now_v7(),
            owner: "key-1".into(),
            model_group: "fast".into(),
            tier: Tier::Normal,
            reply_subject: None,
            created_at: Utc::now(),
            status,
            result: serde_json::value::to_raw_value(
                &json!({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}),
            )
            .ok(),
            usage: None,
            cost: Some(Decimal::new(35, 6)),
            pricing_missing: false,
            attempts: 2,
            error_class: None,
            error_message: None,
            finished_at: Utc::now(),
            cache_hit: false,
            cost_saved: None,
        }
    }

    fn attempt(job: &JobOutcome, n: u32, error: Option<ErrorClass>) -> AttemptRecord {
        AttemptRecord {
            job_id: job.id,
            attempt: n,
            delivery: 1,
            worker: "w".into(),
            deployment: "fast-1".into(),
            provider: "openai".into(),
            model: "gpt-x".into(),
            status: if error.is_some() {
                sluice_schemas::job::AttemptStatus::Failed
            } else {
                sluice_schemas::job::AttemptStatus::Succeeded
            },
            error_class: error,
            error_message: error.map(|_| "slow down".to_string()),
            prompt_tokens: Some(10),
            completion_tokens: error.map_or(Some(5), |_| None),
            cached_tokens: None,
            cache_creation_tokens: None,
            reasoning_tokens: None,
            usage_estimated: false,
            cost: error.map_or(Some(Decimal::new(35, 6)), |_| None),
            pricing_missing: false,
            ttft_ms: Some(12.0),
            latency_ms: Some(40.0),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            dropped_params: None,
        }
    }

    #[test]
    fn a_job_is_a_trace_with_a_generation_per_call() {
        let job = outcome(JobStatus::Succeeded);
        let calls = [
            attempt(&job, 1, Some(ErrorClass::RateLimit)),
            attempt(&job, 2, None),
        ];
        let prompt = json!([{"role": "user", "content": "hello"}]);
        let events = events(
            &job,
            &calls,
            Some(Messages {
                input: Some(&prompt),
            }),
        );
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["body"]["input"], prompt);
        assert_eq!(events[0]["type"], "trace-create");
        assert_eq!(events[0]["body"]["id"], job.id.to_string());
        let failed = &events[1]["body"];
        assert_eq!(failed["level"], "ERROR");
        assert!(failed["statusMessage"]
            .as_str()
            .unwrap()
            .starts_with("rate_limit"));
        assert!(failed["output"].is_null());
        let ok = &events[2]["body"];
        assert_eq!(ok["traceId"], job.id.to_string());
        assert_eq!(
            ok["usageDetails"],
            json!({"input": 10, "output": 5, "total": 15})
        );
        assert_eq!(ok["costDetails"]["total"], 0.000035);
        assert_eq!(ok["output"]["content"], "hi");
        assert_eq!(ok["input"], prompt);
        assert_eq!(failed["input"], prompt);
        // Envelope ids differ, so Langfuse does not drop one as a duplicate.
        let ids: std::collections::HashSet<_> =
            events.iter().map(|e| e["id"].to_string()).collect();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn with_message_logging_off_neither_input_nor_output_is_sent() {
        let job = outcome(JobStatus::Succeeded);
        let events = events(&job, &[attempt(&job, 1, None)], None);
        for e in &events {
            assert!(e["body"]["input"].is_null(), "{e}");
            assert!(e["body"]["output"].is_null(), "{e}");
        }
        assert_eq!(events[1]["body"]["usageDetails"]["output"], 5);
    }

    #[test]
    fn the_noted_prompt_goes_with_the_job_unless_message_logging_is_off() {
        for redact in [false, true] {
            let (tx, mut rx) = mpsc::channel(16);
            let sender = Sender {
                tx,
                on_success: true,
                on_failure: true,
                inputs: Arc::new(Inputs {
                    redact,
                    by_job: Mutex::default(),
                }),
            };
            let job = outcome(JobStatus::Succeeded);
            let envelope: JobEnvelope = serde_json::from_value(json!({
                "id": job.id,
                "request": {"model": "fast", "messages": [{"role": "user", "content": "secret plans"}]},
            }))
            .unwrap();
            sender.inputs().note(&envelope);
            sender.offer(&job, &[attempt(&job, 1, None)]);
            let trace = rx.try_recv().unwrap();
            let generation = rx.try_recv().unwrap();
            if redact {
                assert!(!trace.to_string().contains("secret plans"), "{trace}");
                assert!(!generation.to_string().contains("secret plans"));
                assert!(generation["body"]["output"].is_null());
            } else {
                assert_eq!(generation["body"]["input"][0]["content"], "secret plans");
                assert_eq!(trace["body"]["input"][0]["content"], "secret plans");
            }
            assert!(sender.inputs.take(job.id).is_none(), "taken once");
        }
    }

    #[test]
    fn success_and_failure_lists_are_kept_apart() {
        let (tx, mut rx) = mpsc::channel(16);
        let only_success = Sender {
            tx,
            on_success: true,
            on_failure: false,
            inputs: Arc::default(),
        };
        let job = outcome(JobStatus::Failed);
        only_success.offer(&job, &[attempt(&job, 1, Some(ErrorClass::Server))]);
        assert!(
            rx.try_recv().is_err(),
            "a failure is not a success callback"
        );
        let job = outcome(JobStatus::Succeeded);
        only_success.offer(&job, &[attempt(&job, 1, None)]);
        assert_eq!(rx.try_recv().unwrap()["type"], "trace-create");
        assert_eq!(rx.try_recv().unwrap()["type"], "generation-create");
    }
}
