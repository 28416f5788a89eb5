//! The run of one delivery of a job, read top-down:
//!
//! ```text
//! prepare ─▶ ┌ admit ─▶ start ─▶ call ─▶ record ─▶ decide ┐ ─▶ end
//!            └──────────────── retry / fall back ◀───────┘
//! ```
//!
//! - **admit**: route (the deployments of the group the job may use — wildcard, tags and
//!   context window checked once per group, `eligible.rs` — by order and strategy, minus
//!   those tried) and reserve against every limit in one Redis round trip; the first
//!   candidate that fits becomes an [`Attempt`];
//! - **start**: the attempt goes on record before the call (and claims the job, so one
//!   the api ended meanwhile is not called);
//! - **call**: the provider call, its chunks published as they arrive;
//! - **record**: the attempt row, the reservation settled with real usage and health;
//! - **decide**: stop, retry in the group, or hop to a fallback group ([`Route::next`]).
//!
//! A step that cannot go on now hands the job back ([`Halt`]); the run's result is the
//! job's end ([`Finished`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use sluice_core::config::Deployment;
use sluice_core::store::{AttemptRecord, JobOutcome, LedgerEntry, Written};
use sluice_schemas::embeddings::EmbeddingsRequest;
use sluice_schemas::job::JobError;
use sluice_schemas::openai::ChatRequest;
use sluice_schemas::{ErrorClass, JobEnvelope, JobStatus, RetryEvent, Tier};
use tracing::Instrument as _;
use uuid::Uuid;

use super::attempt::{Attempt, JobFields};
use super::cached::{self, JobCache};
use super::eligible;
use super::embed;
use super::outcome::{outcome_base, Deferred, Finished, Halt};
use super::route::{Next, Pool, Route};
use crate::events::{EventPublisher, EventSink};
use crate::limits::{self, Actual, Admission, Candidate, Scope};
use crate::providers::{CallOutput, ProviderError};
use crate::{tokens, Ctx};

/// A concurrency lease outlives the call's timeout by this much before it expires on its
/// own (which only happens when a worker died holding it).
pub(crate) const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Runs one delivery of a job to its end, or to a halt.
pub(super) async fn run(
    ctx: &Ctx,
    envelope: Box<JobEnvelope>,
    tier: Tier,
    delivery: u32,
    calls: u32,
) -> Result<Finished, Halt> {
    let mut run = Run::new(ctx, envelope, tier, delivery, calls);
    // Boxed: this future is held while the job's call streams, and is as large as its
    // largest await.
    if let Some(error) = Box::pin(run.refused()).await? {
        return Ok(run.end(JobStatus::Failed, error));
    }
    if let Some(hit) = Box::pin(run.look_up()).await {
        return Ok(Box::pin(run.answer_cached(hit)).await);
    }
    // Bounded: every hop resets the retry count, and hops are bounded by max_fallbacks.
    loop {
        match Box::pin(run.pass()).await? {
            Pass::GoOn => continue,
            Pass::Succeeded(out) => return Ok(run.succeed(*out)),
            Pass::Ends(status, error) => return Ok(run.end(status, error)),
        }
    }
}

/// How one pass round the loop (admit → start → call → record → decide) ended.
enum Pass {
    /// The call succeeded with this output.
    Succeeded(Box<CallOutput>),
    /// Another pass: a retry, a hop to a fallback group, or a group that cools down.
    GoOn,
    /// The job ends without a result.
    Ends(JobStatus, JobError),
}

/// What the admission step found.
enum Admit {
    /// A deployment admitted the call.
    Go(Box<Attempt>),
    /// Every deployment of the group cools down and the route moved to another group.
    Again,
    /// No deployment is left (or the request can never fit a limit).
    GiveUp,
    /// The job was cancelled while waiting.
    Cancelled,
}

/// What the start step found.
enum Start {
    /// The job row claimed the call and numbered it.
    Go(Box<Attempt>),
    /// The job made every call it may (`Config::max_calls_per_job`).
    CallsSpent,
}

