//! NATS: connecting, and creating or updating the streams and tier consumers.
//!
//! Everything here is idempotent and runs at every start of the api and the worker: what
//! is missing is created, what exists is left as the operator made it (streams are only
//! ever given more replicas). Only features of nats-server 2.9.10 are used.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use sluice_schemas::{Subjects, Tier};

use crate::error::{BoxError, Error};
use crate::tls::{redact_url, TlsEnv};

/// Connecting to NATS or setting up JetStream failed; the cause is kept as its source.
pub type NatsError = Error<NatsErrorKind>;

/// What failed talking to NATS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatsErrorKind {
    /// Connecting to the servers at `url` (credentials redacted).
    #[error("cannot connect to NATS at {url}")]
    Connect { url: String },
    /// Creating or updating a stream or consumer (`what` names it).
    #[error("cannot set up JetStream {what}")]
    Setup { what: String },
}

/// A set-up error of `what`.
fn setup_error(what: String, source: impl Into<BoxError>) -> NatsError {
    Error::new(NatsErrorKind::Setup { what }, source)
}

/// Connects to NATS. `urls` is one URL or a comma-separated list of the cluster's
/// servers (`nats://`, or `tls://` for TLS; `user:pass@` or a token as `token@` in a URL
/// authenticates). `tls` adds `NATS_CREDS` (JWT + nkey), `NATS_CA`, `NATS_CERT`/`NATS_KEY`
/// and `SSL_CERT_FILE`. Waits for the servers for a bounded time at start-up.
pub async fn connect(
    urls: &str,
    tls: &TlsEnv,
    name: &str,
) -> Result<async_nats::Client, NatsError> {
    let shown = urls
        .split(',')
        .map(|u| redact_url(u.trim()))
        .collect::<Vec<_>>()
        .join(",");
    let fail = |source: BoxError| Error::new(NatsErrorKind::Connect { url: shown.clone() }, source);
    let addrs = server_addrs(urls).map_err(|e| fail(e.into()))?;
    let mut options = match &tls.nats_creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| fail(format!("NATS_CREDS {}: {e}", path.display()).into()))?,
        None => async_nats::ConnectOptions::new(),
    };
    // async-nats reads no credentials from URLs: `user:pass@` becomes the user and
    // password, a lone `token@` the token, as with the nats CLI.
    if let Some(addr) = addrs.iter().find(|a| a.username().is_some()) {
        let user = percent_decode(addr.username().unwrap_or_default());
        options = match addr.password() {
            Some(pass) => options.user_and_password(user, percent_decode(pass)),
            None => options.token(user),
        };
    }
    // The client logs server addresses at debug level: keep credentials out of them.
    let addrs = addrs
        .iter()
        .map(without_credentials)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.into()))?;
    let config = crate::tls::nats_client_config(tls).map_err(|e| fail(e.into()))?;
    options = options
        .tls_client_config(config)
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5));
    if tls.nats_ca.is_some() || tls.nats_cert.is_some() {
        options = options.require_tls(true);
    }
    Box::pin(options.connect(addrs.as_slice()))
        .await
        .map_err(|e| fail(e.into()))
}

/// `addr` without its user, password or token.
fn without_credentials(addr: &async_nats::ServerAddr) -> Result<async_nats::ServerAddr, String> {
    let host = addr.host();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("{}://{host}:{}", addr.scheme(), addr.port())
        .parse()
        .map_err(|e| format!("{host}: {e}"))
}

/// Decodes `%XX` escapes of a URL's user or password.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `NATS_URL`: one URL or a comma-separated list.
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{}: {e}", redact_url(u)))
        })
        .collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err("no server in NATS_URL".into());
    }
    Ok(addrs)
}

/// Whether this client talks TLS to its server: a `tls://` URL, a TLS-requiring
/// option, or a server that requires TLS (the client then upgrades or fails).
pub fn is_encrypted(client: &async_nats::Client, urls: &str, tls: &TlsEnv) -> bool {
    tls.nats_ca.is_some()
        || tls.nats_cert.is_some()
        || client.server_info().tls_required
        || server_addrs(urls)
            .map(|a| a.iter().all(|a| a.tls_required()))
            .unwrap_or(false)
}

