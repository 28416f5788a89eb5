//! The CLI's client of the Sluice API (it lives in the binary, not the api crate), used by the `sluice submit` and `sluice tail`
//! commands: submit a job, follow its events, print tokens as they arrive.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use sluice_schemas::openai::ChatCompletionChunk;
use sluice_schemas::sse::{SseEvent, SseParser};
use sluice_schemas::DoneEvent;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Sluice API at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the API answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from the API: {0}")]
    Protocol(String),
}

pub struct Client {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

/// What following a job printed and ended with.
pub struct Followed {
    pub done: Option<DoneEvent>,
    pub chunks: usize,
}

impl Client {
    pub fn new(base: &str, key: Option<String>) -> Self {
        Client {
            base: base.trim_end_matches('/').to_string(),
            key,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    fn connect_error(&self, e: reqwest::Error) -> ClientError {
        ClientError::Connect {
            url: self.base.clone(),
            message: e.to_string(),
        }
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no error message")
            .to_string();
        Err(ClientError::Api { status, message })
    }

    /// Submits a job body (`POST /v1/jobs`); returns the job id.
    pub async fn submit(
        &self,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Uuid, ClientError> {
        let mut req = self
            .auth(self.http.post(format!("{}/v1/jobs", self.base)))
            .json(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = Self::check(req.send().await.map_err(|e| self.connect_error(e))?).await?;
        let v: Value = resp
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        v["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| ClientError::Protocol(format!("no job id in {v}")))
    }

    /// Follows `GET /v1/jobs/{id}/events` to the end, writing content deltas to `out` as
    /// they arrive (a retry is announced so the reader knows earlier text is void).
    pub async fn follow(&self, id: Uuid, out: &mut dyn Write) -> Result<Followed, ClientError> {
        let resp = self
            .auth(self.http.get(format!("{}/v1/jobs/{id}/events", self.base)))
            .send()
            .await
            .map_err(|e| self.connect_error(e))?;
        let mut body = Self::check(resp).await?.bytes_stream();
        let mut parser = SseParser::new();
        let mut events: Vec<SseEvent> = Vec::new();
        let mut followed = Followed {
            done: None,
            chunks: 0,
        };
        while let Some(bytes) = body.next().await {
            let bytes = bytes.map_err(|e| ClientError::Protocol(e.to_string()))?;
            parser
                .feed(&bytes, &mut events)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            for ev in events.drain(..) {
                match ev.event.as_deref() {
                    None if ev.data == "[DONE]" => return Ok(followed),
                    None => {
                        if let Ok(chunk) = serde_json::from_str::<ChatCompletionChunk>(&ev.data) {
                            followed.chunks += 1;
                            for c in &chunk.choices {
                                if let Some(t) = &c.delta.content {
                                    let _ = out.write_all(t.as_bytes());
                                    let _ = out.flush();
                                }
                            }
                        }
                    }
                    Some("retry") => {
                        let _ = writeln!(out, "\n[retrying: {}]", ev.data);
                    }
                    Some("done") | Some("error") => {
                        followed.done = serde_json::from_str(&ev.data).ok();
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(followed)
    }
}

/// Outcome of [`Client::run_many`].
#[derive(Debug, Default)]
pub struct ManySummary {
    pub succeeded: usize,
    pub failed: usize,
    /// Submit-to-result time of each job, sorted.
    pub latencies: Vec<Duration>,
    pub cost: rust_decimal::Decimal,
    /// Jobs whose cost is unknown (no price configured).
    pub cost_unknown: usize,
}

impl ManySummary {
    /// The `q` quantile (0.0–1.0) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }
}

impl Client {
    /// Submits `n` copies of `body` (`concurrency` at a time) and waits for every result.
    pub async fn run_many(
        &self,
        body: &Value,
        n: usize,
        concurrency: usize,
    ) -> Result<ManySummary, ClientError> {
        let results = futures::stream::iter(0..n)
            .map(|_| async move {
                let start = std::time::Instant::now();
                let id = self.submit(body, None).await?;
                let followed = self.follow(id, &mut std::io::sink()).await?;
                Ok::<_, ClientError>((start.elapsed(), followed.done))
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        let mut summary = ManySummary::default();
        for r in results {
            let (latency, done) = r?;
            summary.latencies.push(latency);
            match done {
                Some(d) if d.status == sluice_schemas::JobStatus::Succeeded => {
                    summary.succeeded += 1;
                    match d.cost {
                        Some(c) => summary.cost += c,
                        None => summary.cost_unknown += 1,
                    }
                }
                _ => summary.failed += 1,
            }
        }
        summary.latencies.sort();
        Ok(summary)
    }
}

/// Operations: the queue view and virtual keys (`sluice queue`, `sluice keys`).
impl Client {
    async fn send_json(&self, req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let resp = self
            .auth(req)
            .send()
            .await
            .map_err(|e| self.connect_error(e))?;
        Self::check(resp)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `GET /v1/queue`
    pub async fn queue(&self) -> Result<sluice_schemas::ops::QueueView, ClientError> {
        let v = self
            .send_json(self.http.get(format!("{}/v1/queue", self.base)))
            .await?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST /v1/keys`; the answer holds the key, shown this once.
    pub async fn create_key(
        &self,
        settings: &sluice_core::keys::KeySettings,
    ) -> Result<Value, ClientError> {
        self.send_json(
            self.http
                .post(format!("{}/v1/keys", self.base))
                .json(settings),
        )
        .await
    }

    /// `GET /v1/keys`
    pub async fn list_keys(&self) -> Result<Value, ClientError> {
        self.send_json(self.http.get(format!("{}/v1/keys", self.base)))
            .await
    }

    /// `GET /v1/spend`
    pub async fn spend(
        &self,
        group_by: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut query = vec![("group_by", group_by)];
        query.extend(from.map(|f| ("from", f)));
        query.extend(to.map(|t| ("to", t)));
        self.send_json(
            self.http
                .get(format!("{}/v1/spend", self.base))
                .query(&query),
        )
        .await
    }

    /// `GET /v1/jobs` with filters and cursor (`sluice jobs`, `src/jobs.rs`).
    pub async fn list_jobs(&self, query: &[(&str, String)]) -> Result<Value, ClientError> {
        self.send_json(self.http.get(format!("{}/v1/jobs", self.base)).query(query))
            .await
    }

    /// `DELETE /v1/keys/{id}`
    pub async fn delete_key(&self, id: &str) -> Result<Value, ClientError> {
        self.send_json(self.http.delete(format!("{}/v1/keys/{id}", self.base)))
            .await
    }
}

/// The Batch API, for `sluice batch`.
impl Client {
    async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let v = self.send_json(req).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST /v1/files` with `purpose=batch`, streaming the file from disk.
    pub async fn upload_batch_file(
        &self,
        path: &std::path::Path,
    ) -> Result<sluice_schemas::batch::FileObject, ClientError> {
        use tokio::io::AsyncReadExt;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Protocol(format!("cannot open {}: {e}", path.display())))?;
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let chunks = futures::stream::try_unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 256 * 1024];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            buf.truncate(n);
            Ok(Some((bytes::Bytes::from(buf), file)))
        });
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "input.jsonl".into());
        let part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(chunks), len)
                .file_name(name);
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", part);
        self.typed(
            self.http
                .post(format!("{}/v1/files", self.base))
                .multipart(form),
        )
        .await
    }

    /// `POST /v1/batches`
    pub async fn create_batch(
        &self,
        body: &Value,
    ) -> Result<sluice_schemas::batch::Batch, ClientError> {
        self.typed(
            self.http
                .post(format!("{}/v1/batches", self.base))
                .json(body),
        )
        .await
    }

    /// `GET /v1/batches/{id}`
    pub async fn batch(&self, id: &str) -> Result<sluice_schemas::batch::Batch, ClientError> {
        self.typed(self.http.get(format!("{}/v1/batches/{id}", self.base)))
            .await
    }

    /// `POST /v1/batches/{id}/cancel`
    pub async fn cancel_batch(
        &self,
        id: &str,
    ) -> Result<sluice_schemas::batch::Batch, ClientError> {
        self.typed(
            self.http
                .post(format!("{}/v1/batches/{id}/cancel", self.base)),
        )
        .await
    }

    /// Streams `GET /v1/files/{id}/content` into `out`; returns the bytes written.
    pub async fn download_file(
        &self,
        id: &str,
        out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let resp = self
            .auth(
                self.http
                    .get(format!("{}/v1/files/{id}/content", self.base)),
            )
            .send()
            .await
            .map_err(|e| self.connect_error(e))?;
        let mut body = Self::check(resp).await?.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ClientError::Protocol(e.to_string()))?;
            out.write_all(&chunk)
                .await
                .map_err(|e| ClientError::Protocol(format!("cannot write: {e}")))?;
            n += chunk.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| ClientError::Protocol(format!("cannot write: {e}")))?;
        Ok(n)
    }
}

/// A spend report as a text table, for `sluice spend`.
pub fn spend_table(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "spend by {} from {} to {}",
        v["group_by"].as_str().unwrap_or("?"),
        v["from"].as_str().unwrap_or("?"),
        v["to"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "{:<36} {:>14} {:>8} {:>8} {:>12} {:>12} {:>9}",
        "group", "cost USD", "calls", "jobs", "prompt tok", "output tok", "unpriced"
    );
    for r in v["data"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<36} {:>14.6} {:>8} {:>8} {:>12} {:>12} {:>9}",
            r["group"].as_str().unwrap_or(""),
            r["cost"].as_f64().unwrap_or(0.0),
            r["calls"],
            r["jobs"],
            r["prompt_tokens"],
            r["completion_tokens"],
            r["unpriced_calls"],
        );
    }
    let _ = writeln!(out, "total ${:.6}", v["total_cost"].as_f64().unwrap_or(0.0));
    out
}

/// The queue view as a text table, for `sluice queue`.
pub fn queue_table(view: &sluice_schemas::ops::QueueView) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:>9} {:>9} {:>11} {:>11} {:>8} {:>10}",
        "TIER", "DEPTH", "PENDING", "ACK_PENDING", "REDELIVERED", "WAITING", "OLDEST"
    );
    for t in &view.tiers {
        let oldest = t
            .oldest_age_seconds
            .map(|s| format!("{s:.1}s"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<9} {:>9} {:>9} {:>11} {:>11} {:>8} {:>10}",
            t.tier.as_str(),
            t.depth,
            t.pending,
            t.ack_pending,
            t.redelivered,
            t.waiting,
            oldest
        );
    }
    let _ = writeln!(out);
    if view.workers.is_empty() {
        let _ = writeln!(
            out,
            "no workers seen in the last {}s",
            sluice_api::workers::STALE_AFTER.as_secs()
        );
    } else {
        let _ = writeln!(
            out,
            "{:<32} {:>9} {:>9} {:>9} {:>10}",
            "WORKER", "IN_FLIGHT", "CAPACITY", "DRAINING", "LAST_SEEN"
        );
        for w in &view.workers {
            let _ = writeln!(
                out,
                "{:<32} {:>9} {:>9} {:>9} {:>9.1}s",
                w.worker,
                w.in_flight,
                w.capacity,
                if w.draining { "yes" } else { "no" },
                w.last_seen_seconds
            );
        }
    }
    out
}
