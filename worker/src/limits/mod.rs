//! Flow control: admitting a call against every limit that applies, in one Redis round
//! trip, and settling it to real usage afterwards.
//!
//! A reservation is one request + estimated tokens + a concurrency lease + estimated
//! spend, taken atomically by `admit.lua` against the first candidate deployment that
//! fits. rpm and tpm are sliding-window logs (exact: no overshoot across any number of
//! workers; tpm can overshoot only by the estimate error of calls in flight). Leases
//! expire, so a crashed worker leaks nothing. All keys share one hash tag
//! (`{<prefix>}`), so an admission is valid on Redis Cluster.
//!
//! Budgets are a cache of the Postgres ledger: when Redis does not have a budget's
//! counters (a `seeded` mark without expiry is gone, e.g. Redis restarted empty), they
//! are rebuilt from the ledger's spend in the period and the calls in flight before
//! anything is admitted against them (`seed.lua`).
//!
//! This module does not decide which deployments are candidates (the router does) nor
//! what to do when nothing fits (the job is deferred by the pipeline).

mod held;

use std::time::Duration;

use std::sync::{Arc, Mutex};

pub use held::Held;

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, Script};
use deadpool_redis::Pool;
use rust_decimal::prelude::ToPrimitive;
use sluice_core::budgets::{provider_budgets, Budget, BudgetKeys, CHARGE_LUA};
use sluice_core::config::{Deployment, ProviderBudget};
use sluice_core::Store;
use uuid::Uuid;

const MINUTE: Duration = Duration::from_secs(60);

/// Every limit that applies to calling `d`: its rpm, tpm and parallel cap, and its
/// provider's budget.
pub fn deployment_scopes(d: &Deployment, budgets: &[ProviderBudget]) -> Vec<Scope> {
    let subject = format!("dep:{}", d.id);
    let mut scopes = Vec::new();
    if let Some(rpm) = d.rpm {
        scopes.push(Scope::new(Kind::Rpm, subject.clone(), rpm as f64, MINUTE));
    }
    if let Some(tpm) = d.tpm {
        scopes.push(Scope::new(Kind::Tpm, subject.clone(), tpm as f64, MINUTE));
    }
    if let Some(par) = d.max_parallel_requests {
        scopes.push(Scope::new(Kind::Parallel, subject, par as f64, MINUTE));
    }
    scopes.extend(provider_budgets(&d.provider, budgets).map(Scope::budget));
    scopes
}

/// Tokens and USD reserved for a call with `prompt_tokens` in and up to `output_cap`
/// out at `price` (no price: no spend reserved).
pub fn estimate(
    price: Option<&crate::pricing::Price>,
    prompt_tokens: u64,
    output_cap: u64,
) -> Estimate {
    let usage = sluice_schemas::openai::Usage::new(prompt_tokens, output_cap);
    Estimate {
        tokens: prompt_tokens + output_cap,
        cost: price.and_then(|p| p.cost(&usage).to_f64()).unwrap_or(0.0),
    }
}

/// What a scope limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Requests per window.
    Rpm,
    /// Tokens per window.
    Tpm,
    /// Calls in flight.
    Parallel,
    /// USD per period.
    Budget,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Rpm => "rpm",
            Kind::Tpm => "tpm",
            Kind::Parallel => "par",
            Kind::Budget => "bud",
        }
    }
}

/// One limit on one subject, e.g. the rpm of deployment `gpt4o-east`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub kind: Kind,
    /// What is limited, e.g. `dep:gpt4o-east`, `key:k_12`, `provider:openai`.
    pub subject: String,
    pub limit: f64,
    /// Window for rpm/tpm, reset period for budgets.
    pub period: Duration,
}

impl Scope {
    pub fn new(kind: Kind, subject: impl Into<String>, limit: f64, period: Duration) -> Self {
        Scope {
            kind,
            subject: subject.into(),
            limit,
            period,
        }
    }

    /// The scope of a USD budget (`sluice_core::budgets`).
    pub fn budget(b: Budget) -> Self {
        Scope::new(Kind::Budget, b.subject, b.limit, b.period)
    }

