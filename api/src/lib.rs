//! The Sluice HTTP API: submit jobs, read their status and results, follow
//! their events as SSE, cancel them; virtual keys; the queue view; metrics, health and
//! readiness.
//!
//! Submitting records the job row (group-committed with other submissions) and then
//! publishes the envelope to JetStream; it answers only when both are durable.
#![forbid(unsafe_code)]

pub mod access;
pub mod auth;
pub mod batches;
pub mod bodies;
pub mod errors;
pub mod guard;
mod job_events;
pub mod metrics;
pub mod native;
pub mod outbox;
pub mod routes;
pub mod streams;
mod submit;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::jetstream;
use axum::http::HeaderMap;
use axum::routing::{delete, get, post};
use axum::Router;
use futures::future::BoxFuture;
use sluice_core::group_commit::{Batcher, Flush, FlushError};
use sluice_core::store::{NewJob, Recorded};
use sluice_core::{Config, Store};
use sluice_schemas::Subjects;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Caller, KeyCache};
use crate::errors::ApiError;
use crate::workers::Workers;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Nats(#[from] sluice_core::nats::NatsError),
    #[error(transparent)]
    Store(#[from] sluice_core::store::StoreError),
    #[error(transparent)]
    Redis(#[from] sluice_core::redis::RedisError),
    #[error("cannot listen for worker heartbeats: {0}")]
    Subscribe(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("refusing to listen on non-loopback address {0} without SLUICE_MASTER_KEY")]
    NoMasterKey(SocketAddr),
    #[error(
        "refusing to listen on non-loopback address {0} with a master key published in Sluice's examples; set SLUICE_MASTER_KEY to a secret of your own"
    )]
    PublishedMasterKey(SocketAddr),
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// What every request handler shares.
pub struct AppState {
    pub config: Arc<Config>,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub store: Store,
    /// Group-committed job inserts.
    pub jobs: Batcher<NewJob, Recorded>,
    /// Published jobs whose outbox entries the next job insert drops (`outbox.rs`).
    pub outbox: Arc<outbox::Published>,
    /// For readiness (and, later, flow control).
    pub redis: sluice_core::redis::Pool,
    /// Recently resolved virtual keys.
    pub keys: KeyCache,
    /// Workers heard from recently.
    pub workers: Arc<Workers>,
    /// Tells the batch driver that a batch was created or cancelled.
    pub batch_wake: Arc<tokio::sync::Notify>,
    /// Open event streams per key (`sluice.safety.max_streams_per_key`).
    pub streams: Arc<streams::StreamCounts>,
    /// Cancelled when the api shuts down: long-lived streams end on it.
    pub shutdown: CancellationToken,
    /// The providers' batch APIs, for native batches (`None`: batches run live).
    pub native: Option<Arc<dyn sluice_core::native_batches::NativeBackend>>,
}

impl AppState {
    /// Authenticates a request: the master key or a virtual key.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        auth::authenticate(
            headers,
            self.config.master_key.as_ref(),
            &self.store,
            &self.keys,
        )
        .await
    }
}

/// Job-insert flushes running at once (see `Batcher::spawn_overlapping`).
const JOB_FLUSHES: usize = 4;

/// Writes job inserts, and with them the outbox upkeep of jobs published meanwhile.
struct JobsFlush(Store, Arc<outbox::Published>);

impl Flush<NewJob> for JobsFlush {
    type Out = Recorded;
    fn flush<'a>(
        &'a self,
        items: &'a [NewJob],
    ) -> BoxFuture<'a, Result<Vec<Recorded>, FlushError>> {
        Box::pin(async move {
            let published = self.1.take().unwrap_or_default();
            let written = self
                .0
                .record_new_jobs_and_published(items, &outbox::pairs(&published))
                .await;
            if written.is_err() {
                self.1.restore(published);
            }
            written.map_err(FlushError::from)
        })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/v1/jobs",
            post(routes::jobs::submit).get(routes::job_list::list),
        )
        .route("/v1/chat/completions", post(routes::chat::completions))
        .route("/v1/embeddings", post(routes::embeddings::create))
        .route("/v1/spend", get(routes::spend::report))
        .route("/v1/limits", get(routes::limits::report))
        .route("/v1/jobs/{id}", get(routes::jobs::get))
        .route("/v1/jobs/{id}/events", get(routes::jobs::events))
        .route("/v1/jobs/{id}/cancel", post(routes::jobs::cancel))
        .route(
            "/v1/files",
            post(routes::files::upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/files/{id}",
            get(routes::files::get).delete(routes::files::delete),
        )
        .route("/v1/files/{id}/content", get(routes::files::content))
        .route(
            "/v1/batches",
            post(routes::batches::create).get(routes::batches::list),
        )
        .route("/v1/batches/{id}", get(routes::batches::get))
        .route("/v1/batches/{id}/cancel", post(routes::batches::cancel))
        .route("/v1/models", get(routes::models::list))
        .route(
            "/v1/keys",
            post(routes::keys::create).get(routes::keys::list),
        )
        .route("/v1/keys/{id}", delete(routes::keys::delete))
        .route("/v1/queue", get(routes::queue::show))
        .route("/v1/overview", get(routes::overview::show))
        .route("/v1/me", get(routes::me::show))
        .route("/ui", get(routes::ui::index))
        .route("/ui/", get(routes::ui::index))
        .route("/ui/{file}", get(routes::ui::asset))
        .route("/metrics", get(routes::metrics::metrics))
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn(access::layer))
        .with_state(state)
}

