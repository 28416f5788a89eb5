//! Publishing a job's events on `<prefix>.events.<job_id>` (DESIGN §3).
//!
//! Chunks (and retry events) are core-NATS publishes on the event subject: the events
//! stream stores them like any publish, a chunk costs one buffered write and no ack
//! message, and no per-job state waits on them. (Holding JetStream ack futures per job
//! deadlocked a busy worker: async-nats allows 5,000 unacked publishes per context and
//! frees a permit only when its future is awaited or dropped, so thousands of streaming
//! jobs each holding a few futures while waiting for a permit stopped for good.) All
//! events of a job go out on one connection in order, so the terminal event — published
//! through JetStream and awaited — is stored after every event before it. It carries
//! `Nats-Msg-Id: <job>:done`, so republishing it after a redelivery is deduplicated.

use async_nats::jetstream::{self};
use async_nats::HeaderMap;
use bytes::Bytes;
use sluice_core::bodies::{fits, HEADER_BODY_REF};
use sluice_schemas::events::{HEADER_ATTEMPT, HEADER_EVENT, HEADER_SEQ};
use sluice_schemas::openai::ChatCompletionChunk;
use sluice_schemas::{DoneEvent, EventKind, RetryEvent};
use uuid::Uuid;

use crate::providers::ChunkSink;

#[derive(Debug, thiserror::Error)]
#[error("cannot publish {kind} event: {message}")]
pub struct EventError {
    kind: &'static str,
    message: String,
}

pub struct EventPublisher {
    js: jetstream::Context,
    nats: async_nats::Client,
    subject: String,
    job_id: Uuid,
    seq: u64,
}

impl EventPublisher {
    pub fn new(js: jetstream::Context, subject: String, job_id: Uuid) -> Self {
        EventPublisher {
            nats: js.client(),
            js,
            subject,
            job_id,
            seq: 0,
        }
    }

    fn headers(&mut self, kind: EventKind, attempt: u32) -> HeaderMap {
        self.seq += 1;
        let mut h = HeaderMap::new();
        h.insert(HEADER_EVENT, kind.as_str());
        h.insert(HEADER_ATTEMPT, attempt.to_string().as_str());
        h.insert(HEADER_SEQ, self.seq.to_string().as_str());
        h
    }

    async fn send(&mut self, kind: EventKind, attempt: u32, body: Bytes) -> Result<(), EventError> {
        let headers = self.headers(kind, attempt);
        self.nats
            .publish_with_headers(self.subject.clone(), headers, body)
            .await
            .map_err(|e| EventError {
                kind: kind.as_str(),
                message: e.to_string(),
            })
    }

    pub async fn chunk(&mut self, attempt: u32, body: Bytes) {
        if let Err(e) = self.send(EventKind::Chunk, attempt, body).await {
            tracing::warn!(job_id = %self.job_id, error = %e, "chunk event not published");
        }
    }

    pub async fn retry(&mut self, event: &RetryEvent) {
        let body = match serde_json::to_vec(event) {
            Ok(b) => Bytes::from(b),
            Err(_) => return,
        };
        if let Err(e) = self.send(EventKind::Retry, event.attempt, body).await {
            tracing::warn!(job_id = %self.job_id, error = %e, "retry event not published");
        }
    }

    /// Publishes the terminal event and waits until it (and so every earlier event of this
    /// job, sent before it on the same connection) is stored.
    pub async fn terminal(&mut self, attempt: u32, done: &DoneEvent) -> Result<Bytes, EventError> {
        let kind = if done.status == sluice_schemas::JobStatus::Succeeded {
            EventKind::Done
        } else {
            EventKind::Error
        };
        let body = Bytes::from(serde_json::to_vec(done).map_err(|e| EventError {
            kind: kind.as_str(),
            message: e.to_string(),
        })?);
        let mut headers = self.headers(kind, attempt);
        headers.insert("Nats-Msg-Id", format!("{}:done", self.job_id).as_str());
        let fail = |e: String| EventError {
            kind: kind.as_str(),
            message: e,
        };
        let sent = self.fitted(&mut headers, &body, done);
        self.js
            .publish_with_headers(self.subject.clone(), headers, sent)
            .await
            .map_err(|e| fail(e.to_string()))?
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(body)
    }
}

impl EventPublisher {
    /// `body` if it fits the server's `max_payload`; else the event without its result,
    /// with `Sluice-Body-Ref` naming the job whose row holds the whole event (see
    /// `sluice_core::bodies`).
    fn fitted(&self, headers: &mut HeaderMap, body: &Bytes, done: &DoneEvent) -> Bytes {
        if fits(body.len(), self.nats.server_info().max_payload) {
            return body.clone();
        }
        headers.insert(HEADER_BODY_REF, self.job_id.to_string().as_str());
        let slim = DoneEvent {
            result: None,
            ..done.clone()
        };
        Bytes::from(serde_json::to_vec(&slim).unwrap_or_default())
    }

    /// Publishes the terminal event `body` (of `done`) on a job's reply subject, by
    /// reference when it is larger than a message may be.
    pub async fn reply(
        &self,
        subject: &str,
        body: &Bytes,
        done: &DoneEvent,
    ) -> Result<(), async_nats::PublishError> {
        let mut headers = HeaderMap::new();
        let kind = if done.status == sluice_schemas::JobStatus::Succeeded {
            EventKind::Done
        } else {
            EventKind::Error
        };
        headers.insert(HEADER_EVENT, kind.as_str());
        let sent = self.fitted(&mut headers, body, done);
        self.nats
            .publish_with_headers(subject.to_string(), headers, sent)
            .await
    }
}

/// Forwards each chunk of one attempt as a `chunk` event.
pub struct EventSink<'a> {
    pub publisher: &'a mut EventPublisher,
    pub attempt: u32,
}

impl ChunkSink for EventSink<'_> {
    async fn chunk(&mut self, chunk: &ChatCompletionChunk, raw: Option<&str>) {
        let body = match raw {
            Some(raw) => Bytes::copy_from_slice(raw.as_bytes()),
            None => match serde_json::to_vec(chunk) {
                Ok(b) => Bytes::from(b),
                Err(_) => return,
            },
        };
        self.publisher.chunk(self.attempt, body).await;
    }
}
