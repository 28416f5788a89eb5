//! A job's terminal event (`done` or `error` on `<prefix>.events.<job_id>`) as one
//! message: the worker publishes it when a job it ran ends (`worker/src/events.rs`), the
//! api's native batch driver when an upstream batch's result ends a line job
//! (`api/src/native.rs`), so subscribers cannot tell the two apart.

use async_nats::HeaderMap;
use bytes::Bytes;
use sluice_schemas::events::{HEADER_ATTEMPT, HEADER_EVENT, HEADER_SEQ};
use sluice_schemas::{DoneEvent, EncodedDone, EventKind, JobStatus};

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

/// The terminal event's kind for a job that ended `status`: `done` for a success, else
/// `error`.
pub fn terminal_kind(status: JobStatus) -> EventKind {
    if status == JobStatus::Succeeded {
        EventKind::Done
    } else {
        EventKind::Error
    }
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
    let result = done
        .result
        .as_ref()
        .map(serde_json::value::to_raw_value)
        .transpose()?;
    let encoded = EncodedDone::new(done, result.as_deref());
    let body = Bytes::from(serde_json::to_vec(&encoded)?);
    encoded_terminal_message(&encoded, body, attempt, seq, max_payload)
}

/// [`terminal_message`] for the event `done` already encoded as `body` (the worker
/// encodes it once, around the result's JSON the job row holds, for the event and the
/// job's deliveries alike). `done`'s own result is not read: a body larger than a
/// message may be is sent as `done` without one.
pub fn encoded_terminal_message(
    done: &EncodedDone<'_>,
    body: Bytes,
    attempt: u32,
    seq: u64,
    max_payload: usize,
) -> Result<TerminalMessage, serde_json::Error> {
    let kind = terminal_kind(done.status);
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_EVENT, kind.as_str());
    headers.insert(HEADER_ATTEMPT, attempt.to_string().as_str());
    headers.insert(HEADER_SEQ, seq.to_string().as_str());
    headers.insert("Nats-Msg-Id", format!("{}:done", done.job_id).as_str());
    let sent = if fits(body.len(), max_payload) {
        body.clone()
    } else {
        headers.insert(HEADER_BODY_REF, done.job_id.to_string().as_str());
        let slim = EncodedDone {
            result: None,
            ..*done
        };
        Bytes::from(serde_json::to_vec(&slim)?)
    };
    Ok(TerminalMessage {
        kind,
        headers,
        sent,
        body,
    })
}