    fn label(&self) -> String {
        format!("{} {}", self.subject, self.kind.as_str())
    }
}

/// The estimate a call is admitted with.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Estimate {
    pub tokens: u64,
    pub cost: f64,
}

/// A deployment that could serve the call, with every limit that applies to it.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    /// Deployment id (for cooldown and health keys).
    pub deployment: String,
    /// LiteLLM `order`: lower is tried first.
    pub order: u32,
    /// Skip the candidate while it cools down.
    pub cooldowns: bool,
    pub scopes: Vec<Scope>,
    pub estimate: Estimate,
}

/// How admission orders candidates of the same `order` (LiteLLM `routing_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// As given (the router shuffled them by weight, or sorted them by price).
    #[default]
    AsGiven,
    /// Fewest calls in flight, across all workers.
    LeastBusy,
    /// Lowest moving average of latency, across all workers.
    Latency,
    /// Lowest tokens used in the current minute.
    Usage,
}

impl Strategy {
    fn as_str(self) -> &'static str {
        match self {
            Strategy::AsGiven => "shuffle",
            Strategy::LeastBusy => "least-busy",
            Strategy::Latency => "latency",
            Strategy::Usage => "usage",
        }
    }
}

impl Health {
    /// A call that succeeded, with nothing to record but its reservation.
    pub fn success() -> Self {
        Health {
            ok: true,
            ..Default::default()
        }
    }
}

/// What a call's outcome says about its deployment's health.
#[derive(Debug, Clone, Copy, Default)]
pub struct Health {
    /// The call was made and answered (true) or failed (false).
    pub ok: bool,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    /// Cool down now for this long (429 / overloaded), zero for none.
    pub cool_now: Duration,
    /// Counts toward `allowed_fails`.
    pub counts_as_failure: bool,
    pub allowed_fails: u32,
    /// Cooldown once more than `allowed_fails` failures happened within a minute.
    pub cooldown: Duration,
}

/// What admission decided.
#[derive(Debug)]
pub enum Admission {
    /// Candidate `index` may be called; settle the reservation afterwards.
    Admitted {
        index: usize,
        reservation: Reservation,
    },
    /// Nothing fits now; the earliest a limit (or cooldown) frees up is `after`.
    /// `cooling` says the earliest one is a deployment's cooldown.
    Wait {
        after: Duration,
        limit: String,
        cooling: bool,
    },
    /// The request can never fit (e.g. estimated tokens above a tpm limit).
    TooLarge { limit: String },
    /// Redis could not be asked (and fail-open is off).
    Unavailable(String),
    /// The job was cancelled: do not call.
    Cancelled,
}

/// A held reservation; pass it to [`Limiter::settle`].
#[derive(Debug, Clone)]
pub struct Reservation {
    id: String,
    deployment: String,
    scopes: Vec<Scope>,
    /// When the limits counted the call (Redis time), if Redis was asked.
    pub admitted_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Actual {
    pub tokens: u64,
    pub cost: f64,
}

#[derive(Clone)]
pub struct Limiter {
    pool: Pool,
    /// One multiplexed connection shared by every admission of this worker, taken from
    /// the pool once and replaced after an error. Checking a connection out of the pool
    /// per call would cost a PING round trip each time.
    shared: Arc<Mutex<Option<MultiplexedConnection>>>,
    tag: String,
    fail_open: bool,
    strategy: Strategy,
    /// Shared, so a clone (one per held reservation) copies no script text.
    scripts: Arc<Scripts>,
    /// Where budgets are rebuilt from, and how long a call in flight may hold its
    /// reservation. Without it a budget Redis lost starts again from zero.
    ledger: Option<(Store, Duration)>,
}

/// The Lua scripts, loaded once per limiter.
struct Scripts {
    admit: Script,
    settle: Script,
    seed: Script,
}

/// One admission round's answer before budgets are known to be in Redis.
enum Round {
    Done(Admission),
    /// The budget with this label must be rebuilt first.
    Unseeded(String),
}

impl Limiter {
    pub fn new(pool: Pool, prefix: &str, fail_open: bool) -> Limiter {
        Limiter {
            pool,
            tag: sluice_core::budgets::tag(prefix),
            shared: Arc::default(),
            fail_open,
            strategy: Strategy::AsGiven,
            scripts: Arc::new(Scripts {
                admit: Script::new(include_str!("admit.lua")),
                // The charge step is shared with native batch results.
                settle: Script::new(&format!("{CHARGE_LUA}\n{}", include_str!("settle.lua"))),
                seed: Script::new(include_str!("seed.lua")),
            }),
            ledger: None,
        }
    }

