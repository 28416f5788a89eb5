//! Deliveries of a job's end (webhook, reply subject), recorded with its result and tried
//! by `worker/src/deliveries.rs` until delivered or given up.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError};

/// A delivery of a job's end, recorded with its result (see `worker/src/deliveries.rs`).
#[derive(Debug, Clone, Serialize)]
pub struct NewDelivery {
    pub job_id: Uuid,
    /// `webhook` or `reply`.
    pub kind: String,
    pub target: String,
    pub body: String,
}

/// A delivery claimed for one try.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub job_id: Uuid,
    pub kind: String,
    pub target: String,
    pub body: String,
    /// Tries so far, this one included.
    pub attempts: i32,
    pub owner: String,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Claims up to `limit` due deliveries for one try each: their next try moves `lease`
    /// ahead, so a worker that dies mid-try leaves them to another after that.
    pub async fn claim_deliveries(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        Ok(sqlx::query_as::<_, DeliveryRow>(
            "WITH due AS (
                SELECT id FROM job_deliveries WHERE status = 'pending' AND next_at <= now()
                ORDER BY next_at LIMIT $1 FOR UPDATE SKIP LOCKED
             ), claimed AS (
                UPDATE job_deliveries d SET attempts = d.attempts + 1,
                     next_at = now() + make_interval(secs => $2)
                FROM due WHERE d.id = due.id
                RETURNING d.id, d.job_id, d.kind, d.target, d.body, d.attempts, d.created_at
             )
             SELECT c.id, c.job_id, c.kind, c.target, c.body, c.attempts, c.created_at,
                    COALESCE(j.owner, 'master') AS owner
             FROM claimed c LEFT JOIN jobs j ON j.id = c.job_id",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records a try's outcome: delivered, failed for good, or due again after `retry`.
    /// The job shows its webhook's outcome (`webhook_status`, `webhook_attempts`).
    pub async fn delivery_tried(
        &self,
        row: &DeliveryRow,
        outcome: Result<(), String>,
        retry: Option<Duration>,
    ) -> Result<(), StoreError> {
        let (status, error) = match (&outcome, retry) {
            (Ok(()), _) => ("delivered", None),
            (Err(e), Some(_)) => ("pending", Some(e.as_str())),
            (Err(e), None) => ("failed", Some(e.as_str())),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE job_deliveries SET status = $2, last_error = $3,
                 next_at = now() + make_interval(secs => $4),
                 finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END
             WHERE id = $1",
        )
        .bind(row.id)
        .bind(status)
        .bind(error)
        .bind(retry.unwrap_or_default().as_secs_f64())
        .execute(&mut *tx)
        .await?;
        if row.kind == "webhook" {
            sqlx::query(
                "UPDATE jobs SET webhook_status = $2, webhook_attempts = $3, updated_at = now()
                 WHERE id = $1",
            )
            .bind(row.job_id)
            .bind(status)
            .bind(row.attempts)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
