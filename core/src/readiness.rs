//! Readiness: can this process do its work right now? NATS connected, Redis answering,
//! Postgres answering with this build's migrations applied. Shared by the api's and the
//! worker's `/readyz`; liveness (`/healthz`) needs no checks and lives with the routes.

use std::time::Duration;

use serde::Serialize;

use crate::redis::Pool;
use crate::Store;

/// How long one dependency may take to answer before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of every check, as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// `"ok"`, or why not (no secrets: connection errors name hosts, never credentials).
    pub nats: String,
    pub redis: String,
    pub postgres: String,
    /// Set while a worker drains: it is up but takes no new work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining: Option<bool>,
}

/// Runs the three checks concurrently.
pub async fn check(nats: &async_nats::Client, redis: &Pool, store: &Store) -> Readiness {
    let nats_ok = matches!(
        nats.connection_state(),
        async_nats::connection::State::Connected
    );
    let redis_check = async {
        match tokio::time::timeout(CHECK_TIMEOUT, crate::redis::ping(redis)).await {
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        }
    };
    let pg_check = async {
        match tokio::time::timeout(CHECK_TIMEOUT, store.check_migrated()).await {
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        }
    };
    let (redis, postgres) = tokio::join!(redis_check, pg_check);
    let nats = if nats_ok { "ok" } else { "disconnected" }.to_string();
    Readiness {
        ready: nats == "ok" && redis == "ok" && postgres == "ok",
        nats,
        redis,
        postgres,
        draining: None,
    }
}
