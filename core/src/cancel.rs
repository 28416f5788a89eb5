//! Cancelling jobs: how the api tells every worker.
//!
//! A cancelled job is marked in Redis (`{<prefix>}:cancelled:<id>`, checked inside the
//! admission script, so a queued or deferred job is never called, on any worker) and
//! announced on core NATS (`<prefix>.cancel.<id>`, so a worker that is calling it right
//! now stops). The job row is set to `cancelled` by the api.

use std::time::Duration;

use deadpool_redis::redis;
use uuid::Uuid;

use crate::redis::{Pool, RedisError};

/// How long a cancellation is remembered (longer than any job waits in the queue).
pub const REMEMBER: Duration = Duration::from_secs(7 * 86_400);

/// The Redis key admission checks.
pub fn key(prefix: &str, id: Uuid) -> String {
    format!("{{{prefix}}}:cancelled:{id}")
}

/// Marks `ids` cancelled in one round trip.
pub async fn mark(pool: &Pool, prefix: &str, ids: &[Uuid]) -> Result<(), RedisError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("SET")
            .arg(key(prefix, *id))
            .arg(1)
            .arg("EX")
            .arg(REMEMBER.as_secs())
            .ignore();
    }
    let mut conn = Box::pin(pool.get())
        .await
        .map_err(crate::redis::unavailable)?;
    pipe.query_async::<()>(&mut conn)
        .await
        .map_err(crate::redis::unavailable)
}
