//! Bounds on long-lived event streams (SSE: `GET /v1/jobs/{id}/events`, streamed
//! `POST /v1/chat/completions`): at most `sluice.safety.max_streams_per_key` open at once
//! per key (429 beyond), and at most `sluice.safety.max_stream_bytes` sent by one stream
//! before it ends with an error event.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::response::sse::Event;
use futures::{Stream, StreamExt};

use crate::errors::ApiError;

/// Open streams per owner.
#[derive(Default)]
pub struct StreamCounts {
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream; dropping it (the client went away, the stream ended) frees the place.
pub struct StreamPermit {
    counts: Arc<StreamCounts>,
    owner: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.owner);
            }
        }
    }
}

impl StreamCounts {
    /// A place for one more stream of `owner`, or 429 when it has `max` open.
    pub fn acquire(self: &Arc<Self>, owner: &str, max: usize) -> Result<StreamPermit, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(owner.to_string()).or_insert(0);
        if *n >= max {
            return Err(ApiError::too_many_streams(max));
        }
        *n += 1;
        Ok(StreamPermit {
            counts: Arc::clone(self),
            owner: owner.to_string(),
        })
    }
}

/// `events`, holding `permit` while it runs, ended with an `error` event and `[DONE]` once
/// it has sent more than `max_bytes` of data.
pub fn bounded<S>(
    events: S,
    permit: StreamPermit,
    max_bytes: u64,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static
where
    S: Stream<Item = (Result<Event, Infallible>, usize)> + Send + 'static,
{
    let mut sent: u64 = 0;
    let mut over = false;
    events
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .flat_map(move |item| {
            let _hold = &permit;
            let out: Vec<Result<Event, Infallible>> = match item {
                _ if over => Vec::new(),
                Some((event, len)) => {
                    sent = sent.saturating_add(len as u64);
                    if sent > max_bytes {
                        over = true;
                        let body = serde_json::json!({"error": {
                            "message": format!("the event stream passed its limit of {max_bytes} bytes; read the result at GET /v1/jobs/{{id}}"),
                            "type": "invalid_request_error", "param": null, "code": "stream_too_large"}});
                        vec![
                            Ok(Event::default().event("error").data(body.to_string())),
                            Ok(Event::default().data("[DONE]")),
                        ]
                    } else {
                        vec![event]
                    }
                }
                None => Vec::new(),
            };
            futures::stream::iter(out)
        })
}
