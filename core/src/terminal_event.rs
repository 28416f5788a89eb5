//! A job's terminal event (`done` or `error` on `<prefix>.events.<job_id>`) as one
//! message: the worker publishes it when a job it ran ends (`worker/src/events.rs`), the
//! api's native batch driver when an upstream batch's result ends a line job
//! (`api/src/native.rs`), so subscribers cannot tell the two apart.

use async_nats::HeaderMap;
use bytes::Bytes;
use sluice_schemas::events::{HEADER_ATTEMPT, HEADER_EVENT, HEADER_SEQ};
use sluice_schemas::{DoneEvent, EncodedDone, EventKind, JobStatus};
use uuid::Uuid;

use crate::bodies::{fits, HEADER_BODY_REF};

/// A terminal event ready to publish.
pub struct TerminalMessage {
    /// `done` for a success, else `error`.
    pub kind: EventKind,
    pub headers: HeaderMap,
    /// What goes on the wire: the event, or without its `result` (and
    /// `Sluice-Body-Ref` naming the job, whose row holds it) when it would not fit.
    pub sent: Bytes,
    /// The whole event.
    pub body: Bytes,
}

/// The terminal event `done` of its job after `attempt` calls, as event number `seq` of
/// the job's events, for a NATS server taking `max_payload` bytes a message. It carries
/// `Nats-Msg-Id: <job>:done`, so publishing it again is deduplicated.
pub fn terminal_message(
    done: &DoneEvent,
    attempt: u32,
    seq: u64,
    max_payload: usize,
) -> Result<TerminalMessage, serde_json::Error> {
    let body = Bytes::from(serde_json::to_vec(done)?);
    let slim = || {
        serde_json::to_vec(&DoneEvent {
            result: None,
            ..done.clone()
        })
    };
    message(
        body,
        done.job_id,
        done.status,
        attempt,
        seq,
        max_payload,
        slim,
    )
}

/// [`terminal_message`] for the event `done` already encoded as `body` (the worker
/// encodes it once, around the result's JSON the job row holds, for the event and the
/// job's deliveries alike).
pub fn encoded_terminal_message(
    done: &EncodedDone<'_>,
    body: Bytes,
    attempt: u32,
    seq: u64,
    max_payload: usize,
) -> Result<TerminalMessage, serde_json::Error> {
    let slim = || {
        serde_json::to_vec(&EncodedDone {
            result: None,
            ..*done
        })
    };
    message(
        body,
        done.job_id,
        done.status,
        attempt,
        seq,
        max_payload,
        slim,
    )
}

/// The message of the event `body` of job `job_id`; `slim` encodes the event without its
/// result, for a body larger than a message may be.
fn message(
    body: Bytes,
    job_id: Uuid,
    status: JobStatus,
    attempt: u32,
    seq: u64,
    max_payload: usize,
    slim: impl FnOnce() -> Result<Vec<u8>, serde_json::Error>,
) -> Result<TerminalMessage, serde_json::Error> {
    let kind = if status == JobStatus::Succeeded {
        EventKind::Done
    } else {
        EventKind::Error
    };
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_EVENT, kind.as_str());
    headers.insert(HEADER_ATTEMPT, attempt.to_string().as_str());
    headers.insert(HEADER_SEQ, seq.to_string().as_str());
    headers.insert("Nats-Msg-Id", format!("{job_id}:done").as_str());
    let sent = if fits(body.len(), max_payload) {
        body.clone()
    } else {
        headers.insert(HEADER_BODY_REF, job_id.to_string().as_str());
        Bytes::from(slim()?)
    };
    Ok(TerminalMessage {
        kind,
        headers,
        sent,
        body,
    })
}
