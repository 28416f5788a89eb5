//! The Sluice worker: consume → schedule → route → call provider → publish events →
//! record result and cost → ack.
//!
//! [`run`] owns every task it starts; cancelling its token drains: the fetch loops stop
//! pulling, in-flight jobs get `drain` time to finish, the rest are handed back (NAK),
//! batched writes are flushed, and `run` returns. Throughout, the admin server on
//! `metrics_addr` answers `/metrics`, `/healthz` and `/readyz` (not ready while
//! draining), and a heartbeat tells the API the worker is there.
#![forbid(unsafe_code)]

pub mod admin;
mod bodies;
pub mod cache;
pub mod callbacks;
pub mod context;
mod deliveries;
pub mod destinations;
pub mod events;
pub mod heartbeat;
mod job;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod native;
mod panics;
pub mod pricing;
pub mod providers;
pub mod reconcile;
pub mod retry;
pub mod router;
pub mod scheduler;
pub mod tally;
pub mod tokens;
mod trace;
pub mod webhook;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use sluice_core::config::RoutingStrategy;
use sluice_core::group_commit::Batcher;
use sluice_core::store::{LedgerEntry, Written};
use sluice_core::{Config, Store};
use sluice_schemas::{Subjects, Tier};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::providers::Providers;
use crate::router::Router;
use crate::scheduler::{Slots, DEFAULT_WEIGHTS};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Nats(#[from] sluice_core::nats::NatsError),
    #[error(transparent)]
    Store(#[from] sluice_core::store::StoreError),
    #[error(transparent)]
    Redis(#[from] sluice_core::redis::RedisError),
    #[error(transparent)]
    Pricing(#[from] pricing::PricingError),
    #[error("cannot listen on {addr} (SLUICE_METRICS_ADDR): {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// The most messages one pull asks for.
const MAX_PULL: usize = 64;
/// How long an idle tier's pull waits for a message before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The most a busy tier's pull waits (it returns at once when the tier is empty).
const FETCH_EXPIRES: Duration = Duration::from_secs(1);
/// Cluster-wide cap on unacked messages per tier consumer. Each worker is bounded by its
/// own capacity; this only has to stay out of the way.
const MAX_ACK_PENDING: i64 = 100_000;

/// What every job task of one worker shares.
pub(crate) struct Ctx {
    pub config: Arc<Config>,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub store: Store,
    pub ledger: Batcher<LedgerEntry, Written>,
    pub providers: Providers,
    pub router: Router,
    pub limiter: limits::Limiter,
    pub prices: pricing::Prices,
    /// Context windows, for the pre-call checks.
    pub contexts: context::Contexts,
    pub key_limits: keys::KeyLimits,
    pub worker_id: String,
    /// Rung when a job with deliveries (webhook, reply) ended here.
    pub deliveries: Arc<tokio::sync::Notify>,
    /// Settlements of reservations that jobs let go of (see `limits::Held`).
    pub settlements: TaskTracker,
    /// Fired when the drain deadline passes: running jobs hand their message back.
    pub hard_stop: CancellationToken,
    /// Jobs running here, each with the token that cancels it.
    inflight: Mutex<HashMap<Uuid, CancellationToken>>,
    /// Jobs finished and deferred here, for the heartbeat.
    pub tally: Arc<tally::Tally>,
    /// The response cache, when `litellm_settings.cache` is on.
    pub cache: Option<cache::Cache>,
    /// The prompts of running jobs, for the usage callbacks (when Langfuse is on).
    pub callback_inputs: Option<Arc<callbacks::Inputs>>,
}

impl Ctx {
    /// Claims `id` for this worker; `None` if it already runs here. The token is cancelled
    /// when the api cancels the job or the drain deadline passes.
    fn claim(&self, id: Uuid) -> Option<CancellationToken> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&id) {
            return None;
        }
        // A child of `hard_stop`: the job task waits on this one token for both (see
        // `job::handle_claimed`), and each wait polls a token's lock on every wake-up.
        let token = self.hard_stop.child_token();
        map.insert(id, token.clone());
        Some(token)
    }

    fn release(&self, id: Uuid) {
        if let Some(inputs) = &self.callback_inputs {
            inputs.forget(id);
        }
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Stops the job `id` if it runs here.
    fn cancel(&self, id: Uuid) {
        if let Some(token) = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            token.cancel();
        }
    }
}

/// Listens for cancel notices and stops those jobs if they run here. Holds the context
/// weakly, so it never keeps the ledger open during shutdown.
async fn cancellations(ctx: std::sync::Weak<Ctx>, stop: CancellationToken) {
    let Some(strong) = ctx.upgrade() else { return };
    let subscribed = strong.nats.subscribe(strong.subjects.cancel_all()).await;
    drop(strong);
    let mut sub = match subscribed {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for cancellations");
            return;
        }
    };
    loop {
        tokio::select! {
            m = sub.next() => match m {
                Some(msg) => {
                    let id = msg.subject.rsplit('.').next().and_then(|s| Uuid::parse_str(s).ok());
                    match (id, ctx.upgrade()) {
                        (Some(id), Some(ctx)) => ctx.cancel(id),
                        (_, None) => return,
                        _ => {}
                    }
                }
                None => return,
            },
            _ = stop.cancelled() => return,
        }
    }
}

/// Runs a worker until `shutdown` is cancelled, then drains: its parts start (connections,
/// the shared job context, the side tasks), the fetch loops serve the tiers, and on
/// shutdown the worker drains.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let config = Arc::new(config);
    if !config.ignored_keys.is_empty() {
        tracing::warn!(keys = ?config.ignored_keys, "config keys Sluice does not act on");
    }
    let (admin_state, consumers) = Box::pin(connect(&config)).await?;
    metrics::describe();
    metrics::capacity(config.worker.capacity);
    let admin_listener = tokio::net::TcpListener::bind(&config.metrics_addr)
        .await
        .map_err(|source| WorkerError::Bind {
            addr: config.metrics_addr.clone(),
            source,
        })?;
    warm_up(&config).await;
    let (callback_sender, callback_queue) = match callbacks::channel(&config.callbacks) {
        Some((sender, rx, langfuse)) => (Some(sender), Some((rx, langfuse))),
        None => (None, None),
    };
    let callback_inputs = callback_sender.as_ref().map(callbacks::Sender::inputs);
    let background = TaskTracker::new();
    let ledger = Batcher::spawn(
        "ledger",
        512,
        &background,
        callbacks::Fired::new(
            metrics::Observed::new(ledger::LedgerFlush(admin_state.store.clone()), &config),
            callback_sender,
        ),
    );
    let ctx = Arc::new(Ctx {
        callback_inputs,
        ..context(&config, &admin_state, ledger)?
    });
    let slots = Slots::new(config.worker.capacity, DEFAULT_WEIGHTS);
    let ops = Ops::start(&ctx, &slots, &admin_state, admin_listener, callback_queue);
    tracing::info!(worker = %ctx.worker_id, capacity = config.worker.capacity, deployments = config.deployments.len(), "worker started");

    let (fetchers, jobs) = serve(&ctx, &slots, consumers, &shutdown);
    shutdown.cancelled().await;
    admin_state.draining.store(true, Ordering::Relaxed);
    drain(ctx, &slots, fetchers, jobs).await;
    background.close();
    background.wait().await;
    ops.stop().await;
    let _ = admin_state.nats.flush().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Connects to NATS (making sure of the streams and the tier consumers), Postgres (checked
/// migrated) and Redis: the admin server's state, which holds them, and the consumers.
async fn connect(
    config: &Arc<Config>,
) -> Result<(Arc<admin::AdminState>, Vec<(Tier, PullConsumer)>), WorkerError> {
    let nats = sluice_core::nats::connect(&config.nats_url, &config.tls, "sluice-worker").await?;
    let js = jetstream::new(nats.clone());
    let subjects = Subjects::new(&config.subject_prefix);
    sluice_core::nats::ensure_streams(&js, &subjects, config.events_max_age, config.nats_replicas)
        .await?;
    let consumers = sluice_core::nats::ensure_tier_consumers(
        &js,
        &subjects,
        config.worker.ack_wait,
        MAX_ACK_PENDING,
    )
    .await?;
    let store = Store::connect_bounded(
        &config.database_url,
        16,
        &config.tls,
        Some(config.safety.statement_timeout),
    )
    .await?;
    store.check_migrated().await?;
    let redis = sluice_core::redis::pool_with(&config.redis_url, 32, &config.tls)?;
    let admin_state = Arc::new(admin::AdminState {
        nats,
        js,
        subjects,
        redis,
        store,
        draining: Default::default(),
        config: Arc::clone(config),
    });
    Ok((admin_state, consumers))
}

/// What is worth doing before the first job: the tokenizer tables of the configured
/// deployments loaded, the callbacks described, a named `otel` callback without an
/// endpoint pointed out.
async fn warm_up(config: &Config) {
    let tokenizers: Vec<_> = config
        .deployments
        .iter()
        .map(tokens::Tokenizer::for_deployment)
        .collect();
    if let Err(e) = tokio::task::spawn_blocking(move || tokens::warm(tokenizers)).await {
        tracing::warn!(error = %e, "tokenizer warm-up failed; estimates fall back lazily");
    }
    callbacks::describe();
    if config.callbacks.otel && !sluice_core::telemetry::enabled() {
        tracing::warn!("the otel callback is named but no OTEL_EXPORTER_OTLP_ENDPOINT is set: no traces are exported");
    }
}

/// What every job task shares, built from the config and the connections.
fn context(
    config: &Arc<Config>,
    conns: &admin::AdminState,
    ledger: Batcher<LedgerEntry, Written>,
) -> Result<Ctx, WorkerError> {
    let (prices, contexts) = prices(config)?;
    Ok(Ctx {
        cache: response_cache(config, &conns.redis)?,
        prices,
        contexts,
        router: Router::new(config),
        limiter: limiter(config, conns),
        key_limits: keys::KeyLimits::new(conns.store.clone()),
        config: Arc::clone(config),
        nats: conns.nats.clone(),
        js: conns.js.clone(),
        subjects: conns.subjects.clone(),
        store: conns.store.clone(),
        ledger,
        providers: Providers::new(),
        worker_id: worker_id(),
        hard_stop: CancellationToken::new(),
        deliveries: Arc::new(tokio::sync::Notify::new()),
        settlements: TaskTracker::new(),
        inflight: Mutex::new(HashMap::new()),
        tally: Arc::new(tally::Tally::default()),
        callback_inputs: None,
    })
}

/// The limiter, with the routing strategy's way of ordering candidates.
fn limiter(config: &Config, conns: &admin::AdminState) -> limits::Limiter {
    let strategy = match config.router.strategy {
        RoutingStrategy::LeastBusy => limits::Strategy::LeastBusy,
        RoutingStrategy::LatencyBased => limits::Strategy::Latency,
        RoutingStrategy::UsageBased => limits::Strategy::Usage,
        // Shuffled by weight, or sorted by price, by the router.
        RoutingStrategy::SimpleShuffle | RoutingStrategy::CostBased => limits::Strategy::AsGiven,
    };
    limits::Limiter::new(
        conns.redis.clone(),
        &config.subject_prefix,
        config.limits.fail_open,
    )
    .with_strategy(strategy)
    .with_ledger(conns.store.clone(), longest_lease(config))
}

/// Every deployment's prices and context window (from the pricing file, if any); a
/// deployment without a price is pointed out.
fn prices(config: &Config) -> Result<(pricing::Prices, context::Contexts), WorkerError> {
    let price_file = match &config.pricing_file {
        Some(path) => pricing::load_file(path)?,
        None => Default::default(),
    };
    let prices = pricing::Prices::resolve(&config.deployments, &price_file);
    let contexts = context::Contexts::resolve(
        &config.deployments,
        match &config.pricing_file {
            Some(path) => context::load_file(path)?,
            None => Default::default(),
        },
    );
    for d in &config.deployments {
        if prices.get(&d.id).is_none() && !d.is_wildcard() {
            tracing::warn!(deployment = %d.id, model = %d.model, "no price known: its cost is recorded as NULL (pricing_missing)");
        }
    }
    Ok((prices, contexts))
}

/// The response cache, when `litellm_settings.cache` is on (on its own Redis, if named).
fn response_cache(
    config: &Config,
    redis: &sluice_core::redis::Pool,
) -> Result<Option<cache::Cache>, WorkerError> {
    let Some(settings) = &config.cache else {
        return Ok(None);
    };
    let pool = match &settings.redis_url {
        Some(url) => sluice_core::redis::pool_with(url, 16, &config.tls)?,
        None => redis.clone(),
    };
    tracing::info!(
        ttl_secs = settings.ttl.as_secs(),
        chat = settings.chat,
        embeddings = settings.embeddings,
        "response cache on"
    );
    Ok(Some(cache::Cache::new(
        pool,
        settings.clone(),
        &config.subject_prefix,
    )))
}

/// The worker's tasks beside the jobs: the admin server, the heartbeat, cancellations,
/// deliveries, the reconciler and the callbacks. They outlive the drain.
struct Ops {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Ops {
    fn start(
        ctx: &Arc<Ctx>,
        slots: &Arc<Slots>,
        admin_state: &Arc<admin::AdminState>,
        admin_listener: tokio::net::TcpListener,
        callback_queue: Option<(
            tokio::sync::mpsc::Receiver<serde_json::Value>,
            sluice_core::config::callbacks::Langfuse,
        )>,
    ) -> Ops {
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        if let Ok(addr) = admin_listener.local_addr() {
            tracing::info!(%addr, "metrics and health listening");
        }
        tasks.spawn(admin::serve(
            admin_listener,
            Arc::clone(admin_state),
            stop.clone(),
        ));
        tasks.spawn(heartbeat::run(
            ctx.worker_id.clone(),
            Arc::clone(slots),
            Arc::clone(admin_state),
            Arc::clone(&ctx.tally),
            stop.clone(),
        ));
        tasks.spawn(cancellations(Arc::downgrade(ctx), stop.clone()));
        tasks.spawn(deliveries::run(
            Arc::downgrade(ctx),
            Arc::clone(&ctx.deliveries),
            stop.clone(),
        ));
        let config = &ctx.config;
        let reconciler = reconcile::Reconciler {
            js: ctx.js.clone(),
            store: ctx.store.clone(),
            subjects: ctx.subjects.clone(),
            prefix: config.subject_prefix.clone(),
            safety: config.safety.clone(),
            lost_grace: config.worker.lost_message_grace,
            deliveries: Arc::clone(&ctx.deliveries),
        };
        tasks.spawn(reconcile::run(reconciler, stop.clone()));
        if let Some((rx, langfuse)) = callback_queue {
            tasks.spawn(callbacks::run(rx, langfuse, stop.clone()));
        }
        tasks.close();
        Ops { tasks, stop }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// Starts a fetch loop per tier; returns the loops, and the jobs they start.
fn serve(
    ctx: &Arc<Ctx>,
    slots: &Arc<Slots>,
    consumers: Vec<(Tier, PullConsumer)>,
    shutdown: &CancellationToken,
) -> (TaskTracker, TaskTracker) {
    let fetchers = TaskTracker::new();
    let jobs = TaskTracker::new();
    for (tier, consumer) in consumers {
        fetchers.spawn(fetch_loop(
            Arc::clone(ctx),
            Arc::clone(slots),
            tier,
            consumer,
            shutdown.clone(),
            jobs.clone(),
        ));
    }
    fetchers.close();
    (fetchers, jobs)
}

/// The drain: the fetch loops stop pulling, running jobs get `drain` time to finish (then
/// hand their message back), reservations let go of are settled, and the context (with
/// the ledger's sender) is dropped so the batched writes flush.
async fn drain(ctx: Arc<Ctx>, slots: &Slots, fetchers: TaskTracker, jobs: TaskTracker) {
    tracing::info!(in_flight = slots.in_use(), "draining");
    fetchers.wait().await;
    jobs.close();
    if tokio::time::timeout(ctx.config.worker.drain, jobs.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = slots.in_use(),
            "drain deadline passed; handing jobs back"
        );
        ctx.hard_stop.cancel();
        jobs.wait().await;
    }
    ctx.settlements.close();
    ctx.settlements.wait().await;
    drop(ctx);
}

/// Pulls one tier's messages. An idle tier waits for work holding no slot: a long pull
/// for a single message. Once it has one, it competes for a slot (by weight, while
/// keeping the message alive with in-progress acks) and, while the tier keeps yielding
/// messages, pulls only as many as it holds slots for. So a worker never holds more than
/// one message per tier beyond its capacity, and idle tiers never hold capacity.
async fn fetch_loop(
    ctx: Arc<Ctx>,
    slots: Arc<Slots>,
    tier: Tier,
    consumer: PullConsumer,
    shutdown: CancellationToken,
    jobs: TaskTracker,
) {
    let keepalive = ctx.config.worker.ack_wait / 3;
    loop {
        // Phase 1: wait for work, holding no capacity.
        let first = tokio::select! {
            m = next_message(&consumer, tier) => m,
            _ = shutdown.cancelled() => return,
        };
        let Some(first) = first else { continue };
        // Phase 2: a slot for it.
        let Some(slot) = slot_for(&slots, tier, &first, keepalive, &shutdown).await else {
            return;
        };
        spawn_job(&ctx, &jobs, first, slot, tier);
        // Phase 3: the tier has work; pull as many messages as we hold slots.
        let mut want = 2usize;
        loop {
            let first_slot = tokio::select! {
                s = slots.acquire(tier) => s,
                _ = shutdown.cancelled() => return,
            };
            let mut held = vec![first_slot];
            while held.len() < want {
                match slots.try_acquire() {
                    Some(s) => held.push(s),
                    None => break,
                }
            }
            let asked = held.len();
            let got = pull(&ctx, &jobs, &consumer, tier, held, &shutdown).await;
            if got == 0 {
                break;
            }
            want = if got == asked {
                (asked * 2).min(MAX_PULL)
            } else {
                got.max(1)
            };
        }
    }
}

/// Waits for a slot of `tier` for `first`, keeping the message alive meanwhile; on
/// shutdown the message goes back (`None`).
async fn slot_for(
    slots: &Arc<Slots>,
    tier: Tier,
    first: &jetstream::Message,
    keepalive: Duration,
    shutdown: &CancellationToken,
) -> Option<scheduler::Slot> {
    let acquire = slots.acquire(tier);
    tokio::pin!(acquire);
    let mut tick = tokio::time::interval(keepalive);
    tick.tick().await;
    loop {
        tokio::select! {
            s = &mut acquire => return Some(s),
            _ = tick.tick() => { let _ = first.ack_with(AckKind::Progress).await; }
            _ = shutdown.cancelled() => {
                let _ = first.ack_with(AckKind::Nak(None)).await;
                return None;
            }
        }
    }
}

/// One pull of as many messages as `held` slots: each message starts a job on a slot
/// (or goes back, on shutdown). Returns how many came.
async fn pull(
    ctx: &Arc<Ctx>,
    jobs: &TaskTracker,
    consumer: &PullConsumer,
    tier: Tier,
    mut held: Vec<scheduler::Slot>,
    shutdown: &CancellationToken,
) -> usize {
    // `expires` bounds the pull: a no-wait pull the server never answers (seen when
    // messages are deleted under a consumer) would otherwise hold these slots.
    let pull = consumer
        .fetch()
        .max_messages(held.len())
        .expires(FETCH_EXPIRES)
        .messages();
    let mut batch = match pull.await {
        Ok(batch) => batch,
        Err(e) => {
            tracing::warn!(%tier, error = %e, "fetch failed");
            return 0;
        }
    };
    let mut got = 0;
    while let Some(next) = batch.next().await {
        let Ok(msg) = next else { break };
        got += 1;
        match held.pop() {
            Some(slot) if !shutdown.is_cancelled() => spawn_job(ctx, jobs, msg, slot, tier),
            _ => {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
            }
        }
    }
    got
}

/// Long-polls one message of `tier`; `None` when the poll expired or failed.
async fn next_message(consumer: &PullConsumer, tier: Tier) -> Option<jetstream::Message> {
    match consumer
        .batch()
        .max_messages(1)
        .expires(PULL_EXPIRES)
        .messages()
        .await
    {
        Ok(mut batch) => match batch.next().await {
            Some(Ok(msg)) => Some(msg),
            Some(Err(e)) => {
                tracing::warn!(%tier, error = %e, "pull error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
            None => None,
        },
        Err(e) => {
            tracing::warn!(%tier, error = %e, "pull failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
    }
}

fn spawn_job(
    ctx: &Arc<Ctx>,
    jobs: &TaskTracker,
    msg: jetstream::Message,
    slot: scheduler::Slot,
    tier: Tier,
) {
    let ctx = Arc::clone(ctx);
    let (published, delivery) = msg
        .info()
        .map(|i| (Some(i.published.unix_timestamp_nanos()), i.delivered))
        .unwrap_or((None, 1));
    let in_flight = metrics::InFlight::start(tier, published, delivery);
    jobs.spawn(async move {
        panics::guarded(ctx, msg, tier).await;
        drop(in_flight);
        drop(slot);
    });
}

/// The longest a call may hold its reservation: the longest deployment timeout, and
/// the margin a lease outlives it by (see `job.rs`).
fn longest_lease(config: &Config) -> Duration {
    config
        .deployments
        .iter()
        .map(|d| d.timeout)
        .max()
        .unwrap_or_default()
        + job::pipeline::LEASE_MARGIN
}

fn worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}
