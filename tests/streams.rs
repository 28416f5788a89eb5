//! Start-up creates the streams that are missing and leaves existing ones as the operator
//! set them: an edited stream keeps its edits, and replicas are never lowered.

use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream;
use sluice_schemas::Subjects;
use sluice_testkit::servers::{services, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_creates_what_is_missing_and_keeps_operator_edits() -> Result<()> {
    let client = async_nats::connect(&services().nats_url).await?;
    let js = jetstream::new(client);
    let subjects = Subjects::new(&unique("streams"));
    let events_age = Duration::from_secs(3600);

    sluice_core::nats::ensure_streams(&js, &subjects, events_age, 1).await?;
    for name in [
        subjects.jobs_stream(),
        subjects.events_stream(),
        subjects.dlq_stream(),
    ] {
        let info = js.get_stream(&name).await?.info().await?.clone();
        assert_eq!(info.config.num_replicas, 1, "{name}");
    }

    // An operator caps the jobs stream and keeps events for a day instead of an hour.
    let mut jobs = js
        .get_stream(subjects.jobs_stream())
        .await?
        .info()
        .await?
        .config
        .clone();
    jobs.max_messages = 1_000_000;
    js.update_stream(jobs).await?;
    let mut events = js
        .get_stream(subjects.events_stream())
        .await?
        .info()
        .await?
        .config
        .clone();
    events.max_age = Duration::from_secs(86_400);
    js.update_stream(events).await?;
    // The dead-letter stream is deleted: start-up brings it back.
    js.delete_stream(subjects.dlq_stream()).await?;

    sluice_core::nats::ensure_streams(&js, &subjects, events_age, 1).await?;
    let jobs = js
        .get_stream(subjects.jobs_stream())
        .await?
        .info()
        .await?
        .clone();
    assert_eq!(
        jobs.config.max_messages, 1_000_000,
        "the operator's cap stays"
    );
    let events = js
        .get_stream(subjects.events_stream())
        .await?
        .info()
        .await?
        .clone();
    assert_eq!(
        events.config.max_age,
        Duration::from_secs(86_400),
        "drift is reported, not overwritten"
    );
    assert!(js.get_stream(subjects.dlq_stream()).await.is_ok());

    // Invalid replica counts are refused by the config.
    let bad = sluice_core::Config::from_yaml(
        "sluice:\n  nats:\n    replicas: 2\n",
        Some("bad.yaml".into()),
        &|_: &str| None,
    );
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("sluice.nats.replicas"));
    Ok(())
}
