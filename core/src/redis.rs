//! Redis: the shared connection pool (flow control, cooldowns, readiness), over TLS for
//! `rediss://` URLs.

use std::time::Duration;

pub use deadpool_redis::{redis, Pool};

use crate::error::{BoxError, Error};
use crate::tls::{redact_url, TlsEnv};

/// A Redis pool could not be built, or Redis did not answer; the cause is its source.
pub type RedisError = Error<RedisErrorKind>;

/// What failed with Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisErrorKind {
    /// The URL (shown redacted) or its TLS set-up is unusable.
    #[error("invalid Redis URL: {url}")]
    Config { url: String },
    /// No connection, or a command failed.
    #[error("Redis unavailable")]
    Unavailable,
}

/// Redis did not answer: `source` says how.
pub fn unavailable(source: impl Into<BoxError>) -> RedisError {
    Error::new(RedisErrorKind::Unavailable, source)
}

/// A pool of `max_size` connections to `url` (`redis://` or `rediss://` for TLS, with
/// `user:password@` for ACL users). Trusts `SSL_CERT_FILE` of the process environment
/// besides the system roots. Connects lazily.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, RedisError> {
    let tls = crate::tls::TlsEnv::from_env(&crate::config::ProcessEnv);
    pool_with(url, max_size, &tls)
}

/// [`pool`] with the TLS settings of a loaded config.
pub fn pool_with(url: &str, max_size: usize, tls: &TlsEnv) -> Result<Pool, RedisError> {
    use deadpool_redis::redis::IntoConnectionInfo;
    crate::tls::install_provider();
    let config_error = |e: BoxError| {
        Error::new(
            RedisErrorKind::Config {
                url: redact_url(url),
            },
            e,
        )
    };
    let info = url
        .into_connection_info()
        .map_err(|e| config_error(e.into()))?;
    let info = match crate::tls::trusted_pem(tls, &[]).map_err(|e| config_error(e.into()))? {
        Some(root_cert) if is_tls(url) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        )
        .map_err(|e| config_error(e.into()))?
        .get_connection_info()
        .clone(),
        _ => info,
    };
    let manager = deadpool_redis::Manager::new(info).map_err(|e| config_error(e.into()))?;
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| config_error(e.into()))
}

/// Whether `url` asks for TLS (`rediss://`, or `valkeys://`).
pub fn is_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or_default();
    scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
}

/// `PING`, for readiness checks.
pub async fn ping(pool: &Pool) -> Result<(), RedisError> {
    let mut conn = Box::pin(pool.get()).await.map_err(unavailable)?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}
