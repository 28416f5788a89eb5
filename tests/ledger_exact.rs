//! The ledger is exact under redelivery: the job row numbers every provider call, so two
//! deliveries of one job never share an attempt number, a delivery never overwrites
//! another's rows, a late deferral never resets a row another delivery runs, and the
//! calls of a job across all its deliveries are bounded. A batch that claims some jobs
//! and ends others writes both.

use anyhow::Result;
use chrono::Utc;
use sluice_core::store::{
    AttemptRecord, AttemptStarted, JobDeferred, JobOutcome, LedgerEntry, Store, Written,
};
use sluice_schemas::{AttemptStatus, JobStatus};
use sluice_testkit::TestEnv;
use uuid::Uuid;

fn started(job_id: Uuid, delivery: u32, worker: &str, max_calls: u32) -> LedgerEntry {
    LedgerEntry::Started(AttemptStarted {
        job_id,
        owner: "master".into(),
        model_group: "fast".into(),
        tier: sluice_schemas::Tier::Normal,
        reply_subject: None,
        created_at: Utc::now(),
        delivery,
        worker: worker.into(),
        deployment: "fast-0".into(),
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        started_at: Utc::now(),
        max_calls,
        reserved_cost: None,
    })
}

fn finished_attempt(job_id: Uuid, attempt: u32, delivery: u32, worker: &str) -> AttemptRecord {
    AttemptRecord {
        job_id,
        attempt,
        delivery,
        worker: worker.into(),
        deployment: "fast-0".into(),
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        status: AttemptStatus::Succeeded,
        error_class: None,
        error_message: None,
        prompt_tokens: Some(10),
        completion_tokens: Some(5),
        cached_tokens: Some(0),
        cache_creation_tokens: Some(0),
        reasoning_tokens: Some(0),
        usage_estimated: false,
        cost: None,
        pricing_missing: true,
        ttft_ms: None,
        latency_ms: Some(1.0),
        started_at: Utc::now(),
        finished_at: Utc::now(),
        dropped_params: None,
    }
}