    /// Rebuilds budgets Redis lost from `store`'s ledger; calls in flight hold their
    /// reservations for at most `lease`.
    pub fn with_ledger(mut self, store: Store, lease: Duration) -> Limiter {
        self.ledger = Some((store, lease));
        self
    }

    /// Rebuilds the counters of the budget `scope` from the ledger (no-op if another
    /// worker did it first).
    async fn seed_budget(&self, scope: &Scope) -> Result<(), String> {
        let spend = match &self.ledger {
            Some((store, lease)) => store
                .budget_spend(&scope.subject, scope.period, *lease)
                .await
                .map_err(|e| format!("cannot read the ledger: {e}"))?,
            None => Default::default(),
        };
        let lease = self.ledger.as_ref().map(|(_, l)| *l).unwrap_or_default();
        let now = chrono::Utc::now();
        // The period runs from its first spend, as Redis counts it.
        let left = spend
            .first
            .map(|first| {
                let end = first + chrono::Duration::from_std(scope.period).unwrap_or_default();
                (end - now).num_milliseconds().max(1)
            })
            .unwrap_or(0);
        let mut keys = Vec::new();
        self.keys(scope, &mut keys);
        let mut inv = self.scripts.seed.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg(spend.spent).arg(left).arg(spend.in_flight.len());
        for (job, attempt, cost, started) in &spend.in_flight {
            let till = started.timestamp_millis() + lease.as_millis() as i64;
            inv.arg(format!("seed:{job}:{attempt}"))
                .arg(*cost)
                .arg(till);
        }
        self.invoke(&inv).await?;
        tracing::warn!(budget = %scope.label(), spent = spend.spent, in_flight = spend.in_flight.len(), "budget counters rebuilt from the ledger");
        Ok(())
    }

