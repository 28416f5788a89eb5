//! Listing jobs for `GET /v1/jobs`, `sluice jobs` and the console: newest first, filtered
//! by status, model group, owner (key) and tier, paged with a cursor (the last id seen).
//!
//! Job ids are UUIDv7, so "newest first" is "id descending" and the cursor walks the
//! primary key; a page never skips or repeats a job while new ones arrive. Reading one
//! job with its attempts is `jobs.rs`'s ([`super::Store::job`]).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{Store, StoreError};

/// Which jobs to list. `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<String>,
    pub model_group: Option<String>,
    /// `master` or a virtual key's id.
    pub owner: Option<String>,
    pub tier: Option<String>,
    /// Only jobs older than this one (the previous page's last id).
    pub after: Option<Uuid>,
    /// Rows at most.
    pub limit: i64,
}

/// One job as a list shows it: no result body, no attempts.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobSummary {
    pub id: Uuid,
    pub owner: String,
    pub model_group: String,
    pub tier: String,
    pub status: String,
    pub attempts: i32,
    #[serde(with = "rust_decimal::serde::float_option")]
    pub cost: Option<Decimal>,
    pub pricing_missing: bool,
    pub error_class: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Jobs matching `filter`, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, StoreError> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT id, owner, model_group, tier::text AS tier, status::text AS status, attempts,
                    cost, pricing_missing, error_class::text AS error_class, not_before,
                    created_at, started_at, finished_at
             FROM jobs WHERE true",
        );
        if let Some(s) = &filter.status {
            q.push(" AND status::text = ").push_bind(s);
        }
        if let Some(m) = &filter.model_group {
            q.push(" AND model_group = ").push_bind(m);
        }
        if let Some(o) = &filter.owner {
            q.push(" AND owner = ").push_bind(o);
        }
        if let Some(t) = &filter.tier {
            q.push(" AND tier::text = ").push_bind(t);
        }
        if let Some(after) = filter.after {
            q.push(" AND id < ").push_bind(after);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(filter.limit);
        Ok(q.build_query_as::<JobSummary>()
            .fetch_all(self.pool())
            .await?)
    }
}
