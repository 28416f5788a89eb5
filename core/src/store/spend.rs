//! Spend reports: what the ledger's attempts cost, grouped by model group, key, provider
//! or day, for a time range. Computed from `job_attempts` (the per-call truth).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    Key,
    Provider,
    Day,
    /// `native` (the providers' batch APIs, at batch prices) or `live`.
    Mode,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "model" => GroupBy::Model,
            "key" => GroupBy::Key,
            "provider" => GroupBy::Provider,
            "day" => GroupBy::Day,
            "mode" => GroupBy::Mode,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            GroupBy::Model => "j.model_group",
            GroupBy::Key => "j.owner",
            GroupBy::Provider => "a.provider",
            GroupBy::Day => {
                "to_char(date_trunc('day', a.started_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD')"
            }
            // Native attempts carry `crate::native_batches::NATIVE_WORKER`.
            GroupBy::Mode => "CASE WHEN a.worker = 'native-batch' THEN 'native' ELSE 'live' END",
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SpendRow {
    pub group: String,
    #[serde(with = "rust_decimal::serde::float")]
    pub cost: Decimal,
    /// Provider calls made (attempts).
    pub calls: i64,
    pub jobs: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Calls whose price was unknown (not in `cost`).
    pub unpriced_calls: i64,
}

impl Store {
    /// Spend between `from` and `to` (attempt start times), optionally for one owner.
    pub async fn spend(
        &self,
        group_by: GroupBy,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        owner: Option<&str>,
    ) -> Result<Vec<SpendRow>, StoreError> {
        let sql = format!(
            "SELECT {col} AS \"group\",
                    COALESCE(sum(a.cost), 0) AS cost,
                    count(*) AS calls,
                    count(DISTINCT a.job_id) AS jobs,
                    COALESCE(sum(a.prompt_tokens), 0)::bigint AS prompt_tokens,
                    COALESCE(sum(a.completion_tokens), 0)::bigint AS completion_tokens,
                    count(*) FILTER (WHERE a.pricing_missing) AS unpriced_calls
             FROM job_attempts a JOIN jobs j ON j.id = a.job_id
             WHERE a.started_at >= $1 AND a.started_at < $2 AND ($3::text IS NULL OR j.owner = $3)
             GROUP BY 1 ORDER BY cost DESC, 1",
            col = group_by.column()
        );
        Ok(sqlx::query_as::<_, SpendRow>(&sql)
            .bind(from)
            .bind(to)
            .bind(owner)
            .fetch_all(self.pool())
            .await?)
    }

    /// Jobs the response cache answered between `from` and `to` (finish times), and what
    /// the calls they replaced cost; optionally for one owner.
    pub async fn cache_savings(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        owner: Option<&str>,
    ) -> Result<(i64, Decimal), StoreError> {
        Ok(sqlx::query_as(
            "SELECT count(*), COALESCE(sum(cost_saved), 0) FROM jobs
             WHERE cost_saved IS NOT NULL AND finished_at >= $1 AND finished_at < $2
               AND ($3::text IS NULL OR owner = $3)",
        )
        .bind(from)
        .bind(to)
        .bind(owner)
        .fetch_one(self.pool())
        .await?)
    }
}
