//! Every column of the batched statements that pass typed arrays (`core/src/store/arrays.rs`)
//! lands in its row: values, NULLs, U+0000 in text and results, empty batches, a job
//! claimed and ended in one batch of another's, and a redelivered claim.

use anyhow::Result;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sluice_core::store::{
    AttemptRecord, AttemptStarted, JobDeferred, JobOutcome, LedgerEntry, NewDelivery, NewJob,
    Recorded, Store, WebhookOutcome, Written,
};
use sluice_schemas::{AttemptStatus, ErrorClass, JobStatus, Tier};
use sluice_testkit::TestEnv;
use sqlx::Row;
use uuid::Uuid;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn started(job_id: Uuid, delivery: u32, reply: Option<&str>, cost: Option<f64>) -> LedgerEntry {
    LedgerEntry::Started(AttemptStarted {
        job_id,
        owner: "own\0er".into(),
        model_group: "fast".into(),
        tier: Tier::High,
        reply_subject: reply.map(Into::into),
        created_at: at("2026-12-07T01:02:03.123456789Z"),
        delivery,
        worker: "w-1".into(),
        deployment: "fast-0".into(),
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        started_at: at("2026-12-07T01:02:04.5Z"),
        max_calls: 5,
        reserved_cost: cost,
    })
}

fn attempt(job_id: Uuid, attempt: u32, full: bool) -> AttemptRecord {
    AttemptRecord {
        job_id,
        attempt,
        delivery: 1,
        worker: "w-1".into(),
        deployment: "fast-0".into(),
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        status: if full {
            AttemptStatus::Failed
        } else {
            AttemptStatus::Succeeded
        },
        error_class: full.then_some(ErrorClass::RateLimit),
        error_message: full.then(|| "slow\0down".into()),
        prompt_tokens: full.then_some(11),
        completion_tokens: full.then_some(7),
        cached_tokens: full.then_some(3),
        cache_creation_tokens: full.then_some(2),
        reasoning_tokens: full.then_some(1),
        usage_estimated: full,
        cost: full.then(|| Decimal::new(12345, 7)),
        pricing_missing: !full,
        ttft_ms: full.then_some(1.25),
        latency_ms: full.then_some(9.5),
        started_at: at("2026-12-07T01:02:04.5Z"),
        finished_at: at("2026-12-07T01:02:05.000000400Z"),
        dropped_params: full.then(|| vec!["seed".into(), "n\0".into()]),
    }
}

fn outcome(id: Uuid, result: Option<&str>, full: bool) -> JobOutcome {
    JobOutcome {
        id,
        owner: "owner".into(),
        model_group: "fast".into(),
        tier: Tier::Low,
        reply_subject: full.then(|| "reply.x".into()),
        created_at: at("2026-12-07T01:02:03Z"),
        status: if full {
            JobStatus::Failed
        } else {
            JobStatus::Succeeded
        },
        result: result.map(|r| serde_json::value::RawValue::from_string(r.into()).unwrap()),
        usage: full.then(|| json!({"prompt_tokens": 11, "note": "a\u{0000}b"})),
        cost: full.then(|| Decimal::new(5, 3)),
        pricing_missing: !full,
        attempts: 2,
        error_class: full.then_some(ErrorClass::Server),
        error_message: full.then(|| "boom".into()),
        finished_at: at("2026-12-07T01:02:06.25Z"),
        cache_hit: full,
        cost_saved: full.then(|| Decimal::new(7, 2)),
    }
}

async fn attempt_row(store: &Store, job: Uuid, n: i32) -> Result<Value> {
    let row = sqlx::query(
        "SELECT to_jsonb(a) - 'id' - 'created_at' AS row FROM job_attempts a
         WHERE job_id = $1 AND attempt = $2",
    )
    .bind(job)
    .bind(n)
    .fetch_one(store.pool())
    .await?;
    Ok(row.try_get("row")?)
}

