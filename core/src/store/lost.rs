//! Jobs whose queue message is gone: found by the reconciler (`worker/src/reconcile.rs`)
//! and ended, with the delivery of their end, in one transaction.

use std::time::Duration;

use sluice_schemas::job::JobError;
use sqlx::Row;
use uuid::Uuid;

use super::{JobRow, Store, StoreError};

impl Store {
    /// Unfinished jobs a reconciler should look for in the jobs stream: no outbox entry,
    /// a known stream sequence (`job_stream_seqs`, else the job row's), and neither updated nor looked at for `grace`; up to
    /// `limit`, taken for this look (rows another worker is taking are skipped).
    pub async fn lost_candidates(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<Vec<(Uuid, u64)>, StoreError> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "WITH due AS (
                SELECT j.id, COALESCE(s.seq, j.stream_seq, j.batch_seq) AS seq FROM jobs j
                LEFT JOIN job_stream_seqs s ON s.job_id = j.id
                WHERE j.status IN ('queued', 'running')
                  AND COALESCE(s.seq, j.stream_seq, j.batch_seq) IS NOT NULL
                  AND j.updated_at < now() - make_interval(secs => $1)
                  AND (j.seq_checked_at IS NULL OR j.seq_checked_at < now() - make_interval(secs => $1))
                  AND NOT EXISTS (SELECT 1 FROM job_outbox o WHERE o.job_id = j.id)
                ORDER BY j.updated_at LIMIT $2
                FOR UPDATE OF j SKIP LOCKED
             )
             UPDATE jobs SET seq_checked_at = now() FROM due WHERE jobs.id = due.id
             RETURNING jobs.id, due.seq",
        )
        .bind(grace.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, seq)| Some((id, u64::try_from(seq).ok()?)))
            .collect())
    }

    /// Ends a job whose queue message is gone: `failed` with `error`, if it is still
    /// unfinished and still at stream sequence `seq`, and, in the same transaction, queues
    /// the delivery of its end to its reply subject if `reply_ok` allows that subject (a
    /// webhook URL lives only in the lost message). Returns the ended row and whether a
    /// delivery was queued; `None` when the job moved on meanwhile.
    pub async fn end_lost_job(
        &self,
        id: Uuid,
        seq: u64,
        error: &JobError,
        reply_ok: impl Fn(&str) -> bool + Send,
    ) -> Result<Option<(JobRow, bool)>, StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        let ended: Option<(JobRow, Option<String>)> = sqlx::query(
            "UPDATE jobs SET status = 'failed', error_class = $3, error_message = $4,
                 finished_at = now(), not_before = NULL, updated_at = now(),
                 attempts = GREATEST(attempts, calls)
             WHERE id = $1 AND status IN ('queued', 'running')
               AND COALESCE((SELECT s.seq FROM job_stream_seqs s WHERE s.job_id = $1),
                            stream_seq, batch_seq) = $2
             RETURNING id, owner, model_group, tier, status, metadata, result, result_text, usage, cost,
                 pricing_missing, attempts, error_class, error_message, not_before, created_at, started_at,
                 finished_at, reply_subject",
        )
        .bind(id)
        .bind(seq)
        .bind(error.class.as_str())
        .bind(&error.message)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| {
            use sqlx::FromRow;
            Ok::<_, sqlx::Error>((JobRow::from_row(&r)?, r.try_get("reply_subject")?))
        })
        .transpose()?;
        let Some((row, reply)) = ended else {
            return Ok(None);
        };
        let mut replies = false;
        if let Some(subject) = reply.filter(|s| reply_ok(s)) {
            let body = serde_json::to_string(&row.done_event())?;
            sqlx::query(
                "INSERT INTO job_deliveries (job_id, kind, target, body) VALUES ($1, 'reply', $2, $3)
                 ON CONFLICT (job_id, kind) DO NOTHING",
            )
            .bind(id)
            .bind(subject)
            .bind(body)
            .execute(&mut *tx)
            .await?;
            replies = true;
        }
        tx.commit().await?;
        Ok(Some((row, replies)))
    }
}
