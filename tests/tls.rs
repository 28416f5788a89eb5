//! TLS and credentials end to end: Postgres that rejects plaintext (hostssl-only
//! `pg_hba.conf`, password and client certificate), Redis on a TLS-only port with an ACL
//! user, NATS over TLS with a user and password and a client certificate (`NATS_CERT`,
//! `NATS_KEY`); certificates made by the test's own CA, trusted through
//! `SSL_CERT_FILE` (NATS, Redis) and `sslrootcert` with `sslmode=verify-full` (Postgres).
//! A job runs through an in-process api and a worker process; `/readyz` says every
//! connection is encrypted, and no log line of the worker carries a password.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{job, KEY};
use serde_json::Value;
use sluice_testkit::servers::TlsServices;
use sluice_testkit::sim::{self, SimConfig};
use sluice_testkit::{eventually, Stack};
use sqlx::Connection;

const PASSWORD: &str = "pw-9f3a1c77-never-logged";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_over_tls_with_credentials_everywhere() -> Result<()> {
    let tls = TlsServices::start("sluice", PASSWORD)?;
    let ca = tls.pki.ca.display().to_string();

    // Postgres: plaintext is refused, verified TLS with the password is accepted.
    let plain = tls
        .database_url("postgres")
        .replace("sslmode=verify-full", "sslmode=disable");
    assert!(
        sqlx::PgConnection::connect(&plain).await.is_err(),
        "Postgres must refuse plaintext"
    );
    let no_client_cert = tls
        .database_url("postgres")
        .split("&sslcert=")
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        sqlx::PgConnection::connect(&no_client_cert).await.is_err(),
        "Postgres must want the client certificate"
    );
    let mut admin = sqlx::PgConnection::connect(&tls.database_url("postgres"))
        .await
        .context("Postgres over verify-full TLS")?;
    sqlx::query("CREATE DATABASE sluice")
        .execute(&mut admin)
        .await?;
    drop(admin);
    let database_url = tls.database_url("sluice");
    sluice_core::Store::connect(&database_url, 2)
        .await?
        .migrate()
        .await?;

    // Redis: no plaintext port; the TLS port wants the ACL user.
    let client_cert = tls.pki.client_cert.display().to_string();
    let client_key = tls.pki.client_key.display().to_string();
    let env_ca = |name: &str| match name {
        "SSL_CERT_FILE" => Some(ca.clone()),
        "NATS_CERT" => Some(client_cert.clone()),
        "NATS_KEY" => Some(client_key.clone()),
        _ => None,
    };
    let tls_env = sluice_core::tls::TlsEnv::from_env(&env_ca);
    let plain_redis =
        sluice_core::redis::pool(&format!("redis://127.0.0.1:{}", tls.redis_port), 1)?;
    assert!(sluice_core::redis::ping(&plain_redis).await.is_err());
    let no_password = sluice_core::redis::pool_with(
        &format!("rediss://localhost:{}", tls.redis_port),
        1,
        &tls_env,
    )?;
    assert!(sluice_core::redis::ping(&no_password).await.is_err());
    let redis = sluice_core::redis::pool_with(&tls.redis_url(), 1, &tls_env)?;
    sluice_core::redis::ping(&redis).await?;

    // NATS: neither a wrong password nor a missing client certificate gets in (the client
    // keeps retrying in the background, so it never reaches the connected state).
    let no_cert = sluice_core::nats::connect(
        &tls.nats_url(),
        &sluice_core::tls::TlsEnv::from_env(&|n: &str| (n == "SSL_CERT_FILE").then(|| ca.clone())),
        "no-cert",
    )
    .await?;
    let wrong = tls.nats_url().replace(PASSWORD, "wrong");
    let client = sluice_core::nats::connect(&wrong, &tls_env, "wrong").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(
        client.connection_state(),
        async_nats::connection::State::Connected,
        "NATS accepted a wrong password"
    );
    assert_ne!(
        no_cert.connection_state(),
        async_nats::connection::State::Connected,
        "NATS accepted a client without a certificate"
    );
    drop(client);
    drop(no_cert);

    let sim = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let metrics_port = sluice_testkit::servers::free_port();
    let yaml = format!(
        "{models}\nsluice:\n  nats_url: {nats}\n  redis_url: {redis}\n  database_url: {database_url}\n  subject_prefix: tls\n  metrics_addr: 127.0.0.1:{metrics_port}\n",
        models = common::models(&sim),
        nats = tls.nats_url(),
        redis = tls.redis_url(),
    );
    let config = sluice_core::Config::from_yaml(&yaml, Some("tls.yaml".into()), &env_ca)?;
    assert_eq!(
        config.tls.ssl_cert_file.as_deref(),
        Some(tls.pki.ca.as_path())
    );
    let stack = match Stack::start(config, 0).await {
        Ok(s) => s,
        Err(e) => {
            for name in ["nats.log", "redis.log", "postgres.log"] {
                let text = std::fs::read_to_string(tls.root.join(name)).unwrap_or_default();
                eprintln!("--- {name}\n{text}");
            }
            return Err(e);
        }
    };

    // The worker as a process, trusting the CA through SSL_CERT_FILE, logging at debug.
    let path = tls.root.join("sluice.yaml");
    std::fs::write(&path, &yaml)?;
    let log = tls.root.join("worker.log");
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("worker")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "debug")
        .env("SSL_CERT_FILE", &ca)
        .env("NATS_CERT", &client_cert)
        .env("NATS_KEY", &client_key)
        .env_remove("SLUICE_MASTER_KEY")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("SLUICE_METRICS_ADDR")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(tls.root.join("worker.err"))?)
        .kill_on_drop(true)
        .spawn()?;

    let http = reqwest::Client::new();
    let limit = Duration::from_secs(60);
    for url in [
        stack.api_url.clone(),
        format!("http://127.0.0.1:{metrics_port}"),
    ] {
        let ready: Value = eventually(limit, "ready over TLS", || async {
            let r = http.get(format!("{url}/readyz")).send().await.ok()?;
            if r.status() != 200 {
                return None;
            }
            r.json().await.ok()
        })
        .await?;
        assert_eq!(ready["ready"], true, "{ready}");
        assert_eq!(ready["encrypted"]["nats"], true, "{ready}");
        assert_eq!(ready["encrypted"]["redis"], true, "{ready}");
        assert_eq!(ready["encrypted"]["postgres"], true, "{ready}");
    }

    let created: Value = http
        .post(format!("{}/v1/jobs", stack.api_url))
        .bearer_auth(KEY)
        .json(&job("fast", true))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().context("job id")?.to_string();
    let done: Value = eventually(limit, "the job to succeed", || async {
        let r: Value = http
            .get(format!("{}/v1/jobs/{id}", stack.api_url))
            .bearer_auth(KEY)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (r["status"] == "succeeded").then_some(r)
    })
    .await?;
    assert_eq!(
        done["attempt_log"].as_array().map(Vec::len),
        Some(1),
        "{done}"
    );
    assert_eq!(sim.requests(), 1);

    worker.start_kill()?;
    let _ = worker.wait().await;
    stack.stop().await;
    let mut logs = std::fs::read_to_string(&log)?;
    logs.push_str(&std::fs::read_to_string(tls.root.join("worker.err"))?);
    assert!(!logs.is_empty(), "the worker logged nothing at debug level");
    let leaks: Vec<String> = logs
        .lines()
        .filter(|l| l.contains(PASSWORD))
        .map(|l| {
            l.replace(PASSWORD, "<PASSWORD>")
                .chars()
                .take(400)
                .collect()
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "a password reached the worker's log:\n{}",
        leaks.join("\n")
    );
    Ok(())
}