/// A failed call, for the decision that follows it.
struct Failure {
    attempt: u32,
    deployment: Arc<Deployment>,
    error: ProviderError,
}

fn cancelled() -> JobError {
    JobError {
        class: ErrorClass::Internal,
        message: "cancelled".into(),
    }
}

/// One delivery's run: the job as submitted, and what changes from attempt to attempt.
struct Run<'a> {
    ctx: &'a Ctx,
    id: Uuid,
    owner: String,
    group: String,
    tier: Tier,
    reply_subject: Option<String>,
    created_at: DateTime<Utc>,
    delivery: u32,
    stream: bool,
    request: ChatRequest,
    /// An embeddings job's request (`request` then only names the group); narrowed to
    /// the inputs the response cache lacked.
    embeddings: Option<Box<EmbeddingsRequest>>,
    /// The response cache's part in this job (`None`: the cache is off or not asked).
    cache: Option<JobCache>,
    /// The job row as it will end; filled in by [`Run::end`] / [`Run::succeed`].
    base: JobOutcome,
    publisher: EventPublisher,
    route: Route<'a>,
    /// The limits of the job's key, beside each deployment's own.
    key_scopes: Arc<Vec<Scope>>,
    /// The tags the job asked for (`tags`, `metadata.tags`), for tag routing.
    tags: Vec<String>,
    /// The header lines `tag_regex` patterns are matched against (`eligible.rs`).
    header_lines: Vec<String>,
    /// Prompt estimates per tokenizer (the cheap bound among them), computed once each.
    prompt_estimates: Vec<(tokens::Tokenizer, u64)>,
    /// Attempts this delivery made, for the ledger.
    records: Vec<AttemptRecord>,
    /// The settlement of a successful call's reservation, running beside the result's
    /// write and publish; the job's end waits for it before the ack (`outcome::conclude`).
    settling: Option<tokio::task::JoinHandle<()>>,
    /// The job's calls as this delivery knows them (the last attempt number); each call's
    /// number is allocated by the job row when it starts.
    attempt: u32,
    last_error: JobError,
}

impl<'a> Run<'a> {
    fn new(
        ctx: &'a Ctx,
        envelope: Box<JobEnvelope>,
        tier: Tier,
        delivery: u32,
        calls: u32,
    ) -> Self {
        let base = outcome_base(&envelope, tier, calls);
        let JobEnvelope {
            id,
            mut request,
            mut embeddings,
            reply_subject,
            fallbacks,
            disable_fallbacks,
            metadata,
            user_agent,
            ..
        } = *envelope;
        if let Some(t) = embeddings.as_mut().and_then(|e| e.extra.remove("tags")) {
            // An embeddings job's `tags` are read like a chat job's (and not sent on).
            request.extra.insert("tags".into(), t);
        }
        let tags = eligible::job_tags(&mut request, metadata.as_ref());
        let header_lines = eligible::header_lines(user_agent.as_deref());
        let group = request.model.clone();
        let cache = cached::plan(ctx, &group, &mut request, embeddings.as_deref_mut());
        Run {
            ctx,
            id,
            route: Route::new(ctx, &group, fallbacks, disable_fallbacks),
            owner: base.owner.clone(),
            group,
            tier,
            reply_subject,
            created_at: base.created_at,
            delivery,
            stream: request.stream.unwrap_or(false),
            request,
            embeddings,
            cache,
            base,
            publisher: EventPublisher::new(ctx.js.clone(), ctx.subjects.events(id), id),
            key_scopes: Arc::default(),
            tags,
            header_lines,
            prompt_estimates: Vec::with_capacity(2),
            records: Vec::new(),
            settling: None,
            attempt: calls,
            last_error: JobError {
                class: ErrorClass::Internal,
                message: "no deployment available".into(),
            },
        }
    }

    /// Why the job cannot run at all, if it cannot: no deployment can ever serve it, or
    /// its key was revoked.
    async fn refused(&mut self) -> Result<Option<JobError>, Halt> {
        if let Some(error) = self.invalid() {
            return Ok(Some(error));
        }
        if self.load_key_scopes().await? {
            return Ok(None);
        }
        Ok(Some(JobError {
            class: ErrorClass::Auth,
            message: "the API key of this job was revoked".into(),
        }))
    }

