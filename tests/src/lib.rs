//! sluice-testkit: real servers for tests, the provider simulator, and helpers that run
//! a whole Sluice stack (api + workers) in-process or as processes.
//!
//! Every test gets its own subject prefix, database and Redis key prefix
//! ([`TestEnv::new`]), so tests run in parallel against one set of servers.
#![forbid(unsafe_code)]

pub mod otlp;
pub mod servers;
pub mod sim;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_core::{Config, Store};
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use servers::{services, unique, Services};

/// One test's isolated slice of the servers.
pub struct TestEnv {
    pub prefix: String,
    pub database_url: String,
    pub nats_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub dir: PathBuf,
}

impl TestEnv {
    /// A fresh database (migrated), subject prefix and Redis key prefix.
    pub async fn new() -> Result<TestEnv> {
        let s = services();
        let name = unique("t");
        let mut admin = sqlx::PgConnection::connect(&s.pg_admin_url)
            .await
            .context("connecting to the test Postgres")?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .context("creating test database")?;
        let database_url = format!("postgres://postgres@127.0.0.1:{}/{name}", s.pg_port);
        Store::connect(&database_url, 2).await?.migrate().await?;
        let dir = s.root.join(&name);
        std::fs::create_dir_all(&dir)?;
        Ok(TestEnv {
            prefix: name.clone(),
            database_url,
            nats_url: s.nats_url.clone(),
            redis_url: s.redis_url.clone(),
            redis_prefix: format!("{name}:"),
            dir,
        })
    }

    /// A whole `sluice.yaml`: `models` (a `model_list:` section etc.) plus this test's
    /// `sluice:` section. `sluice_extra` lines are added inside `sluice:` (indented).
    /// Workers' `metrics_addr` is `127.0.0.1:0` unless `sluice_extra` sets it.
    pub fn yaml(&self, models: &str, sluice_extra: &str) -> String {
        format!(
            "{models}\nsluice:\n  nats_url: {}\n  redis_url: {}\n  database_url: {}\n  subject_prefix: {}\n{metrics}{sluice_extra}\n",
            self.nats_url, self.redis_url, self.database_url, self.prefix,
            // Workers' metrics server on a free port unless the test picks one.
            metrics = if sluice_extra.contains("metrics_addr:") {
                ""
            } else {
                "  metrics_addr: 127.0.0.1:0\n"
            },
        )
    }

    /// Parses [`TestEnv::yaml`] without the process environment.
    pub fn config(&self, models: &str, sluice_extra: &str) -> Result<Config> {
        Ok(Config::from_yaml(
            &self.yaml(models, sluice_extra),
            Some("test.yaml".into()),
            &|_: &str| None,
        )?)
    }

    /// Writes [`TestEnv::yaml`] to a file for a `sluice` process.
    pub fn write_config(&self, models: &str, sluice_extra: &str) -> Result<PathBuf> {
        let path = self.dir.join("sluice.yaml");
        std::fs::write(&path, self.yaml(models, sluice_extra))?;
        Ok(path)
    }

    pub async fn store(&self) -> Result<Store> {
        Ok(Store::connect(&self.database_url, 4).await?)
    }
}

/// An api and workers running in this process.
pub struct Stack {
    pub api_url: String,
    config: Config,
    api: Option<(CancellationToken, JoinHandle<()>)>,
    workers: Vec<(CancellationToken, JoinHandle<()>)>,
}

impl Stack {
    /// Starts the api on a free port and `workers` workers; returns once the api is ready.
    pub async fn start(config: Config, workers: usize) -> Result<Stack> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api_url = format!("http://{}", listener.local_addr()?);
        let token = CancellationToken::new();
        let t = token.clone();
        let c = config.clone();
        let handle = tokio::spawn(async move {
            let native = sluice_worker::native::Backend::new(&c)
                .ok()
                .map(|b| Arc::new(b) as Arc<dyn sluice_core::native_batches::NativeBackend>);
            if let Err(e) = sluice_api::serve_with(listener, c, t, native).await {
                eprintln!("api stopped with error: {e}");
            }
        });
        let mut stack = Stack {
            api_url,
            config,
            api: Some((token, handle)),
            workers: Vec::new(),
        };
        stack.wait_ready().await?;
        for _ in 0..workers {
            stack.add_worker();
        }
        Ok(stack)
    }

    async fn wait_ready(&self) -> Result<()> {
        let http = reqwest::Client::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(r) = http.get(format!("{}/readyz", self.api_url)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("api at {} did not become ready", self.api_url)
    }

    /// Stops the api (gracefully, as on SIGTERM) and starts a new one on a new port;
    /// workers keep running. `api_url` changes.
    pub async fn restart_api(&mut self) -> Result<()> {
        if let Some((t, h)) = self.api.take() {
            t.cancel();
            let _ = h.await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        self.api_url = format!("http://{}", listener.local_addr()?);
        let token = CancellationToken::new();
        let t = token.clone();
        let c = self.config.clone();
        let handle = tokio::spawn(async move {
            let native = sluice_worker::native::Backend::new(&c)
                .ok()
                .map(|b| Arc::new(b) as Arc<dyn sluice_core::native_batches::NativeBackend>);
            if let Err(e) = sluice_api::serve_with(listener, c, t, native).await {
                eprintln!("api stopped with error: {e}");
            }
        });
        self.api = Some((token, handle));
        self.wait_ready().await
    }

    pub fn add_worker(&mut self) {
        let token = CancellationToken::new();
        let t = token.clone();
        let c = self.config.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = sluice_worker::run(c, t).await {
                eprintln!("worker stopped with error: {e}");
            }
        });
        self.workers.push((token, handle));
    }

    /// Drains and stops everything.
    pub async fn stop(mut self) {
        for (t, _) in &self.workers {
            t.cancel();
        }
        for (_, h) in self.workers.drain(..) {
            let _ = h.await;
        }
        if let Some((t, h)) = self.api.take() {
            t.cancel();
            let _ = h.await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (t, _) in &self.workers {
            t.cancel();
        }
        if let Some((t, _)) = &self.api {
            t.cancel();
        }
    }
}

/// Polls `f` until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
