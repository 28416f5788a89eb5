//! Postgres: the pool, migrations, and every statement Sluice runs (the schema is `migrations/`).
//!
//! Hot-path writes take whole batches (see [`crate::group_commit`]), so a batch of any size
//! is one statement per table. The hottest (the worker's claims and ends, the api's job
//! inserts) pass a typed array per column, expanded with `UNNEST` ([`arrays`]); the others
//! pass their rows as one JSON parameter expanded with `jsonb_to_recordset`. Reads use
//! runtime queries, so building never needs a database.
//!
//! One file per concept, each with its rows and statements: [`jobs`] (recording and
//! reading jobs), [`job_list`] (listing them), [`outbox`] (envelopes not yet published),
//! [`lost`] (jobs whose queue message is gone), [`attempts`] (provider calls on record),
//! [`ledger`] (the worker's batched writes), [`deliveries`] (a job's end delivered to its
//! webhook or reply subject), [`bodies`] (messages too large for NATS), [`batches`]
//! (the Batch API's batches and lines), [`files`] (file bodies), [`keys`] (virtual keys),
//! [`spend`] (spend reports) and [`budget_ledger`] (a budget's spend, for the limiter).
//! The crate root re-exports the last seven at their old paths (`sluice_core::batches`, ...).
//! (`core/src/native_batches.rs` still holds its own statements.)

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

pub(crate) mod arrays;
pub mod attempts;
pub mod batches;
pub mod bodies;
pub mod budget_ledger;
pub mod deliveries;
pub mod files;
pub mod job_list;
pub mod jobs;
pub mod keys;
pub mod ledger;
pub mod lost;
pub mod outbox;
pub mod spend;

pub use attempts::AttemptRow;
pub use deliveries::{DeliveryRow, NewDelivery};
pub use jobs::{JobProgress, JobRow, NewJob, Recorded};
pub use ledger::{
    AttemptRecord, AttemptStarted, JobDeferred, JobOutcome, LedgerEntry, WebhookOutcome, Written,
};
pub use outbox::OutboxRow;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Why a statement (or connecting, or migrating) failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The pool could not be built: a bad URL, TLS set-up, or no server.
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] crate::error::BoxError),
    #[error("database is not migrated ({0}); run `sluice migrate`")]
    /// The database lacks a migration of this build.
    NotMigrated(String),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// Postgres refused a statement, or the connection failed under it.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// A batch parameter could not be encoded as JSON.
    #[error("cannot encode rows: {0}")]
    Encode(#[from] serde_json::Error),
    /// A batch parameter could not be encoded for Postgres.
    #[error("cannot encode a parameter: {0}")]
    Bind(#[source] sqlx::error::BoxDynError),
}

impl From<StoreError> for crate::group_commit::FlushError {
    /// Data Postgres refuses (class 22, data exception; class 23, integrity; class 54,
    /// program limit) or cannot encode is permanent: the same rows will be refused again.
    fn from(e: StoreError) -> Self {
        let permanent = match &e {
            StoreError::Encode(_) | StoreError::Bind(_) => true,
            StoreError::Query(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")),
            _ => false,
        };
        crate::group_commit::FlushError {
            message: e.to_string(),
            permanent,
        }
    }
}

/// The job statuses that end a job, as an SQL list.
const TERMINAL: &str = "('succeeded','failed','cancelled','expired')";

/// Parses a Postgres URL; with `SSL_CERT_FILE` set, the trusted roots become the system
/// roots, `SSL_CERT_FILE` and the URL's `sslrootcert` together (sqlx alone would use
/// `SSL_CERT_FILE` instead of the system roots).
fn connect_options(
    url: &str,
    tls: &crate::tls::TlsEnv,
) -> Result<sqlx::postgres::PgConnectOptions, StoreError> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Connect(format!("invalid DATABASE_URL: {e}").into()))?;
    if tls.ssl_cert_file.is_none() {
        return Ok(options);
    }
    let root_cert = url
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| matches!(*k, "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
        .map(|(_, v)| std::path::PathBuf::from(v))
        .or_else(|| std::env::var_os("PGSSLROOTCERT").map(Into::into));
    let extra: Vec<&std::path::Path> = root_cert.iter().map(|p| p.as_path()).collect();
    match crate::tls::trusted_pem(tls, &extra) {
        Ok(Some(pem)) => Ok(options.ssl_root_cert_from_pem(pem)),
        Ok(None) => Ok(options),
        Err(e) => Err(StoreError::Connect(e.into())),
    }
}

/// The Postgres pool and every statement Sluice runs on it; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects to `url` (`sslmode`, `sslrootcert`, `sslcert`/`sslkey` as libpq reads
    /// them). Trusts `SSL_CERT_FILE` of the process environment besides the system roots.
    /// No statement timeout (`sluice migrate`, tests).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let tls = crate::tls::TlsEnv::from_env(&crate::config::ProcessEnv);
        Store::connect_with(url, max_connections, &tls).await
    }

    /// [`Store::connect`] with the TLS settings of a loaded config.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        tls: &crate::tls::TlsEnv,
    ) -> Result<Store, StoreError> {
        Store::connect_bounded(url, max_connections, tls, None).await
    }

    /// [`Store::connect_with`], every statement of the pool cancelled by Postgres after
    /// `statement_timeout`, so no query can hold a connection (and the requests queued
    /// behind it) for ever.
    pub async fn connect_bounded(
        url: &str,
        max_connections: u32,
        tls: &crate::tls::TlsEnv,
        statement_timeout: Option<Duration>,
    ) -> Result<Store, StoreError> {
        let mut options = connect_options(url, tls)?;
        if let Some(t) = statement_timeout {
            options = options.options([("statement_timeout", t.as_millis().max(1).to_string())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Connect(e.into()))?;
        Ok(Store { pool })
    }

    /// Whether this pool's connections to Postgres are encrypted (asked of the server).
    pub async fn is_encrypted(&self) -> Result<bool, StoreError> {
        let ssl: Option<bool> =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_optional(&self.pool)
                .await?;
        Ok(ssl.unwrap_or(false))
    }

    /// The pool, for statements that live beside their concept outside this module.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(StoreError::Migrate)
    }

    /// Refuses to serve on a database that lacks this build's migrations.
    pub async fn check_migrated(&self) -> Result<(), StoreError> {
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
            {
                Ok(v) => v,
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                    return Err(StoreError::NotMigrated("no migrations applied".into()))
                }
                Err(e) => return Err(e.into()),
            };
        for m in MIGRATOR.iter() {
            if !applied.contains(&m.version) {
                return Err(StoreError::NotMigrated(format!(
                    "missing {} {}",
                    m.version, m.description
                )));
            }
        }
        Ok(())
    }
}