    /// One pass: admit an attempt, start it, call, record the call, and decide what
    /// follows a failure.
    async fn pass(&mut self) -> Result<Pass, Halt> {
        // Every step but the call is boxed: this future is as large as its largest await,
        // and it is held for as long as the call streams (`job/mod.rs`).
        let attempt = match Box::pin(self.admit().instrument(crate::trace::admission())).await? {
            Admit::Go(attempt) => attempt,
            Admit::Again => return Ok(Pass::GoOn),
            Admit::GiveUp => return Ok(Pass::Ends(JobStatus::Failed, self.last_error.clone())),
            Admit::Cancelled => return Ok(Pass::Ends(JobStatus::Cancelled, cancelled())),
        };
        let attempt = match Box::pin(self.start(*attempt)).await? {
            Start::Go(attempt) => *attempt,
            Start::CallsSpent => {
                // Calls across all deliveries count: the job ends with the class of its
                // last failure.
                let error = Box::pin(self.last_failure()).await;
                tracing::warn!(calls = self.attempt, class = %error.class, "job made every call it may");
                return Ok(Pass::Ends(JobStatus::Failed, error));
            }
        };
        let operation = if self.embeddings.is_some() {
            "embeddings"
        } else {
            "chat"
        };
        let span =
            crate::trace::attempt(&attempt.deployment, attempt.number, operation, self.stream);
        let result = self.call(&attempt).instrument(span.clone()).await;
        match Box::pin(self.record(attempt, result).instrument(span)).await {
            Ok(out) => Ok(Pass::Succeeded(Box::new(out))),
            Err(failure) if Box::pin(self.decide(&failure)).await => Ok(Pass::GoOn),
            Err(_) => Ok(Pass::Ends(JobStatus::Failed, self.last_error.clone())),
        }
    }

    /// A job no deployment can ever run (published straight to NATS, past the api's
    /// checks).
    fn invalid(&self) -> Option<JobError> {
        let message = if !self
            .ctx
            .router
            .has_group(self.ctx.config.resolve_group(&self.group))
        {
            format!("unknown model group {:?}", self.group)
        } else if let Some(e) = &self.embeddings {
            e.input.invalid()?
        } else if self.request.messages.is_empty() {
            "`messages` must not be empty".to_string()
        } else {
            return None;
        };
        Some(JobError {
            class: ErrorClass::BadRequest,
            message,
        })
    }

