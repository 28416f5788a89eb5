//! Scheduling and flow control end to end: real Redis, several workers, the simulator.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{submit_many, wait_terminal};
use sluice_testkit::sim::{self, SimConfig, SimHandle};
use sluice_testkit::{Stack, TestEnv};

fn group(sim: &SimHandle, params: &str) -> String {
    format!(
        "model_list:
  - model_name: limited
    litellm_params:
      model: openai/sim-model
      api_base: {}
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
{params}
    model_info:
      id: lim-1
general_settings:
  master_key: {}
",
        sim.api_base(),
        common::KEY
    )
}

/// Attempt start times (ms) of every attempt, sorted.
async fn attempt_starts(pool: &sqlx::PgPool) -> Result<Vec<i64>> {
    let mut v: Vec<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM started_at) * 1000)::bigint FROM job_attempts ORDER BY started_at",
    )
    .fetch_all(pool)
    .await?;
    v.sort_unstable();
    Ok(v)
}

/// The most attempts that started within any window of `window_ms` (half-open).
fn max_in_window(starts: &[i64], window_ms: i64) -> usize {
    let mut best = 0;
    let mut j = 0;
    for i in 0..starts.len() {
        while j < starts.len() && starts[j] < starts[i] + window_ms {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rpm_60_holds_in_every_sliding_minute_across_three_workers_and_all_150_complete(
) -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            latency_ms: 20,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&group(&sim, "      rpm: 60"), "")?, 3).await?;
    let http = reqwest::Client::new();
    let ids = submit_many(&http, &stack.api_url, "limited", "normal", 150).await?;
    assert_eq!(ids.len(), 150);
    let store = env.store().await?;
    wait_terminal(store.pool(), 150, Duration::from_secs(240)).await?;

    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(succeeded, 150);
    let starts = attempt_starts(store.pool()).await?;
    assert_eq!(
        starts.len(),
        150,
        "one call per job; waiting is not an attempt"
    );
    assert_eq!(sim.requests(), 150);
    let peak = max_in_window(&starts, 60_000);
    assert!(peak <= 60, "{peak} calls started within one minute");
    assert_eq!(peak, 60, "the limit was used fully");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpm_reservations_settle_to_real_usage_and_never_exceed_the_limit() -> Result<()> {
    // Each job reserves its prompt estimate + max_tokens 20 and uses far less.
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 3,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&group(&sim, "      tpm: 160"), "")?, 2).await?;
    let http = reqwest::Client::new();
    submit_many(&http, &stack.api_url, "limited", "normal", 8).await?;
    let store = env.store().await?;
    wait_terminal(store.pool(), 8, Duration::from_secs(120)).await?;

    let used: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (extract(epoch FROM started_at) * 1000)::bigint, prompt_tokens + completion_tokens
         FROM job_attempts WHERE status = 'succeeded' ORDER BY started_at",
    )
    .fetch_all(store.pool())
    .await?;
    assert_eq!(used.len(), 8);
    let total: i64 = used.iter().map(|u| u.1).sum();
    // All eight fit in one minute only because settlement returned the unused estimate.
    let span = used.last().unwrap().0 - used[0].0;
    assert!(
        span < 60_000 && total <= 160,
        "8 calls, {total} tokens over {span} ms"
    );

    // The window's counter equals the real usage.
    let mut conn = redis_conn(&env).await?;
    let counted: i64 = deadpool_redis::redis::cmd("HGET")
        .arg(format!("{{{}}}:tpm:dep:lim-1:amt", env.prefix))
        .arg("_total")
        .query_async(&mut conn)
        .await?;
    assert_eq!(counted, total);
    stack.stop().await;
    Ok(())
}

