//! NATS: connecting, and creating or updating the streams and tier consumers.
//!
//! Everything here is idempotent and runs at every start of the api and the worker, so a
//! fresh server and a config change are handled the same way. Only features of
//! nats-server 2.9.10 are used.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use sluice_schemas::{Subjects, Tier};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("cannot set up JetStream {what}: {message}")]
    Setup { what: String, message: String },
}

/// Connects to NATS. Waits for the server for a bounded time at start-up.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| NatsError::Connect {
            url: url.to_string(),
            message: e.to_string(),
        })
}

/// Creates or updates the jobs, events and dead-letter streams.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    events_max_age: Duration,
) -> Result<(), NatsError> {
    let configs = [
        stream::Config {
            name: subjects.jobs_stream(),
            subjects: vec![subjects.jobs_all()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            description: Some("Sluice job envelopes, one subject per priority tier".into()),
            ..Default::default()
        },
        stream::Config {
            name: subjects.events_stream(),
            subjects: vec![subjects.events_all()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: events_max_age,
            description: Some("Sluice job events (chunks, retries, results), replayable".into()),
            ..Default::default()
        },
        stream::Config {
            name: subjects.dlq_stream(),
            subjects: vec![subjects.dlq()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            description: Some(
                "Sluice messages that could not be processed, with the reason".into(),
            ),
            ..Default::default()
        },
    ];
    for config in configs {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|e| NatsError::Setup {
                what: format!("stream {name}"),
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// Creates or updates the durable pull consumer of every tier; returns them highest
/// priority first.
pub async fn ensure_tier_consumers(
    js: &jetstream::Context,
    subjects: &Subjects,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> Result<Vec<(Tier, consumer::PullConsumer)>, NatsError> {
    let stream_name = subjects.jobs_stream();
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| NatsError::Setup {
            what: format!("stream {stream_name}"),
            message: e.to_string(),
        })?;
    let mut out = Vec::with_capacity(Tier::ALL.len());
    for tier in Tier::ALL {
        let name = subjects.tier_consumer(tier);
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subjects.jobs(tier),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: -1,
                max_ack_pending,
                description: Some(format!("Sluice workers, {tier} tier")),
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::Setup {
                what: format!("consumer {name}"),
                message: e.to_string(),
            })?;
        out.push((tier, consumer));
    }
    Ok(out)
}
