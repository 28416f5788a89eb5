//! Following a job's events on NATS (`<prefix>.events.<id>`), for the SSE bridge
//! (`routes/jobs.rs`) and the synchronous chat facade (`routes/chat.rs`), and ending
//! those long-lived streams when the api shuts down ([`until_shutdown`]).

use std::convert::Infallible;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use axum::response::sse::Event;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::errors::ApiError;
use crate::AppState;

/// Follows a job's events from the first one (an ordered consumer; dropped with it).
pub(crate) async fn follow(
    state: &AppState,
    id: Uuid,
) -> Result<consumer::push::Ordered, ApiError> {
    let stream = state
        .js
        .get_stream(state.subjects.events_stream())
        .await
        .map_err(|e| ApiError::unavailable(format!("event stream unavailable: {e}")))?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            filter_subject: state.subjects.events(id),
            deliver_policy: DeliverPolicy::All,
            deliver_subject: state.nats.new_inbox(),
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot follow job events: {e}")))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot follow job events: {e}")))?;

    Ok(messages)
}

/// Ends an SSE stream when the api shuts down, so a drain is not held up by clients that
/// follow jobs which have not finished. The client is told with a comment (and no
/// `[DONE]`): the job goes on, and `/v1/jobs/{id}/events` replays it from the start.
pub(crate) fn until_shutdown<S>(
    events: S,
    shutdown: &CancellationToken,
    id: Uuid,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let stopped = shutdown.clone();
    let notice = futures::stream::once(async move {
        stopped.is_cancelled().then(|| {
            Ok(Event::default().comment(format!(
                "sluice: the api is shutting down; the job goes on, follow it at /v1/jobs/{id}/events"
            )))
        })
    })
    .filter_map(futures::future::ready);
    events
        .take_until(shutdown.clone().cancelled_owned())
        .chain(notice)
}
