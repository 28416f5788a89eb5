//! Publishing a job's events on `<prefix>.events.<job_id>`.
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

use std::time::Duration;

use async_nats::header::HeaderName;
use async_nats::jetstream::{self};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use sluice_core::bodies::{fits, HEADER_BODY_REF};
use sluice_core::store::JobRow;
use sluice_core::terminal_event::{
    encoded_terminal_message, terminal_kind, terminal_message, TerminalMessage,
};
use sluice_schemas::events::{HEADER_ATTEMPT, HEADER_EVENT, HEADER_SEQ};
use sluice_schemas::openai::ChatCompletionChunk;
use sluice_schemas::{DoneEvent, EncodedDone, EventKind, RetryEvent, Subjects};
use uuid::Uuid;

use crate::providers::ChunkSink;

/// An event was not published (or not stored); the NATS or encoding error is its source.
pub type EventError = sluice_core::error::Error<EventErrorKind>;

/// Which event was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventErrorKind {
    /// The event of this kind (`chunk`, `retry`, `done`, `error`).
    #[error("cannot publish {0} event")]
    Publish(&'static str),
}

/// The event of `kind` was not published because of `source`.
fn unpublished(kind: EventKind, source: impl Into<sluice_core::error::BoxError>) -> EventError {
    EventError::new(EventErrorKind::Publish(kind.as_str()), source)
}

/// The event headers' names, built once (no validation or lookup per event).
const EVENT: HeaderName = HeaderName::from_static(HEADER_EVENT);
const ATTEMPT: HeaderName = HeaderName::from_static(HEADER_ATTEMPT);
const SEQ: HeaderName = HeaderName::from_static(HEADER_SEQ);

pub struct EventPublisher {
    js: jetstream::Context,
    nats: async_nats::Client,
    /// The job's event subject; cloning it per event only counts a reference.
    subject: Subject,
    job_id: Uuid,
    seq: u64,
    /// The server's `max_payload`, read once per job: `Client::server_info` clones the
    /// whole server description (a dozen strings) on every call.
    max_payload: usize,
}

impl EventPublisher {
    pub fn new(js: jetstream::Context, subject: String, job_id: Uuid) -> Self {
        let nats = js.client();
        EventPublisher {
            max_payload: nats.server_info().max_payload,
            nats,
            js,
            subject: Subject::from(subject),
            job_id,
            seq: 0,
        }
    }

    fn headers(&mut self, kind: EventKind, attempt: u32) -> HeaderMap {
        self.seq += 1;
        let mut h = HeaderMap::new();
        h.insert(EVENT, kind.as_str());
        h.insert(ATTEMPT, attempt.to_string());
        h.insert(SEQ, self.seq.to_string());
        h
    }