async fn redis_conn(env: &TestEnv) -> Result<deadpool_redis::Connection> {
    Ok(sluice_core::redis::pool(&env.redis_url, 1)?.get().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_budget_spent_makes_later_jobs_wait_queued_instead_of_failing() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 10,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    // Each job costs about 0.00004 (about 10-20 prompt and 10 completion tokens).
    let models = group(&sim, "").replace(
        "general_settings:",
        "router_settings:\n  provider_budget_config:\n    openai: {budget_limit: 0.0001, time_period: 1d}\ngeneral_settings:",
    );
    let stack = Stack::start(env.config(&models, "")?, 1).await?;
    let http = reqwest::Client::new();
    submit_many(&http, &stack.api_url, "limited", "normal", 6).await?;
    let store = env.store().await?;
    let pool = store.pool().clone();
    sluice_testkit::eventually(Duration::from_secs(30), "the rest deferred", || async {
        let (done, waiting): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'),
                    count(*) FILTER (WHERE status = 'queued' AND not_before IS NOT NULL) FROM jobs",
        )
        .fetch_one(&pool)
        .await
        .ok()?;
        (done >= 1 && done + waiting == 6).then_some(())
    })
    .await?;
    let costs: Vec<f64> =
        sqlx::query_scalar("SELECT cost::float8 FROM job_attempts WHERE status = 'succeeded'")
            .fetch_all(store.pool())
            .await?;
    let spent: f64 = costs.iter().sum();
    let biggest = costs.iter().cloned().fold(0.0, f64::max);
    assert!(spent <= 0.0001 + biggest, "spent {spent} of 0.0001");
    assert!(costs.len() < 6, "the budget stopped some jobs");
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'failed'")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(failed, 0, "waiting for budget is not failing");
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(
        attempts as usize,
        costs.len(),
        "a deferral is not an attempt"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_backlog_in_every_tier_critical_finishes_first_and_low_still_moves() -> Result<()> {
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            latency_ms: 40,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let extra = "  worker:\n    capacity: 2";
    let mut stack = Stack::start(env.config(&group(&sim, ""), extra)?, 0).await?;
    let http = reqwest::Client::new();
    for tier in ["low", "normal", "high", "critical"] {
        submit_many(&http, &stack.api_url, "limited", tier, 20).await?;
    }
    stack.add_worker();
    let store = env.store().await?;
    wait_terminal(store.pool(), 80, Duration::from_secs(120)).await?;
    let order: Vec<String> = sqlx::query_scalar("SELECT tier FROM jobs ORDER BY finished_at, id")
        .fetch_all(store.pool())
        .await?;
    let mean_rank = |tier: &str| {
        let ranks: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, t)| *t == tier)
            .map(|(i, _)| i)
            .collect();
        ranks.iter().sum::<usize>() as f64 / ranks.len() as f64
    };
    let (c, h, n, l) = (
        mean_rank("critical"),
        mean_rank("high"),
        mean_rank("normal"),
        mean_rank("low"),
    );
    assert!(
        c < h && h < n && n < l,
        "mean finish rank critical {c}, high {h}, normal {n}, low {l}"
    );
    let last_critical = order.iter().rposition(|t| t == "critical").unwrap();
    let first_low = order.iter().position(|t| t == "low").unwrap();
    assert!(
        first_low < last_critical,
        "low jobs move while critical ones are still queued"
    );
    stack.stop().await;
    Ok(())
}

async fn create_key(
    http: &reqwest::Client,
    api: &str,
    settings: serde_json::Value,
) -> Result<String> {
    let v: serde_json::Value = http
        .post(format!("{api}/v1/keys"))
        .bearer_auth(common::KEY)
        .json(&settings)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["key"].as_str().unwrap().to_string())
}