/// Master keys that appear in this repository's quickstart, examples and deploy files (and
/// LiteLLM's documentation): anyone can read them, so they only ever serve loopback.
const PUBLISHED_MASTER_KEYS: &[&str] = &[
    "sk-sluice-quickstart",
    "sk-1234",
    "sk-master-change-me-0000",
];

fn is_published_master_key(key: &str) -> bool {
    PUBLISHED_MASTER_KEYS.contains(&key)
        || ["change-me", "replace-me", "changeme"]
            .iter()
            .any(|p| key.to_ascii_lowercase().contains(p))
}

/// Binds `config.api_addr` and serves until `shutdown` is cancelled; `native` as in
/// [`serve_with`].
pub async fn serve(
    config: Config,
    shutdown: CancellationToken,
    native: Option<Arc<dyn sluice_core::native_batches::NativeBackend>>,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(&config.api_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.api_addr.clone(),
            source,
        })?;
    Box::pin(serve_with(listener, config, shutdown, native)).await
}

/// Serves on an already bound listener (tests bind port 0), with every batch running live.
pub async fn serve_on(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    Box::pin(serve_with(listener, config, shutdown, None)).await
}

/// Serves on an already bound listener; `native` speaks the providers' batch APIs
/// (`sluice_worker::native::Backend`, handed in by the binary: the api does not depend
/// on the worker crate).
pub async fn serve_with(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
    native: Option<Arc<dyn sluice_core::native_batches::NativeBackend>>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    if !addr.ip().is_loopback() {
        match &config.master_key {
            None => return Err(ServeError::NoMasterKey(addr)),
            Some(k) if is_published_master_key(k.expose()) => {
                return Err(ServeError::PublishedMasterKey(addr))
            }
            Some(_) => {}
        }
    }
    let config = Arc::new(config);
    let nats = sluice_core::nats::connect(&config.nats_url, &config.tls, "sluice-api").await?;
    let js = jetstream::new(nats.clone());
    let subjects = Subjects::new(&config.subject_prefix);
    sluice_core::nats::ensure_streams(&js, &subjects, config.events_max_age, config.nats_replicas)
        .await?;
    let store = Store::connect_bounded(
        &config.database_url,
        16,
        &config.tls,
        Some(config.safety.statement_timeout),
    )
    .await?;
    store.check_migrated().await?;
    let redis = sluice_core::redis::pool_with(&config.redis_url, 4, &config.tls)?;
    metrics::describe();
    let heartbeats = nats
        .subscribe(subjects.worker_heartbeat())
        .await
        .map_err(|e| ServeError::Subscribe(e.to_string()))?;
    if config.callbacks.otel && !sluice_core::telemetry::enabled() {
        tracing::warn!("the otel callback is named but no OTEL_EXPORTER_OTLP_ENDPOINT is set: no traces are exported");
    }
    if !config.ignored_keys.is_empty() {
        tracing::warn!(keys = ?config.ignored_keys, "config keys Sluice does not act on");
    }

    let background = TaskTracker::new();
    let outbox = Arc::new(outbox::Published::default());
    // Job inserts do not order one another: a few flushes overlap, so a submission waits
    // for about one commit, not for the running one and then its own.
    let jobs = Batcher::spawn_overlapping(
        "jobs",
        512,
        JOB_FLUSHES,
        &background,
        JobsFlush(store.clone(), Arc::clone(&outbox)),
    );
    let workers = Arc::new(Workers::default());
    let ops_stop = CancellationToken::new();
    background.spawn(workers::listen(
        heartbeats,
        Arc::clone(&workers),
        ops_stop.clone(),
    ));
    background.spawn(upkeep(ops_stop.clone()));
    background.spawn(outbox::run(
        store.clone(),
        Arc::clone(&outbox),
        ops_stop.clone(),
    ));
    let state = Arc::new(AppState {
        config: Arc::clone(&config),
        nats: nats.clone(),
        js,
        subjects,
        store,
        jobs,
        outbox,
        redis,
        keys: KeyCache::new(config.safety.negative_key_ttl),
        workers,
        batch_wake: Arc::new(tokio::sync::Notify::new()),
        streams: Arc::default(),
        shutdown: shutdown.clone(),
        native,
    });
    background.spawn(batches::run(
        Arc::clone(&state),
        Arc::clone(&state.batch_wake),
        ops_stop.clone(),
    ));
    tracing::info!(%addr, "api listening");
    let app = router(state);
    let grace = config.worker.drain;
    let serving =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    // Streams end on the shutdown signal; a request still open after the grace period
    // (the same `drain_secs` the worker gets) is cut off.
    let served = tokio::select! {
        served = serving => served,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "requests still open after the grace period; closing them");
            Ok(())
        }
    };
    ops_stop.cancel();
    background.close();
    background.wait().await;
    served.map_err(ServeError::Serve)?;
    let _ = nats.flush().await;
    tracing::info!("api stopped");
    Ok(())
}

/// Keeps histogram storage bounded between scrapes.
async fn upkeep(stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => sluice_core::metrics::upkeep(),
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_published_master_key;

    #[test]
    fn published_master_keys_are_recognised() {
        for k in [
            "sk-sluice-quickstart",
            "sk-1234",
            "sk-master-change-me-0000",
            "replace-me",
            "sk-CHANGEME-please",
        ] {
            assert!(is_published_master_key(k), "{k}");
        }
        assert!(!is_published_master_key("sk-master-3f9a0c1e5b7d2a4c"));
    }
}
