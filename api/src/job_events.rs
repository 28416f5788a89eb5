//! Following a job's events on NATS (`<prefix>.events.<id>`), for the SSE bridge
//! (`routes/jobs.rs`) and the synchronous chat facade (`routes/chat.rs`).

use async_nats::jetstream::consumer::{self, DeliverPolicy};
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