    async fn send(&mut self, kind: EventKind, attempt: u32, body: Bytes) -> Result<(), EventError> {
        let headers = self.headers(kind, attempt);
        self.nats
            .publish_with_headers(self.subject.clone(), headers, body)
            .await
            .map_err(|e| unpublished(kind, e))
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
    /// job, sent before it on the same connection) is stored. The message is the one the
    /// api's native batch driver publishes too (`sluice_core::terminal_event`).
    pub async fn terminal(&mut self, attempt: u32, done: &DoneEvent) -> Result<(), EventError> {
        self.seq += 1;
        let m = terminal_message(done, attempt, self.seq, self.max_payload)
            .map_err(|e| unpublished(terminal_kind(done.status), e))?;
        self.store(m).await
    }

    /// The terminal message of the event `done`, already encoded as `body`, for
    /// [`EventPublisher::store`]: made apart from the publish, so a job's task holds
    /// only the message while it waits for the store (see `clippy.toml`'s future size).
    pub fn encoded_terminal(
        &mut self,
        attempt: u32,
        done: &EncodedDone<'_>,
        body: Bytes,
    ) -> Result<TerminalMessage, EventError> {
        self.seq += 1;
        encoded_terminal_message(done, body, attempt, self.seq, self.max_payload)
            .map_err(|e| unpublished(terminal_kind(done.status), e))
    }

    /// Publishes the terminal message `m` through JetStream and waits until it (and so
    /// every earlier event of this job, sent before it on the same connection) is stored.
    pub async fn store(&mut self, m: TerminalMessage) -> Result<(), EventError> {
        self.js
            .publish_with_headers(self.subject.clone(), m.headers, m.sent)
            .await
            .map_err(|e| unpublished(m.kind, e))?
            .await
            .map_err(|e| unpublished(m.kind, e))?;
        Ok(())
    }
}

/// Publishes the terminal event of a job that has ended, rebuilt from its row: for a
/// redelivery of a job that already finished (`worker/src/job/outcome.rs`) and for a job
/// whose queue message is gone (`worker/src/reconcile.rs`). Tries up to `tries` times, a
/// second apart; the error of the last try.
pub async fn publish_ended(
    js: &jetstream::Context,
    subjects: &Subjects,
    row: &JobRow,
    tries: u32,
) -> Result<(), EventError> {
    let done = row.done_event();
    let mut publisher = EventPublisher::new(js.clone(), subjects.events(row.id), row.id);
    let mut tried = 1;
    loop {
        match publisher.terminal(row.attempts, &done).await {
            Ok(()) => return Ok(()),
            Err(e) if tried >= tries => return Err(e),
            Err(_) => tried += 1,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The message for a job's reply subject carrying its terminal event `body`: as is when
/// it fits `max_payload`, else the event without its `result` and `Sluice-Body-Ref`
/// naming the job whose row holds it whole (see `sluice_core::bodies`).
pub fn reply_message(job_id: Uuid, body: Bytes, max_payload: usize) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    let done = serde_json::from_slice::<DoneEvent>(&body).ok();
    let kind = match &done {
        Some(d) if d.status != sluice_schemas::JobStatus::Succeeded => EventKind::Error,
        _ => EventKind::Done,
    };
    headers.insert(HEADER_EVENT, kind.as_str());
    if fits(body.len(), max_payload) {
        return (headers, body);
    }
    headers.insert(HEADER_BODY_REF, job_id.to_string().as_str());
    let slim = done.map(|d| DoneEvent { result: None, ..d });
    let slim = slim
        .and_then(|d| serde_json::to_vec(&d).ok())
        .unwrap_or_default();
    (headers, Bytes::from(slim))
}

/// Forwards each chunk of one attempt as a `chunk` event.
pub struct EventSink<'a> {
    pub publisher: &'a mut EventPublisher,
    pub attempt: u32,
}

impl ChunkSink for EventSink<'_> {
    async fn chunk(&mut self, chunk: &ChatCompletionChunk, raw: Option<Bytes>) {
        // Owned, so a `Bytes` made from the payload's `String` is published without a copy
        // (a clone of such a `Bytes` would allocate its shared form instead).
        let body = match raw {
            Some(raw) => raw,
            None => match serde_json::to_vec(chunk) {
                Ok(b) => Bytes::from(b),
                Err(_) => return,
            },
        };
        let max_payload = self.publisher.max_payload;
        if fits(body.len(), max_payload) {
            self.publisher.chunk(self.attempt, body).await;
            return;
        }
        // One chunk larger than a message may be: its text goes out in slices, each a
        // chunk of its own, so streaming subscribers still see every character.
        for piece in split_chunk(chunk, max_payload / 2) {
            if let Ok(b) = serde_json::to_vec(&piece) {
                self.publisher.chunk(self.attempt, Bytes::from(b)).await;
            }
        }
    }
}

/// `chunk` as several chunks whose text fields (content, reasoning, refusal) are at most
/// `piece` bytes each; the first keeps the role and tool calls, the last the finish
/// reason and usage. Concatenating their deltas gives the original's.
fn split_chunk(chunk: &ChatCompletionChunk, piece: usize) -> Vec<ChatCompletionChunk> {
    use sluice_schemas::openai::{ChunkChoice, Delta};
    let piece = piece.max(1024);
    let mut out = Vec::new();
    for c in &chunk.choices {
        let head = Delta {
            role: c.delta.role,
            tool_calls: c.delta.tool_calls.clone(),
            ..Delta::default()
        };
        let mut deltas = vec![head];
        let texts: [(&Option<String>, SetText); 3] = [
            (&c.delta.content, |d, t| d.content = Some(t)),
            (&c.delta.reasoning_content, |d, t| {
                d.reasoning_content = Some(t)
            }),
            (&c.delta.refusal, |d, t| d.refusal = Some(t)),
        ];
        for (text, set) in texts {
            for slice in slices(text.as_deref().unwrap_or_default(), piece) {
                let mut d = Delta::default();
                set(&mut d, slice.to_string());
                deltas.push(d);
            }
        }
        let last = deltas.len() - 1;
        for (i, delta) in deltas.into_iter().enumerate() {
            out.push(ChatCompletionChunk {
                choices: vec![ChunkChoice {
                    index: c.index,
                    delta,
                    finish_reason: if i == last {
                        c.finish_reason.clone()
                    } else {
                        None
                    },
                }],
                usage: None,
                id: chunk.id.clone(),
                object: chunk.object.clone(),
                created: chunk.created,
                model: chunk.model.clone(),
            });
        }
    }
    if let Some(last) = out.last_mut() {
        last.usage = chunk.usage;
    }
    out
}

/// Puts one text field into a delta.
type SetText = fn(&mut sluice_schemas::openai::Delta, String);

/// `s` in pieces of at most `n` bytes, cut at character boundaries.
fn slices(s: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut end = n.min(rest.len());
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (a, b) = rest.split_at(end);
        out.push(a);
        rest = b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_chunk_splits_into_slices_that_add_up_to_it() {
        let text = "é".repeat(5000);
        let chunk: ChatCompletionChunk = serde_json::from_value(serde_json::json!({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        }))
        .unwrap();
        let parts = split_chunk(&chunk, 1024);
        assert!(parts.len() > 5);
        let joined: String = parts
            .iter()
            .filter_map(|p| p.choices[0].delta.content.clone())
            .collect();
        assert_eq!(joined, text);
        assert!(parts
            .iter()
            .all(|p| serde_json::to_vec(p).unwrap().len() < 2048));
        assert_eq!(
            parts.last().unwrap().choices[0].finish_reason.as_deref(),
            Some("stop")
        );
        assert!(parts.last().unwrap().usage.is_some());
        assert!(parts[0].choices[0].delta.role.is_some());
    }
}