async fn claim(store: &Store, entry: LedgerEntry) -> Result<Written> {
    Ok(store.write_ledger(&[entry]).await?[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_of_one_job_get_distinct_attempt_numbers() -> Result<()> {
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    let job = Uuid::now_v7();
    // Eight deliveries (eight workers) start a call of the same job at the same time.
    let claims = (1..=8).map(|d| {
        let store = store.clone();
        async move { claim(&store, started(job, d, &format!("w{d}"), 100)).await }
    });
    let mut numbers = Vec::new();
    for c in futures::future::join_all(claims).await {
        match c? {
            Written::Claimed(n) => numbers.push(n),
            other => panic!("every start is claimed: {other:?}"),
        }
    }
    numbers.sort();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>(), "one number per call");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE job_id = $1")
        .bind(job)
        .fetch_one(store.pool())
        .await?;
    assert_eq!(rows, 8, "every provider call has its own row");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_never_overwrites_another_deliverys_attempt_row() -> Result<()> {
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    let job = Uuid::now_v7();
    assert_eq!(
        claim(&store, started(job, 1, "a", 10)).await?,
        Written::Claimed(1)
    );
    assert_eq!(
        claim(&store, started(job, 2, "b", 10)).await?,
        Written::Claimed(2)
    );
    // Delivery 1 writes a result for attempt 2, which delivery 2 runs: it is not taken.
    store
        .write_ledger(&[LedgerEntry::Attempts(vec![finished_attempt(
            job, 2, 1, "a",
        )])])
        .await?;
    let (delivery, worker, status): (i32, String, String) = sqlx::query_as(
        "SELECT delivery, worker, status FROM job_attempts WHERE job_id = $1 AND attempt = 2",
    )
    .bind(job)
    .fetch_one(store.pool())
    .await?;
    assert_eq!(
        (delivery, worker.as_str(), status.as_str()),
        (2, "b", "started")
    );
    // Its own row is completed.
    store
        .write_ledger(&[LedgerEntry::Attempts(vec![finished_attempt(
            job, 2, 2, "b",
        )])])
        .await?;
    let status: String =
        sqlx::query_scalar("SELECT status FROM job_attempts WHERE job_id = $1 AND attempt = 2")
            .bind(job)
            .fetch_one(store.pool())
            .await?;
    assert_eq!(status, "succeeded");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_deferral_leaves_the_row_another_delivery_runs() -> Result<()> {
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    let job = Uuid::now_v7();
    assert_eq!(
        claim(&store, started(job, 1, "a", 10)).await?,
        Written::Claimed(1)
    );
    assert_eq!(
        claim(&store, started(job, 2, "b", 10)).await?,
        Written::Claimed(2)
    );
    let deferred = |calls_seen| {
        LedgerEntry::Deferred(JobDeferred {
            id: job,
            not_before: Utc::now(),
            calls_seen,
        })
    };
    // Delivery 1 (which knew of one call) defers late: delivery 2's run stands.
    store.write_ledger(&[deferred(1)]).await?;
    let status = |store: Store| async move {
        sqlx::query_scalar::<_, String>("SELECT status FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(store.pool())
            .await
    };
    assert_eq!(status(store.clone()).await?, "running");
    // Delivery 2 itself defers: the job waits.
    store.write_ledger(&[deferred(2)]).await?;
    assert_eq!(status(store.clone()).await?, "queued");
    let deferrals: i32 = sqlx::query_scalar("SELECT deferrals FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(store.pool())
        .await?;
    assert_eq!(deferrals, 2, "both hand-backs are counted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_across_deliveries_stop_at_the_jobs_budget() -> Result<()> {
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    let job = Uuid::now_v7();
    for (d, want) in [(1, 1), (2, 2), (3, 3)] {
        assert_eq!(
            claim(&store, started(job, d, "w", 3)).await?,
            Written::Claimed(want)
        );
    }
    assert_eq!(
        claim(&store, started(job, 4, "w", 3)).await?,
        Written::CallsSpent,
        "a fourth call is refused"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE job_id = $1")
        .bind(job)
        .fetch_one(store.pool())
        .await?;
    assert_eq!(rows, 3, "no row for a refused call");
    Ok(())
}

/// A worker's batch often holds one job's claim and another job's end (they share one
/// statement): each is written as if alone, and a refused claim in it is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_claims_some_jobs_and_ends_others() -> Result<()> {
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    let (ending, starting, cancelled) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for job in [ending, cancelled] {
        assert_eq!(
            claim(&store, started(job, 1, "w", 10)).await?,
            Written::Claimed(1)
        );
    }
    assert!(store.cancel_job(cancelled).await?);
    let end = LedgerEntry::Finished {
        job: JobOutcome {
            id: ending,
            owner: "master".into(),
            model_group: "fast".into(),
            tier: sluice_schemas::Tier::Normal,
            reply_subject: None,
            created_at: Utc::now(),
            status: JobStatus::Succeeded,
            result: serde_json::value::to_raw_value(&serde_json::json!({"answer": 42})).ok(),
            usage: None,
            cost: None,
            pricing_missing: true,
            attempts: 1,
            error_class: None,
            error_message: None,
            finished_at: Utc::now(),
            cache_hit: false,
            cost_saved: None,
        },
        attempts: vec![finished_attempt(ending, 1, 1, "w")],
        deliveries: Vec::new(),
    };
    let answers = store
        .write_ledger(&[
            started(starting, 1, "w", 10),
            end,
            started(cancelled, 2, "w", 10),
        ])
        .await?;
    assert_eq!(
        answers,
        vec![Written::Claimed(1), Written::Done, Written::Ended]
    );
    let job = |id: Uuid| {
        let store = store.clone();
        async move {
            sqlx::query_as::<_, (String, Option<serde_json::Value>)>(
                "SELECT status, result FROM jobs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(store.pool())
            .await
        }
    };
    assert_eq!(
        job(ending).await?,
        ("succeeded".into(), Some(serde_json::json!({"answer": 42})))
    );
    assert_eq!(job(starting).await?, ("running".into(), None));
    let attempts: Vec<(Uuid, i32, String)> = sqlx::query_as(
        "SELECT job_id, attempt, status FROM job_attempts WHERE job_id = ANY($1) ORDER BY job_id, attempt",
    )
    .bind(vec![ending, starting, cancelled])
    .fetch_all(store.pool())
    .await?;
    assert_eq!(
        attempts,
        vec![
            (ending, 1, "succeeded".to_string()),
            (starting, 1, "started".to_string()),
            (cancelled, 1, "started".to_string()),
        ],
        "the ended job's call is finished, the new call is on record, the cancelled job's second call never was"
    );
    Ok(())
}

/// Statuses are closed sets end to end: every `BatchStatus` and `AttemptStatus` value is
/// written and read back typed, and Postgres refuses a value no enum knows (check_violation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_and_attempt_statuses_are_closed_sets() -> Result<()> {
    use sluice_schemas::batch::BatchStatus;
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    let insert_batch = |id: String, status: &'static str, tier: &'static str| {
        let pool = store.pool().clone();
        async move {
            sqlx::query(
                "INSERT INTO batches (id, owner, endpoint, input_file_id, completion_window, tier,
                     status, expires_at)
                 VALUES ($1, 'master', '/v1/chat/completions', 'file-x', '24h', $2, $3, now())",
            )
            .bind(id)
            .bind(tier)
            .bind(status)
            .execute(&pool)
            .await
        }
    };
    for status in [
        BatchStatus::Validating,
        BatchStatus::Failed,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Expired,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
    ] {
        let id = format!("batch_{}", status.as_str());
        insert_batch(id.clone(), status.as_str(), "low").await?;
        let row = store
            .batch(&id)
            .await?
            .ok_or(anyhow::anyhow!("no batch {id}"))?;
        assert_eq!((row.status, row.tier), (status, sluice_schemas::Tier::Low));
    }
    let refused = |e: sqlx::Error| match e {
        sqlx::Error::Database(db) => db.code().as_deref() == Some("23514"),
        _ => false,
    };
    let bad_status = insert_batch("batch_bad_status".into(), "paused", "low").await;
    assert!(
        bad_status.is_err_and(refused),
        "unknown batch status refused"
    );
    let bad_tier = insert_batch("batch_bad_tier".into(), "validating", "urgent").await;
    assert!(bad_tier.is_err_and(refused), "unknown batch tier refused");

    let job = Uuid::now_v7();
    assert_eq!(
        claim(&store, started(job, 1, "a", 10)).await?,
        Written::Claimed(1)
    );
    let mut record = finished_attempt(job, 1, 1, "a");
    record.status = AttemptStatus::Failed;
    store
        .write_ledger(&[LedgerEntry::Attempts(vec![record])])
        .await?;
    let rows = store.attempts(job).await?;
    assert_eq!(
        rows.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![AttemptStatus::Failed]
    );
    let bad_attempt = sqlx::query("UPDATE job_attempts SET status = 'retrying' WHERE job_id = $1")
        .bind(job)
        .execute(store.pool())
        .await;
    assert!(
        bad_attempt.is_err_and(refused),
        "unknown attempt status refused"
    );
    Ok(())
}