/// The streams Sluice needs, with `replicas` replicas each.
fn stream_configs(
    subjects: &Subjects,
    events_max_age: Duration,
    replicas: usize,
) -> [stream::Config; 3] {
    [
        stream::Config {
            name: subjects.jobs_stream(),
            subjects: vec![subjects.jobs_all()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            num_replicas: replicas,
            description: Some("Sluice job envelopes, one subject per priority tier".into()),
            ..Default::default()
        },
        stream::Config {
            name: subjects.events_stream(),
            subjects: vec![subjects.events_all()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: events_max_age,
            num_replicas: replicas,
            description: Some("Sluice job events (chunks, retries, results), replayable".into()),
            ..Default::default()
        },
        stream::Config {
            name: subjects.dlq_stream(),
            subjects: vec![subjects.dlq()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            description: Some(
                "Sluice messages that could not be processed, with the reason".into(),
            ),
            ..Default::default()
        },
    ]
}

/// Creates the jobs, events and dead-letter streams that are missing, with `replicas`
/// replicas. An existing stream is never overwritten: its replicas are only ever raised
/// to `replicas` (everything else kept as the operator left it), and any other
/// difference from what Sluice would create is logged as drift.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    events_max_age: Duration,
    replicas: usize,
) -> Result<(), NatsError> {
    for wanted in stream_configs(subjects, events_max_age, replicas) {
        let name = wanted.name.clone();
        let setup = |e: BoxError| setup_error(format!("stream {name}"), e);
        match Box::pin(js.get_stream(&name)).await {
            Ok(mut existing) => {
                let mut current = existing
                    .info()
                    .await
                    .map_err(|e| setup(e.into()))?
                    .config
                    .clone();
                for field in drift(&current, &wanted) {
                    tracing::warn!(stream = %name, %field, "stream differs from what Sluice would create; left as it is");
                }
                if current.num_replicas < wanted.num_replicas {
                    tracing::info!(stream = %name, from = current.num_replicas, to = wanted.num_replicas, "raising stream replicas");
                    current.num_replicas = wanted.num_replicas;
                    Box::pin(js.update_stream(current))
                        .await
                        .map_err(|e| setup(e.into()))?;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                Box::pin(js.create_stream(wanted))
                    .await
                    .map_err(|e| setup(e.into()))?;
            }
            Err(e) => return Err(setup(e.into())),
        }
    }
    Ok(())
}

/// The settings of `current` that differ from `wanted`, by name (replicas above the
/// wanted count are not drift: an operator may run more).
fn drift(current: &stream::Config, wanted: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |field: &str, same: bool, have: String, want: String| {
        if !same {
            out.push(format!("{field}: {have} (Sluice would use {want})"));
        }
    };
    check(
        "subjects",
        current.subjects == wanted.subjects,
        format!("{:?}", current.subjects),
        format!("{:?}", wanted.subjects),
    );
    check(
        "retention",
        current.retention == wanted.retention,
        format!("{:?}", current.retention),
        format!("{:?}", wanted.retention),
    );
    check(
        "storage",
        current.storage == wanted.storage,
        format!("{:?}", current.storage),
        format!("{:?}", wanted.storage),
    );
    check(
        "max_age",
        current.max_age == wanted.max_age,
        format!("{:?}", current.max_age),
        format!("{:?}", wanted.max_age),
    );
    check(
        "num_replicas",
        current.num_replicas >= wanted.num_replicas,
        current.num_replicas.to_string(),
        wanted.num_replicas.to_string(),
    );
    if wanted.duplicate_window > Duration::ZERO {
        check(
            "duplicate_window",
            current.duplicate_window == wanted.duplicate_window,
            format!("{:?}", current.duplicate_window),
            format!("{:?}", wanted.duplicate_window),
        );
    }
    out
}

/// Creates or updates the durable pull consumer of every tier; returns them highest
/// priority first.
pub async fn ensure_tier_consumers(
    js: &jetstream::Context,
    subjects: &Subjects,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> Result<Vec<(Tier, consumer::PullConsumer)>, NatsError> {
    let stream_name = subjects.jobs_stream();
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| setup_error(format!("stream {stream_name}"), e))?;
    let mut out = Vec::with_capacity(Tier::ALL.len());
    for tier in Tier::ALL {
        let name = subjects.tier_consumer(tier);
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subjects.jobs(tier),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: -1,
                max_ack_pending,
                description: Some(format!("Sluice workers, {tier} tier")),
                ..Default::default()
            })
            .await
            .map_err(|e| setup_error(format!("consumer {name}"), e))?;
        out.push((tier, consumer));
    }
    Ok(out)
}

/// How long a publish keeps trying while a stream has no leader (a NATS node lost, an
/// election, a reconnect) before the caller falls back (the api: to its outbox).
pub const PUBLISH_PATIENCE: Duration = Duration::from_secs(5);

/// Publishes to JetStream and waits for the stream's ack, retrying for up to `patience`
/// while the stream cannot take it. Safe to repeat: `headers` must carry a `Nats-Msg-Id`,
/// and the stream drops duplicates within its window. Errors that a retry cannot fix
/// (payload too large, a failed expectation) return at once.
pub async fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
    patience: Duration,
) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
    use jetstream::context::PublishErrorKind as Kind;
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = async {
            js.publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await?
                .await
        };
        match attempt.await {
            Ok(ack) => return Ok(ack),
            Err(e)
                if matches!(
                    e.kind(),
                    Kind::StreamNotFound
                        | Kind::TimedOut
                        | Kind::BrokenPipe
                        | Kind::MaxAckPending
                        | Kind::Other
                ) && tokio::time::Instant::now() + pause < deadline =>
            {
                tracing::debug!(%subject, error = %e, "publish not acked yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}
