//! A budget's spend as the Postgres ledger has it: what the worker's limiter rebuilds its
//! Redis counters from when Redis lost them (`worker/src/limits/seed.lua`). Redis holds a
//! cache of this; the ledger (`job_attempts.cost`) is the truth.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{Store, StoreError};

/// Spend of one budget subject within its current period, and the calls in flight.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetSpend {
    /// USD of finished calls within the last period.
    pub spent: f64,
    /// The first of those calls: the period runs from it.
    pub first: Option<DateTime<Utc>>,
    /// Calls started within the last `lease` and not finished: (job, attempt, reserved
    /// USD, started).
    pub in_flight: Vec<(Uuid, i32, f64, DateTime<Utc>)>,
}

impl Store {
    /// The ledger's spend for a budget subject: `key:<id>` (the key's jobs) or
    /// `provider:<name>` (calls to that provider). Other subjects have none.
    pub async fn budget_spend(
        &self,
        subject: &str,
        period: Duration,
        lease: Duration,
    ) -> Result<BudgetSpend, StoreError> {
        let (filter, value) = match subject.split_once(':') {
            Some(("key", id)) => ("j.owner = $1", id),
            Some(("provider", name)) => ("a.provider = $1", name),
            _ => return Ok(BudgetSpend::default()),
        };
        let period_secs = period.as_secs_f64().min(100.0 * 365.0 * 86_400.0);
        let (spent, first): (Option<Decimal>, Option<DateTime<Utc>>) = sqlx::query_as(&format!(
            "SELECT sum(a.cost), min(a.finished_at) FROM job_attempts a JOIN jobs j ON j.id = a.job_id
             WHERE {filter} AND a.cost IS NOT NULL
               AND a.finished_at > now() - make_interval(secs => $2)"
        ))
        .bind(value)
        .bind(period_secs)
        .fetch_one(self.pool())
        .await?;
        let in_flight: Vec<(Uuid, i32, Option<Decimal>, DateTime<Utc>)> = sqlx::query_as(&format!(
            "SELECT a.job_id, a.attempt, a.reserved_cost, a.started_at
             FROM job_attempts a JOIN jobs j ON j.id = a.job_id
             WHERE {filter} AND a.status = 'started' AND a.reserved_cost > 0
               AND a.started_at > now() - make_interval(secs => $2)"
        ))
        .bind(value)
        .bind(lease.as_secs_f64())
        .fetch_all(self.pool())
        .await?;
        Ok(BudgetSpend {
            spent: spent.and_then(|d| d.to_f64()).unwrap_or(0.0),
            first,
            in_flight: in_flight
                .into_iter()
                .map(|(job, attempt, cost, started)| {
                    (
                        job,
                        attempt,
                        cost.and_then(|d| d.to_f64()).unwrap_or(0.0),
                        started,
                    )
                })
                .collect(),
        })
    }
}