async fn submit_as(http: &reqwest::Client, api: &str, key: &str, n: usize) -> Result<()> {
    for i in 0..n {
        http.post(format!("{api}/v1/jobs"))
            .bearer_auth(key)
            .json(&serde_json::json!({"model": "limited", "max_tokens": 20,
                "messages": [{"role": "user", "content": format!("key job {i}")}]}))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_s_rpm_limit_and_budget_make_its_jobs_wait_not_fail_and_other_keys_move() -> Result<()>
{
    let sim = sim::start(
        "127.0.0.1:0",
        SimConfig {
            chunks: 10,
            ..Default::default()
        },
    )
    .await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&group(&sim, ""), "")?, 1).await?;
    let http = reqwest::Client::new();
    let slow = create_key(&http, &stack.api_url, serde_json::json!({"rpm_limit": 2})).await?;
    let poor = create_key(
        &http,
        &stack.api_url,
        serde_json::json!({"max_budget": 0.00005, "budget_duration": "1d"}),
    )
    .await?;
    let free = create_key(&http, &stack.api_url, serde_json::json!({})).await?;
    submit_as(&http, &stack.api_url, &slow, 4).await?;
    submit_as(&http, &stack.api_url, &poor, 4).await?;
    submit_as(&http, &stack.api_url, &free, 4).await?;

    let store = env.store().await?;
    let pool = store.pool().clone();
    let q = "SELECT owner, count(*) FILTER (WHERE status = 'succeeded'),
                    count(*) FILTER (WHERE status = 'queued' AND not_before IS NOT NULL)
             FROM jobs GROUP BY owner";
    let settled = sluice_testkit::eventually(Duration::from_secs(30), "keys settled", || async {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(q).fetch_all(&pool).await.ok()?;
        (rows.len() == 3
            && rows.iter().all(|(_, done, waiting)| done + waiting == 4)
            && rows.iter().any(|r| r.1 == 4))
        .then_some(rows)
    })
    .await?;
    let by_done: Vec<i64> = {
        let mut v: Vec<i64> = settled.iter().map(|r| r.1).collect();
        v.sort_unstable();
        v
    };
    // rpm 2: two ran, two wait; the budget stops the poor key after one or two jobs;
    // the unlimited key is not held up by either.
    assert_eq!(*by_done.last().unwrap(), 4, "{settled:?}");
    assert!(
        settled.iter().any(|r| r.1 == 2 && r.2 == 2),
        "rpm-limited key: {settled:?}"
    );
    let poor_costs: Vec<f64> = sqlx::query_scalar(
        "SELECT a.cost::float8 FROM job_attempts a JOIN jobs j ON j.id = a.job_id
         WHERE j.owner NOT IN (SELECT owner FROM jobs GROUP BY owner HAVING count(*) FILTER (WHERE status='succeeded') IN (2, 4))",
    )
    .fetch_all(store.pool())
    .await?;
    let spent: f64 = poor_costs.iter().sum();
    let biggest = poor_costs.iter().cloned().fold(0.0, f64::max);
    assert!(
        !poor_costs.is_empty() && poor_costs.len() < 4,
        "{poor_costs:?}"
    );
    assert!(spent <= 0.00005 + biggest, "spent {spent}");
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'failed'")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(failed, 0);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limits_view_shows_current_usage_per_deployment_and_key() -> Result<()> {
    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(
        env.config(&group(&sim, "      rpm: 50\n      tpm: 100000"), "")?,
        1,
    )
    .await?;
    let http = reqwest::Client::new();
    let key = create_key(
        &http,
        &stack.api_url,
        serde_json::json!({"name": "team-a", "rpm_limit": 10}),
    )
    .await?;
    submit_as(&http, &stack.api_url, &key, 3).await?;
    let store = env.store().await?;
    wait_terminal(store.pool(), 3, Duration::from_secs(30)).await?;
    let v: serde_json::Value = http
        .get(format!("{}/v1/limits", stack.api_url))
        .bearer_auth(common::KEY)
        .send()
        .await?
        .json()
        .await?;
    let dep = &v["deployments"][0];
    assert_eq!(dep["id"], "lim-1");
    assert_eq!(dep["rpm"]["used"], 3);
    assert_eq!(dep["rpm"]["limit"], 50);
    assert!(dep["tpm"]["used"].as_i64().unwrap() > 0, "{v}");
    assert_eq!(dep["in_flight"]["used"], 0);
    let k = &v["keys"][0];
    assert_eq!(k["name"], "team-a");
    assert_eq!(k["rpm"]["used"], 3);
    assert_eq!(k["rpm"]["limit"], 10);
    let denied = http
        .get(format!("{}/v1/limits", stack.api_url))
        .bearer_auth(&key)
        .send()
        .await?;
    assert_eq!(denied.status(), 403);
    stack.stop().await;
    Ok(())
}