async fn job_row(store: &Store, job: Uuid) -> Result<Value> {
    let row = sqlx::query(
        "SELECT jsonb_build_object('owner', owner, 'model_group', model_group, 'tier', tier,
                'status', status, 'reply_subject', reply_subject, 'created_at', created_at,
                'started_at', started_at, 'result', result, 'result_text', result_text,
                'usage', usage, 'cost', cost, 'pricing_missing', pricing_missing,
                'attempts', attempts, 'calls', calls, 'error_class', error_class,
                'error_message', error_message, 'finished_at', finished_at,
                'cache_hit', cache_hit, 'cost_saved', cost_saved, 'metadata', metadata,
                'idempotency_key', idempotency_key, 'request_id', request_id,
                'webhook_status', webhook_status, 'webhook_attempts', webhook_attempts,
                'not_before', not_before, 'deferrals', deferrals) AS row
         FROM jobs WHERE id = $1",
    )
    .bind(job)
    .fetch_one(store.pool())
    .await?;
    Ok(row.try_get("row")?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_ends_write_every_column() -> Result<()> {
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    assert!(store.write_ledger(&[]).await?.is_empty(), "an empty batch");

    // Claims: one with every nullable column set, one with none.
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let answers = store
        .write_ledger(&[
            started(a, 1, Some("reply.a"), Some(0.0015)),
            started(b, 1, None, None),
        ])
        .await?;
    assert_eq!(answers, vec![Written::Claimed(1), Written::Claimed(1)]);
    let row = job_row(&store, a).await?;
    assert_eq!(row["owner"], "own\u{FFFD}er", "NUL replaced in text");
    assert_eq!(row["tier"], "high");
    assert_eq!(row["status"], "running");
    assert_eq!(row["reply_subject"], "reply.a");
    assert_eq!(row["created_at"], "2026-12-07T01:02:03.123457+00:00");
    assert_eq!(row["started_at"], "2026-12-07T01:02:04.5+00:00");
    assert_eq!(
        (row["calls"].as_i64(), row["attempts"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(job_row(&store, b).await?["reply_subject"], Value::Null);
    let started_row = attempt_row(&store, a, 1).await?;
    assert_eq!(started_row["reserved_cost"], json!(0.0015));
    assert_eq!(started_row["status"], "started");
    assert_eq!(started_row["worker"], "w-1");
    assert_eq!(started_row["delivery"], 1);
    assert_eq!(
        attempt_row(&store, b, 1).await?["reserved_cost"],
        Value::Null
    );

    // A redelivery claims again: the next call number, the same row.
    assert_eq!(
        store.write_ledger(&[started(a, 2, None, None)]).await?,
        vec![Written::Claimed(2)]
    );

    // A third job is claimed in the same batch as a's and b's ends (one statement).
    let c = Uuid::now_v7();
    let nul_result = r#"{"content":"x\u0000y"}"#;
    let answers = store
        .write_ledger(&[
            LedgerEntry::Finished {
                job: outcome(a, Some(nul_result), true),
                attempts: vec![attempt(a, 1, true), attempt(a, 2, false)],
                deliveries: vec![NewDelivery {
                    job_id: a,
                    kind: "reply".into(),
                    target: "reply.a".into(),
                    body: "{\"done\":true}".into(),
                }],
            },
            started(c, 1, None, Some(2.0)),
            LedgerEntry::Finished {
                job: outcome(b, Some(r#"{"answer":42}"#), false),
                attempts: vec![attempt(b, 1, false)],
                deliveries: Vec::new(),
            },
        ])
        .await?;
    assert_eq!(
        answers,
        vec![Written::Done, Written::Claimed(1), Written::Done]
    );

    let row = job_row(&store, a).await?;
    assert_eq!(row["status"], "failed");
    assert_eq!(row["result"], Value::Null, "a result with NUL goes to text");
    let back: Value = serde_json::from_str(row["result_text"].as_str().unwrap())?;
    assert_eq!(back, json!({"content": "x\u{0000}y"}));
    assert_eq!(
        row["usage"],
        json!({"prompt_tokens": 11, "note": "a\u{FFFD}b"})
    );
    assert_eq!(row["cost"], json!(0.005));
    assert_eq!(row["cost_saved"], json!(0.07));
    assert_eq!(row["pricing_missing"], false);
    assert_eq!(row["cache_hit"], true);
    assert_eq!(row["attempts"], 2);
    assert_eq!(row["error_class"], "server");
    assert_eq!(row["error_message"], "boom");
    assert_eq!(row["finished_at"], "2026-12-07T01:02:06.25+00:00");
    assert_eq!(row["tier"], "high", "the claim's row keeps its columns");

    let full = attempt_row(&store, a, 1).await?;
    assert_eq!(full["status"], "failed");
    assert_eq!(full["error_class"], "rate_limit");
    assert_eq!(full["error_message"], "slow\u{FFFD}down");
    assert_eq!(
        [
            &full["prompt_tokens"],
            &full["completion_tokens"],
            &full["cached_tokens"],
            &full["cache_creation_tokens"],
            &full["reasoning_tokens"],
        ],
        [&json!(11), &json!(7), &json!(3), &json!(2), &json!(1)]
    );
    assert_eq!(full["usage_estimated"], true);
    assert_eq!(full["cost"], json!(0.0012345));
    assert_eq!(full["pricing_missing"], false);
    assert_eq!(full["ttft_ms"], json!(1.25));
    assert_eq!(full["latency_ms"], json!(9.5));
    assert_eq!(full["finished_at"], "2026-12-07T01:02:05+00:00");
    assert_eq!(full["dropped_params"], json!(["seed", "n\u{FFFD}"]));
    assert_eq!(full["reserved_cost"], json!(0.0015), "kept from the claim");
    let empty = attempt_row(&store, b, 1).await?;
    for column in [
        "error_class",
        "error_message",
        "prompt_tokens",
        "cost",
        "ttft_ms",
        "latency_ms",
        "dropped_params",
    ] {
        assert_eq!(empty[column], Value::Null, "{column}");
    }
    assert_eq!(empty["status"], "succeeded");
    assert_eq!(empty["pricing_missing"], true);
    // Call 2 is delivery 2's: delivery 1's record of it leaves its row alone.
    assert_eq!(attempt_row(&store, a, 2).await?["status"], "started");

    let row = job_row(&store, b).await?;
    assert_eq!(row["result"], json!({"answer": 42}));
    assert_eq!(row["result_text"], Value::Null);
    assert_eq!(row["usage"], Value::Null);
    assert_eq!(row["status"], "succeeded");
    assert_eq!(job_row(&store, c).await?["status"], "running");
    let reserved = attempt_row(&store, c, 1).await?["reserved_cost"].as_f64();
    assert_eq!(reserved, Some(2.0));

    let deliveries: Vec<(Uuid, String, String, String)> =
        sqlx::query_as("SELECT job_id, kind, target, body FROM job_deliveries ORDER BY job_id")
            .fetch_all(store.pool())
            .await?;
    assert_eq!(
        deliveries,
        vec![(
            a,
            "reply".into(),
            "reply.a".into(),
            "{\"done\":true}".into()
        )]
    );

    // An ended job ends once: a second end changes nothing and delivers nothing.
    store
        .write_ledger(&[LedgerEntry::Finished {
            job: outcome(b, Some(r#"{"answer":0}"#), false),
            attempts: Vec::new(),
            deliveries: vec![NewDelivery {
                job_id: b,
                kind: "webhook".into(),
                target: "http://x".into(),
                body: "{}".into(),
            }],
        }])
        .await?;
    assert_eq!(job_row(&store, b).await?["result"], json!({"answer": 42}));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM job_deliveries")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(count, 1);

    // One job claimed and ended in one batch: two statements, the claim first.
    let d = Uuid::now_v7();
    let answers = store
        .write_ledger(&[
            started(d, 1, None, None),
            LedgerEntry::Finished {
                job: outcome(d, Some(r#"{"answer":1}"#), false),
                attempts: vec![attempt(d, 1, false)],
                deliveries: Vec::new(),
            },
        ])
        .await?;
    assert_eq!(answers, vec![Written::Claimed(1), Written::Done]);
    let row = job_row(&store, d).await?;
    assert_eq!(
        (&row["status"], &row["result"]),
        (&json!("succeeded"), &json!({"answer": 1}))
    );
    assert_eq!(attempt_row(&store, d, 1).await?["status"], "succeeded");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferrals_and_webhook_outcomes_write_their_columns() -> Result<()> {
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    store
        .write_ledger(&[started(a, 1, None, None), started(b, 1, None, None)])
        .await?;
    store
        .write_ledger(&[
            LedgerEntry::Deferred(JobDeferred {
                id: a,
                not_before: at("2026-12-07T02:00:00.0000015Z"),
                calls_seen: 1,
            }),
            // b started a call since this delivery looked: its row is left running.
            LedgerEntry::Deferred(JobDeferred {
                id: b,
                not_before: at("2026-12-07T02:00:00Z"),
                calls_seen: 0,
            }),
            LedgerEntry::Webhook(WebhookOutcome {
                id: b,
                status: "delivered".into(),
                attempts: 3,
            }),
        ])
        .await?;
    let row = job_row(&store, a).await?;
    assert_eq!(row["status"], "queued");
    assert_eq!(row["not_before"], "2026-12-07T02:00:00.000002+00:00");
    assert_eq!(row["deferrals"], 1);
    let row = job_row(&store, b).await?;
    assert_eq!(row["status"], "running");
    assert_eq!(row["not_before"], Value::Null);
    assert_eq!(row["deferrals"], 1);
    assert_eq!(row["webhook_status"], "delivered");
    assert_eq!(row["webhook_attempts"], 3);
    Ok(())
}

fn new_job(owner: &str, key: Option<&str>, full: bool) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        owner: owner.into(),
        idempotency_key: key.map(Into::into),
        model_group: "fast".into(),
        tier: Tier::Critical,
        reply_subject: full.then(|| "reply.n".into()),
        metadata: full.then(|| json!({"k": "v\u{0000}"})),
        created_at: at("2026-12-07T03:00:00.9999996Z"),
        subject: full.then(|| "sluice.jobs.critical".into()),
        payload: full.then(|| "{\"envelope\":1}".into()),
        request_id: full.then(|| "req-1".into()),
        traceparent: full.then(|| "00-abc-def-01".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_jobs_write_every_column_and_their_outbox_entries() -> Result<()> {
    let env = TestEnv::new().await?;
    let store = env.store().await?;
    assert!(
        store.record_new_jobs(&[]).await?.is_empty(),
        "an empty batch"
    );
    let (full, bare) = (new_job("o", Some("key-1"), true), new_job("o", None, false));
    let answers = store.record_new_jobs(&[full.clone(), bare.clone()]).await?;
    assert_eq!(answers, vec![Recorded::New, Recorded::New]);
    let row = job_row(&store, full.id).await?;
    assert_eq!(row["status"], "queued");
    assert_eq!(row["tier"], "critical");
    assert_eq!(row["idempotency_key"], "key-1");
    assert_eq!(row["reply_subject"], "reply.n");
    assert_eq!(row["metadata"], json!({"k": "v\u{FFFD}"}));
    assert_eq!(row["request_id"], "req-1");
    assert_eq!(row["created_at"], "2026-12-07T03:00:01+00:00");
    let row = job_row(&store, bare.id).await?;
    for column in ["idempotency_key", "reply_subject", "metadata", "request_id"] {
        assert_eq!(row[column], Value::Null, "{column}");
    }
    let outbox: Vec<(Uuid, String, String, Option<String>)> =
        sqlx::query_as("SELECT job_id, subject, payload, traceparent FROM job_outbox")
            .fetch_all(store.pool())
            .await?;
    assert_eq!(
        outbox,
        vec![(
            full.id,
            "sluice.jobs.critical".into(),
            "{\"envelope\":1}".into(),
            Some("00-abc-def-01".into())
        )],
        "only a job with a subject and a payload has an outbox entry"
    );

    // The same idempotency key again: the existing job; its publish acknowledged in the
    // same statement.
    let again = new_job("o", Some("key-1"), true);
    let answers = store
        .record_new_jobs_and_published(&[again], &[(full.id, 42)])
        .await?;
    assert_eq!(answers, vec![Recorded::Existing(full.id)]);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM job_outbox")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(left, 0);
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM job_stream_seqs WHERE job_id = $1")
        .bind(full.id)
        .fetch_one(store.pool())
        .await?;
    assert_eq!(seq, 42);
    Ok(())
}
