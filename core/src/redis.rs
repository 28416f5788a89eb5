//! Redis: the shared connection pool (flow control, cooldowns, readiness).

use std::time::Duration;

pub use deadpool_redis::{redis, Pool};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid Redis URL: {0}")]
    Config(String),
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
}

/// A pool of `max_size` connections to `url`. Connects lazily.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, RedisError> {
    let mut cfg = deadpool_redis::Config::from_url(url);
    cfg.pool = Some(deadpool_redis::PoolConfig {
        max_size,
        timeouts: deadpool_redis::Timeouts {
            wait: Some(Duration::from_secs(5)),
            create: Some(Duration::from_secs(5)),
            recycle: Some(Duration::from_secs(5)),
        },
        ..Default::default()
    });
    cfg.create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| RedisError::Config(e.to_string()))
}

/// `PING`, for readiness checks.
pub async fn ping(pool: &Pool) -> Result<(), RedisError> {
    let mut conn = Box::pin(pool.get())
        .await
        .map_err(|e| RedisError::Unavailable(e.to_string()))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| RedisError::Unavailable(e.to_string()))?;
    Ok(())
}