    /// Loads the limits of the job's key; `false` if the key was revoked (its jobs do
    /// not run).
    async fn load_key_scopes(&mut self) -> Result<bool, Halt> {
        let scopes = self.ctx.key_limits.scopes(&self.owner).await.map_err(|e| {
            Halt::Defer(Deferred::now(
                "postgres_unavailable",
                format!("cannot read the key's limits: {e}"),
            ))
        })?;
        match scopes {
            Some(scopes) => {
                self.key_scopes = scopes;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The job's last failure, for a job that made every call it may: this delivery's,
    /// else the last on record.
    async fn last_failure(&self) -> JobError {
        if !self.records.is_empty() {
            return self.last_error.clone();
        }
        match self.ctx.store.last_error(self.id).await {
            Ok(Some((class, message))) => JobError {
                class: serde_json::from_value(serde_json::Value::String(class))
                    .unwrap_or(ErrorClass::Internal),
                message,
            },
            _ => JobError {
                class: ErrorClass::Internal,
                message: "the job made every provider call it may".into(),
            },
        }
    }

    /// Route, then admit: the first candidate (by order and strategy) that is not cooling
    /// down and whose limits allow the call.
    async fn admit(&mut self) -> Result<Admit, Halt> {
        if let Err(error) = self.pool() {
            self.last_error = error;
            return Ok(Admit::GiveUp);
        }
        let candidates = match &self.route.pool {
            Pool::Only(pool) => self.ctx.router.order(pool, &self.route.tried),
            Pool::All | Pool::Unknown => self
                .ctx
                .router
                .candidates(self.route.group(), &self.route.tried),
        };
        if candidates.is_empty() {
            return Ok(Admit::GiveUp);
        }
        let (checked, admission) = self.reserve(&candidates).await;
        self.admitted(&candidates, &checked, admission)
    }

    /// Asks the limits for the first of `candidates` that fits: first with the prompt's
    /// cheap upper bound (see `worker/src/tokens.rs`); only if that does not fit, and an
    /// exact count could be smaller, once more with it. Returns what was checked, and the
    /// answer.
    async fn reserve(&mut self, candidates: &[Arc<Deployment>]) -> (Vec<Candidate>, Admission) {
        let limiter = &self.ctx.limiter;
        let lease = candidates
            .iter()
            .map(|d| d.timeout)
            .max()
            .unwrap_or_default()
            + LEASE_MARGIN;
        let checked = self.candidates(candidates, false);
        let admission = limiter.admit(Some(self.id), &checked, lease).await;
        let bounded = candidates.iter().any(|d| {
            tokens::Tokenizer::for_deployment(d).cheap() != tokens::Tokenizer::for_deployment(d)
        });
        let retry_exact = matches!(
            admission,
            Admission::Wait { cooling: false, .. } | Admission::TooLarge { .. }
        );
        if !(bounded && retry_exact) {
            return (checked, admission);
        }
        let checked = self.candidates(candidates, true);
        let admission = limiter.admit(Some(self.id), &checked, lease).await;
        (checked, admission)
    }

    /// What the limits' answer means for the job: an attempt on the admitted candidate,
    /// another group, a wait (the job is handed back), or the end.
    fn admitted(
        &mut self,
        candidates: &[Arc<Deployment>],
        checked: &[Candidate],
        admission: Admission,
    ) -> Result<Admit, Halt> {
        let ctx = self.ctx;
        match admission {
            Admission::Admitted { index, reservation } => {
                // Settled when the call ends, or by itself if the job lets go of it.
                let estimate = checked[index].estimate;
                let held = limits::Held::new(&ctx.limiter, &ctx.settlements, reservation, estimate);
                Ok(Admit::Go(self.attempt_on(&candidates[index], held)))
            }
            Admission::Wait {
                after,
                limit,
                cooling,
            } => {
                // Every deployment of this group cools down: another group may serve.
                if cooling && self.route.hop(None) {
                    crate::metrics::fallback("cooldown");
                    return Ok(Admit::Again);
                }
                let cause = if cooling { "cooldown" } else { "limit" };
                Err(self.defer(Some(after), cause, format!("waiting for {limit}")))
            }
            Admission::Unavailable(e) => Err(self.defer(
                None,
                "redis_unavailable",
                format!("flow control unavailable: {e}"),
            )),
            Admission::Cancelled => Ok(Admit::Cancelled),
            Admission::TooLarge { limit } => {
                self.last_error = JobError {
                    class: ErrorClass::BadRequest,
                    message: format!(
                        "the request (about {} tokens with its output cap) can never fit the limit {limit}",
                        checked.first().map(|c| c.estimate.tokens).unwrap_or(0)
                    ),
                };
                Ok(Admit::GiveUp)
            }
        }
    }

    /// The deployments of the current group this job may use, worked out once per group
    /// (`eligible.rs`). A group with none moves the job on along its fallback chain (a
    /// prompt too long for every deployment follows `context_window_fallbacks`); the error
    /// when no group is left. Nothing here calls a provider.
    fn pool(&mut self) -> Result<(), JobError> {
        let router = &self.ctx.config.router;
        while matches!(self.route.pool, Pool::Unknown) {
            if self.route.captures().is_none() && !router.tag_filtering && !router.pre_call_checks {
                // The common case: nothing to work out, nothing copied.
                self.route.pool = Pool::All;
                break;
            }
            let group = self.route.group().to_string();
            let Some(pool) =
                eligible::by_tags(self.deployments(), &self.tags, &self.header_lines, router)
            else {
                let error = JobError {
                    class: ErrorClass::BadRequest,
                    message: format!(
                        "no deployment of model group {group:?} has the tags {:?} or a tag_regex matching {:?} (and none is tagged \"default\")",
                        self.tags, self.header_lines
                    ),
                };
                if self.route.hop(None) {
                    crate::metrics::fallback("tags");
                    continue;
                }
                return Err(error);
            };
            match self.fitting(pool, &group) {
                Ok(pool) => self.route.pool = Pool::Only(pool),
                Err(error) if self.route.hop(Some(ErrorClass::ContextWindow)) => {
                    crate::metrics::fallback(ErrorClass::ContextWindow.as_str());
                    self.last_error = error;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// The deployments of the current group, a wildcard group's made for the model the
    /// job named.
    fn deployments(&self) -> Vec<Arc<Deployment>> {
        let all = self.ctx.router.deployments(self.route.group());
        match self.route.captures() {
            Some(caps) => all
                .iter()
                .map(|d| match d.is_wildcard() {
                    true => Arc::new(d.for_model(&caps)),
                    false => Arc::clone(d),
                })
                .collect(),
            None => all.to_vec(),
        }
    }

    /// The deployments of `pool` whose context window holds the prompt (all of them
    /// without `pre_call_checks`); the error when none does.
    fn fitting(
        &mut self,
        pool: Vec<Arc<Deployment>>,
        group: &str,
    ) -> Result<Vec<Arc<Deployment>>, JobError> {
        if !self.ctx.config.router.pre_call_checks {
            return Ok(pool);
        }
        let mut longest: Option<(u64, u64)> = None;
        let mut kept = Vec::with_capacity(pool.len());
        for d in pool {
            let limit = self.ctx.contexts.max_input_tokens(&d);
            // The cheap upper bound settles most prompts; count exactly only when it
            // does not fit (see `worker/src/tokens.rs`).
            let tokenizer = tokens::Tokenizer::for_deployment(&d);
            let mut prompt = self.prompt_estimate(tokenizer.cheap());
            if limit.is_some_and(|limit| prompt > limit) {
                prompt = self.prompt_estimate(tokenizer);
            }
            match limit {
                Some(limit) if prompt > limit => {
                    if longest.is_none_or(|(l, _)| limit > l) {
                        longest = Some((limit, prompt));
                    }
                }
                _ => kept.push(d),
            }
        }
        if !kept.is_empty() {
            return Ok(kept);
        }
        let (limit, prompt) = longest.unwrap_or_default();
        tracing::info!(job_id = %self.id, %group, limit, prompt, "prompt too long for every deployment of the group");
        Err(JobError {
            class: ErrorClass::ContextWindow,
            message: format!(
                "no deployment of model group {group:?} has a context window large enough for this prompt (pre-call check): Max Input Tokens={limit}, Got={prompt}"
            ),
        })
    }

    /// The next attempt, on `deployment`, with what the limits hold for it.
    fn attempt_on(&self, deployment: &Arc<Deployment>, held: limits::Held) -> Box<Attempt> {
        Box::new(Attempt {
            job_id: self.id,
            number: self.attempt + 1,
            delivery: self.delivery,
            deployment: Arc::clone(deployment),
            // The attempt starts when the limits counted it.
            started_at: held
                .admitted_at_ms()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .unwrap_or_else(Utc::now),
            held,
        })
    }

    /// What admission checks for each candidate: its limits and the key's, and the
    /// estimated tokens and cost of the call (the prompt counted `exact`ly, or bounded
    /// cheaply from above).
    fn candidates(&mut self, candidates: &[Arc<Deployment>], exact: bool) -> Vec<Candidate> {
        let ctx = self.ctx;
        let output_cap = if self.embeddings.is_some() {
            0
        } else {
            u64::from(
                self.request
                    .output_cap()
                    .unwrap_or(ctx.config.limits.default_max_tokens),
            )
        };
        let mut admit = Vec::with_capacity(candidates.len());
        for d in candidates {
            let tokenizer = tokens::Tokenizer::for_deployment(d);
            let prompt_tokens =
                self.prompt_estimate(if exact { tokenizer } else { tokenizer.cheap() });
            let mut scopes = limits::deployment_scopes(d, &ctx.config.limits.provider_budgets);
            scopes.extend(self.key_scopes.iter().cloned());
            admit.push(Candidate {
                deployment: d.id.clone(),
                order: d.order,
                cooldowns: !ctx.config.router.disable_cooldowns,
                scopes,
                estimate: limits::estimate(ctx.prices.of(d).as_ref(), prompt_tokens, output_cap),
            });
        }
        admit
    }

    fn prompt_estimate(&mut self, tokenizer: tokens::Tokenizer) -> u64 {
        if let Some((_, n)) = self.prompt_estimates.iter().find(|(t, _)| *t == tokenizer) {
            return *n;
        }
        let n = match &self.embeddings {
            Some(e) => embed::estimate(tokenizer, e),
            None => tokens::prompt_with(tokenizer, &self.request),
        };
        self.prompt_estimates.push((tokenizer, n));
        n
    }

    /// A halt that hands the job back with the attempts this delivery made.
    fn defer(&mut self, after: Option<Duration>, cause: &'static str, reason: String) -> Halt {
        Halt::Defer(Deferred {
            after,
            cause,
            reason,
            attempts: std::mem::take(&mut self.records),
            calls_seen: self.attempt,
        })
    }

    /// Puts the attempt on record before the call is made, so a crash cannot hide a
    /// call. The same write claims the job and numbers the call: one the api ended
    /// meanwhile, or one that made every call it may, is not called (its reservation is
    /// given back unused).
    async fn start(&mut self, mut attempt: Attempt) -> Result<Start, Halt> {
        let ctx = self.ctx;
        let started = attempt.started(
            ctx,
            JobFields {
                owner: &self.owner,
                group: &self.group,
                tier: self.tier,
                reply_subject: &self.reply_subject,
                created_at: self.created_at,
            },
        );
        let claimed = ctx.ledger.write(LedgerEntry::Started(started)).await;
        if let Ok(Written::Claimed(number)) = claimed {
            attempt.number = number;
            self.attempt = number;
            attempt.held.calling();
            return Ok(Start::Go(Box::new(attempt)));
        }
        if let Some(reservation) = attempt.held.take() {
            let none = Actual {
                tokens: 0,
                cost: 0.0,
            };
            ctx.limiter.release(reservation, none).await;
        }
        match claimed {
            Err(e) => Err(self.defer(None, "ledger_unavailable", e.to_string())),
            Ok(Written::Busy) => Err(self.defer(
                Some(Duration::from_millis(100)),
                "ledger_busy",
                "another start of this job was being written".into(),
            )),
            Ok(Written::CallsSpent) => Ok(Start::CallsSpent),
            Ok(_) => Err(Halt::Ended(std::mem::take(&mut self.records))),
        }
    }

    /// The provider call; each chunk goes out as a `chunk` event as it arrives.
    async fn call(&mut self, attempt: &Attempt) -> Result<CallOutput, ProviderError> {
        if let Some(e) = &self.embeddings {
            let mut out = self.ctx.providers.embed(&attempt.deployment, e).await?;
            let tokenizer = tokens::Tokenizer::for_deployment(&attempt.deployment);
            embed::fill_usage(&mut out, self.prompt_estimate(tokenizer));
            return Ok(out);
        }
        let mut sink = EventSink {
            publisher: &mut self.publisher,
            attempt: attempt.number,
        };
        self.ctx
            .providers
            .call(
                &attempt.deployment,
                &mut self.request,
                self.stream,
                &mut sink,
            )
            .await
    }

    /// Writes the attempt down and settles its reservation with the real usage and the
    /// deployment's health. A failure becomes the job's last error.
    async fn record(
        &mut self,
        attempt: Attempt,
        result: Result<CallOutput, ProviderError>,
    ) -> Result<CallOutput, Failure> {
        let ctx = self.ctx;
        let record = attempt.record(ctx, &self.request, &result);
        let answered = result.as_ref().ok().map(|o| o.result.model());
        crate::trace::attempt_ended(&tracing::Span::current(), &record, answered);
        let used = Actual {
            tokens: (record.prompt_tokens.unwrap_or(0) + record.completion_tokens.unwrap_or(0))
                .max(0) as u64,
            cost: record.cost.and_then(|c| c.to_f64()).unwrap_or(0.0),
        };
        let health = attempt.health(ctx, &result);
        let Attempt {
            number,
            deployment,
            held,
            ..
        } = attempt;
        if let (false, Err(e)) = (health.cool_now.is_zero(), &result) {
            crate::metrics::cooldown(&deployment.id, e.class.as_str());
        }
        if let Some(reservation) = held.take() {
            if result.is_ok() {
                // No call follows a success, so nothing here waits for the settlement: it
                // runs beside the result's write and publish, and the ack waits for it.
                let limiter = ctx.limiter.clone();
                self.settling = Some(ctx.settlements.spawn(async move {
                    limiter.settle(reservation, used, health).await;
                }));
            } else {
                // The next attempt's admission must see this one's usage and health.
                ctx.limiter.settle(reservation, used, health).await;
            }
        }
        self.records.push(record);
        result.map_err(|error| {
            tracing::info!(attempt = number, deployment = %deployment.id, class = %error.class, error = %error.message, "attempt failed");
            self.last_error = JobError {
                class: error.class,
                message: error.message.clone(),
            };
            Failure {
                attempt: number,
                deployment,
                error,
            }
        })
    }

    /// After a failed attempt: stop, retry within the group, or hop to a fallback group.
    /// Going on tells subscribers (a `retry` event) and waits the backoff of a retry.
    async fn decide(&mut self, failure: &Failure) -> bool {
        let class = failure.error.class;
        self.route.tried.push(Arc::clone(&failure.deployment));
        let next = self.route.next(class);
        let go_on = match next {
            Next::Stop => false,
            Next::Retry => {
                self.route.retries += 1;
                true
            }
            Next::Hop => {
                let hopped = self.route.hop(Some(class));
                if hopped {
                    crate::metrics::fallback(class.as_str());
                }
                hopped
            }
        };
        if !go_on {
            return false;
        }
        crate::metrics::retry(class.as_str());
        self.publisher
            .retry(&RetryEvent {
                attempt: failure.attempt,
                deployment: failure.deployment.id.clone(),
                error: self.last_error.clone(),
            })
            .await;
        if next == Next::Retry {
            let other_left = self.route.other_left();
            let wait = self
                .route
                .schedule
                .next(failure.error.retry_after, other_left)
                .max(self.ctx.config.router.retry_after);
            tokio::time::sleep(wait).await;
        }
        true
    }

    /// The job succeeded with the last attempt's output.
    fn succeed(self, mut out: CallOutput) -> Finished {
        let saved = self
            .cache
            .as_ref()
            .and_then(|c| cached::after_call(self.ctx, c, &mut out, self.records.last()));
        if let Some(e) = &self.embeddings {
            embed::shape(&mut out.result, e);
        }
        let mut finished =
            Finished::succeeded(self.base, self.records, out, self.publisher, self.attempt);
        finished.outcome.cost_saved = saved;
        finished.settling = self.settling;
        finished
    }

    /// Looks the job up in the response cache (narrowing a partly cached embeddings job
    /// to its other inputs).
    async fn look_up(&mut self) -> Option<cached::Hit> {
        let cache = self.cache.as_mut()?;
        cached::look_up(self.ctx, cache, &mut self.embeddings).await
    }

    /// The job ends with the cache's answer: no call.
    async fn answer_cached(self, mut hit: cached::Hit) -> Finished {
        if let Some(e) = &self.embeddings {
            embed::shape(&mut hit.result, e);
        }
        cached::finish(self.base, hit, self.publisher, self.stream, self.attempt).await
    }

    /// The job ends without a result after the calls it made.
    fn end(self, status: JobStatus, error: JobError) -> Finished {
        let made = self.attempt;
        Finished::without_result(status, self.base, self.records, error, self.publisher, made)
    }
}