    /// Runs a script on the shared connection (connecting first if needed); an error
    /// drops the connection so the next call reconnects.
    async fn invoke(&self, inv: &redis::ScriptInvocation<'_>) -> Result<redis::Value, String> {
        let cached = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut conn = match cached {
            Some(c) => c,
            None => {
                let c = deadpool_redis::Connection::take(
                    Box::pin(self.pool.get()).await.map_err(|e| e.to_string())?,
                );
                *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                c
            }
        };
        match inv.invoke_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Err(e.to_string())
            }
        }
    }

    pub fn with_strategy(mut self, strategy: Strategy) -> Limiter {
        self.strategy = strategy;
        self
    }

    /// Cooldown, stats, busy-lease and tpm-usage keys of a deployment.
    fn deployment_keys(&self, deployment: &str) -> [String; 4] {
        let tag = self.tag.as_str();
        [
            concat(&[tag, ":dep:", deployment, ":cool"]),
            concat(&[tag, ":dep:", deployment, ":stats"]),
            concat(&[tag, ":dep:", deployment, ":busy"]),
            concat(&[tag, ":tpm:dep:", deployment, ":amt"]),
        ]
    }

    fn keys(&self, scope: &Scope, out: &mut Vec<String>) {
        let base = concat(&[&self.tag, ":", scope.kind.as_str(), ":", &scope.subject]);
        match scope.kind {
            Kind::Rpm | Kind::Parallel => out.push(base),
            Kind::Tpm => {
                out.push(concat(&[&base, ":log"]));
                out.push(concat(&[&base, ":amt"]));
            }
            Kind::Budget => {
                let k = BudgetKeys::new(&self.tag, &scope.subject);
                out.extend([k.lease, k.amounts, k.spent, k.seeded]);
            }
        }
    }

    /// Picks the first candidate (by order, then strategy) that is not cooling down and
    /// fits its limits, and reserves the call. A first candidate without limits or
    /// cooldowns is admitted without asking Redis.
    pub async fn admit(
        &self,
        job: Option<Uuid>,
        candidates: &[Candidate],
        lease: Duration,
    ) -> Admission {
        // Each budget is rebuilt at most once per admission; there are few per call.
        for _ in 0..8 {
            let label = match self.admit_round(job, candidates, lease).await {
                Round::Done(admission) => return admission,
                Round::Unseeded(label) => label,
            };
            let scope = candidates
                .iter()
                .flat_map(|c| c.scopes.iter())
                .find(|s| s.label() == label);
            let Some(scope) = scope else {
                return Admission::Unavailable(format!(
                    "admission named an unknown budget {label}"
                ));
            };
            if let Err(e) = self.seed_budget(scope).await {
                return Admission::Unavailable(format!("budget {label} not rebuilt: {e}"));
            }
        }
        Admission::Unavailable("budgets not rebuilt after several rounds".into())
    }

    async fn admit_round(
        &self,
        job: Option<Uuid>,
        candidates: &[Candidate],
        lease: Duration,
    ) -> Round {
        let id = Uuid::now_v7().to_string();
        let unchecked = |index: usize, deployment: &str| Admission::Admitted {
            index,
            reservation: Reservation {
                id: id.clone(),
                deployment: deployment.to_string(),
                scopes: Vec::new(),
                admitted_at_ms: None,
            },
        };
        match candidates.first() {
            None => {
                return Round::Done(Admission::TooLarge {
                    limit: "no candidate deployment".into(),
                })
            }
            Some(c)
                if c.scopes.is_empty() && !c.cooldowns && self.strategy == Strategy::AsGiven =>
            {
                return Round::Done(unchecked(0, &c.deployment))
            }
            Some(_) => {}
        }
        let mut inv = self.scripts.admit.prepare_invoke();
        inv.arg(&id)
            .arg(lease.as_millis() as u64)
            .arg(candidates.len())
            .arg(self.strategy.as_str());
        // KEYS[1]: the job's cancellation mark.
        inv.key(match job {
            Some(id) => format!("{}:cancelled:{id}", self.tag),
            None => format!("{}:cancelled:none", self.tag),
        });
        let mut keys = Vec::new();
        for c in candidates {
            inv.arg(c.order)
                .arg(u8::from(c.cooldowns))
                .arg(c.scopes.len());
            for k in self.deployment_keys(&c.deployment) {
                inv.key(k);
            }
            for s in &c.scopes {
                let amount = match s.kind {
                    Kind::Rpm | Kind::Parallel => 1.0,
                    Kind::Tpm => c.estimate.tokens as f64,
                    Kind::Budget => c.estimate.cost,
                };
                inv.arg(s.kind.as_str())
                    .arg(s.limit)
                    .arg(amount)
                    .arg(s.period.as_millis() as u64)
                    .arg(s.label());
                keys.clear();
                self.keys(s, &mut keys);
                for k in &keys {
                    inv.key(k);
                }
            }
        }
        let reply: Result<(i64, i64, String, i64), String> = async {
            let v = self.invoke(&inv).await?;
            parse_reply(v)
        }
        .await;
        Round::Done(match reply {
            Ok((-3, _, label, _)) => return Round::Unseeded(label),
            Ok((1, c, _, now)) => {
                let index = (c.max(1) - 1) as usize;
                let Some(cand) = candidates.get(index) else {
                    return Round::Done(Admission::Unavailable(format!(
                        "admission chose candidate {c} of {}",
                        candidates.len()
                    )));
                };
                Admission::Admitted {
                    index,
                    reservation: Reservation {
                        id,
                        deployment: cand.deployment.clone(),
                        scopes: cand.scopes.clone(),
                        admitted_at_ms: Some(now),
                    },
                }
            }
            Ok((-2, ..)) => Admission::Cancelled,
            Ok((0, wait_ms, limit, cooling)) => Admission::Wait {
                after: Duration::from_millis(wait_ms.max(1) as u64),
                limit,
                cooling: cooling == 1,
            },
            Ok((_, _, limit, _)) => Admission::TooLarge { limit },
            Err(e) if self.fail_open => {
                tracing::error!(error = %e, "Redis unavailable: admitting WITHOUT a limit check (fail_open)");
                unchecked(0, &candidates[0].deployment)
            }
            Err(e) => Admission::Unavailable(e),
        })
    }

    /// Corrects the reservation to real usage, releases its leases and records the
    /// deployment's health (latency average, failures, cooldown) in one round trip —
    /// none when there is nothing to record. Best effort: a settlement lost to a Redis
    /// outage only leaves the estimate in place until the window (or lease) ends.
    pub async fn settle(&self, reservation: Reservation, actual: Actual, health: Health) {
        let track_health =
            !health.ok || matches!(self.strategy, Strategy::Latency | Strategy::LeastBusy);
        self.settle_as(reservation, actual, health, track_health)
            .await
    }

    /// Settles a reservation its job let go of without an outcome (cancelled, handed
    /// back, panicked): `actual` is charged, leases are released, health is untouched.
    pub async fn release(&self, reservation: Reservation, actual: Actual) {
        self.settle_as(reservation, actual, Health::success(), false)
            .await
    }

    async fn settle_as(
        &self,
        reservation: Reservation,
        actual: Actual,
        health: Health,
        track_health: bool,
    ) {
        if reservation.scopes.is_empty() && !track_health {
            return;
        }
        let mut inv = self.scripts.settle.prepare_invoke();
        let outcome = match (track_health, health.ok) {
            (false, _) => "none",
            (true, true) => "ok",
            (true, false) => "fail",
        };
        inv.arg(&reservation.id)
            .arg(reservation.scopes.len())
            .arg(outcome)
            .arg(health.latency.as_millis() as u64)
            .arg(health.ttft.map(|t| t.as_millis() as u64).unwrap_or(0))
            .arg(health.cool_now.as_millis() as u64)
            .arg(u8::from(health.counts_as_failure))
            .arg(health.allowed_fails)
            .arg(health.cooldown.as_millis() as u64);
        for k in self
            .deployment_keys(&reservation.deployment)
            .into_iter()
            .take(3)
        {
            inv.key(k);
        }
        inv.key(format!("{}:dep:{}:fails", self.tag, reservation.deployment));
        let mut keys = Vec::new();
        for s in &reservation.scopes {
            let amount = match s.kind {
                Kind::Rpm | Kind::Parallel => 0.0,
                Kind::Tpm => actual.tokens as f64,
                Kind::Budget => actual.cost,
            };
            inv.arg(s.kind.as_str())
                .arg(amount)
                .arg(s.period.as_millis() as u64);
            keys.clear();
            self.keys(s, &mut keys);
            for k in &keys {
                inv.key(k);
            }
        }
        let result: Result<(), String> = async {
            self.invoke(&inv).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "settlement lost; the reservation stands until it expires");
        }
    }
}

fn parse_reply(v: redis::Value) -> Result<(i64, i64, String, i64), String> {
    let redis::Value::Array(items) = v else {
        return Err(format!("unexpected admission reply {v:?}"));
    };
    let int = |v: Option<&redis::Value>| match v {
        Some(redis::Value::Int(i)) => *i,
        _ => 0,
    };
    let label = match items.get(2) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    };
    Ok((
        int(items.first()),
        int(items.get(1)),
        label,
        int(items.get(3)),
    ))
}

/// The Redis key made of `parts`, in one allocation: admission builds about twenty keys a
/// job, and `format!` costs several times as much for each.
fn concat(parts: &[&str]) -> String {
    let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        key.push_str(p);
    }
    key
}
