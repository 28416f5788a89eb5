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
    /// Per service: is the connection encrypted (TLS)? Absent while unknown (down).
    pub encrypted: Encrypted,
    /// Set while a worker drains: it is up but takes no new work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining: Option<bool>,
}

/// Whether each connection is encrypted: NATS and Redis from the connection settings (the
/// clients never fall back to plaintext once TLS is asked for), Postgres as its server
/// reports it (`pg_stat_ssl`), since `sslmode=prefer` may silently not encrypt.
#[derive(Debug, Clone, Serialize)]
pub struct Encrypted {
    pub nats: bool,
    pub redis: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<bool>,
}

/// What readiness needs to know of the connection settings.
pub struct Links<'a> {
    pub nats_url: &'a str,
    pub redis_url: &'a str,
    pub tls: &'a crate::tls::TlsEnv,
}

impl<'a> From<&'a crate::Config> for Links<'a> {
    fn from(c: &'a crate::Config) -> Links<'a> {
        Links {
            nats_url: &c.nats_url,
            redis_url: &c.redis_url,
            tls: &c.tls,
        }
    }
}

/// Runs the three checks concurrently.
pub async fn check(
    nats: &async_nats::Client,
    redis: &Pool,
    store: &Store,
    links: Links<'_>,
) -> Readiness {
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
        let checked = async {
            store.check_migrated().await?;
            store.is_encrypted().await
        };
        match tokio::time::timeout(CHECK_TIMEOUT, checked).await {
            Ok(Ok(encrypted)) => ("ok".to_string(), Some(encrypted)),
            Ok(Err(e)) => (e.to_string(), None),
            Err(_) => ("timed out".to_string(), None),
        }
    };
    let (redis, (postgres, pg_encrypted)) = tokio::join!(redis_check, pg_check);
    let nats_encrypted = crate::nats::is_encrypted(nats, links.nats_url, links.tls);
    let nats = if nats_ok { "ok" } else { "disconnected" }.to_string();
    Readiness {
        ready: nats == "ok" && redis == "ok" && postgres == "ok",
        nats,
        redis,
        postgres,
        encrypted: Encrypted {
            nats: nats_encrypted,
            redis: crate::redis::is_tls(links.redis_url),
            postgres: pg_encrypted,
        },
        draining: None,
    }
}
