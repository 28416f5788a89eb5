//! The one typed configuration: `sluice.yaml` (a LiteLLM `config.yaml` plus a `sluice:`
//! section) overlaid with environment variables, validated at start-up.
//!
//! Every error names the key and the file. Keys Sluice reads but does not act on are
//! collected in [`Config::ignored_keys`] so the binary can name them in one warning.
//!
//! This file holds the typed result ([`Config`] and its parts) and the load order. The
//! rest is split by concern:
//! - `raw.rs`: the serde shapes of the file, as written;
//! - `coerce.rs`: value coercion (`os.environ/NAME`, numbers, booleans, prices, periods);
//! - `litellm.rs`: LiteLLM's `model_list` and `router_settings` turned into typed settings;
//! - `providers.rs`: the provider registry (prefix → protocol and default `api_base`);
//! - `keys.rs`: the keys acted on, so the rest can be named as not acted on;
//! - `describe.rs`: the human-readable account printed by `sluice config check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_yaml_ng::Value;

use crate::secret::Secret;
use sluice_schemas::ErrorClass;

mod cache;
pub mod callbacks;
mod coerce;
mod describe;
mod keys;
mod litellm;
mod providers;
mod raw;
#[cfg(test)]
mod tests;
pub mod wildcard;

pub use cache::CacheSettings;

pub use coerce::parse_period;
pub use providers::{key_env, provider_defaults, Protocol};

use coerce::Ctx;
use litellm::DeploymentDefaults;
use raw::{RawFile, RawSluice};

/// Defaults live here, in one place.
pub mod defaults {
    pub const NATS_URL: &str = "nats://127.0.0.1:4222";
    pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
    pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/sluice";
    pub const SUBJECT_PREFIX: &str = "sluice";
    pub const API_ADDR: &str = "127.0.0.1:8080";
    pub const METRICS_ADDR: &str = "127.0.0.1:9464";
    pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
    pub const WORKER_CAPACITY: usize = 256;
    pub const ACK_WAIT_SECS: u64 = 30;
    pub const EVENTS_MAX_AGE_SECS: u64 = 3600;
    pub const TIMEOUT_SECS: f64 = 600.0;
    pub const DRAIN_SECS: u64 = 30;
    pub const NUM_RETRIES: u32 = 2;
    pub const ALLOWED_FAILS: u32 = 3;
    pub const COOLDOWN_SECS: f64 = 5.0;
    pub const MAX_FALLBACKS: u32 = 5;
    pub const DEFAULT_MAX_TOKENS: u32 = 1024;
    pub const MAX_DEFER_SECS: u64 = 60;
    /// Deliveries of one job that may die mid-call (a worker died or stalled with it)
    /// before the job ends `failed` and its message goes to the DLQ.
    pub const MAX_DELIVER: u32 = 10;
    /// Longest total wait of one job for limits or budget before it ends `failed`.
    pub const MAX_WAIT_SECS: u64 = 24 * 3600;
    /// How long an unfinished job with no message left in the jobs stream stays untouched
    /// before a reconciler ends it `failed`.
    pub const LOST_MESSAGE_GRACE_SECS: u64 = 300;
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// One deployment of a model group, resolved from a `model_list` entry.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// `model_info.id`, or `<model_name>/<index>` when none is given.
    pub id: String,
    pub group: String,
    /// The LiteLLM provider prefix (`openai`, `deepseek`, `hosted_vllm`, ...).
    pub provider: String,
    pub protocol: Protocol,
    /// The model name sent upstream (without the provider prefix).
    pub model: String,
    pub api_base: String,
    pub api_key: Option<Secret>,
    pub weight: u32,
    pub order: u32,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub timeout: Duration,
    /// Time to first token.
    pub stream_timeout: Option<Duration>,
    pub input_cost_per_token: Option<Decimal>,
    pub output_cost_per_token: Option<Decimal>,
    /// Calls in flight across all workers (LiteLLM `max_parallel_requests`).
    pub max_parallel_requests: Option<u64>,
    /// Azure `api-version` query parameter (ignored by other protocols).
    pub api_version: Option<String>,
    /// Drop request parameters the provider cannot take instead of failing the call
    /// (LiteLLM `drop_params`, per deployment or in `litellm_settings`).
    pub drop_params: bool,
    /// Cooldown after too many failures or a 429 (overrides the router's).
    pub cooldown_time: Option<Duration>,
    /// Longest gap between two chunks of a stream.
    pub stream_idle_timeout: Option<Duration>,
    pub cache_read_input_token_cost: Option<Decimal>,
    pub cache_creation_input_token_cost: Option<Decimal>,
    pub output_cost_per_reasoning_token: Option<Decimal>,
    /// `model_info.base_model`: the model to price this deployment as.
    pub base_model: Option<String>,
    /// Prices of the provider's batch API (`litellm_params` or `model_info`).
    pub input_cost_per_token_batches: Option<Decimal>,
    pub output_cost_per_token_batches: Option<Decimal>,
    /// `litellm_params.tags`: requests with tags go to deployments sharing one
    /// (`router_settings.enable_tag_filtering`); `default` takes untagged and unmatched ones.
    pub tags: Vec<String>,
    /// `litellm_params.tag_regex`: patterns matched against the request's
    /// `User-Agent: <value>` line; a match routes the request here as a shared tag would.
    pub tag_regex: Vec<regex::Regex>,
    /// `model_info.max_input_tokens`: the prompt this deployment's context holds
    /// (`router_settings.enable_pre_call_checks`).
    pub max_input_tokens: Option<u64>,
    /// `model_info.batch_enqueued_tokens` (or `litellm_params`): the provider's
    /// enqueued-token limit for this deployment's native batches.
    pub batch_enqueued_tokens: Option<u64>,
    /// The URL chat calls go to, parsed on the first call and kept ([`Deployment::chat_url`]).
    pub chat_url: OnceLock<url::Url>,
}

impl Deployment {
    /// Whether this deployment serves a wildcard group (`model: openai/*`): the model it
    /// calls comes from the request ([`Deployment::for_model`]).
    pub fn is_wildcard(&self) -> bool {
        self.model.contains('*')
    }

    /// This deployment calling the model that `caps` (what a wildcard group's `*`s
    /// matched) fill into its own `*`s.
    pub fn for_model(&self, caps: &[&str]) -> Deployment {
        let mut d = self.clone();
        d.model = wildcard::fill(&self.model, caps);
        // The URL may name the model (Azure's deployment path).
        d.chat_url = OnceLock::new();
        d
    }

    /// The URL chat calls go to, `build` from this deployment's settings (each protocol
    /// has its own form, `worker/src/providers/*.rs`) and parsed on the first call only:
    /// a URL handed over as a string is parsed again on every request.
    pub fn chat_url(
        &self,
        build: impl FnOnce(&Self) -> String,
    ) -> Result<url::Url, url::ParseError> {
        if let Some(url) = self.chat_url.get() {
            return Ok(url.clone());
        }
        let url = url::Url::parse(&build(self))?;
        Ok(self.chat_url.get_or_init(|| url).clone())
    }
}

/// LiteLLM `routing_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingStrategy {
    #[default]
    SimpleShuffle,
    LeastBusy,
    LatencyBased,
    CostBased,
    UsageBased,
}

/// Retry, cooldown and fallback rules (`router_settings` / `litellm_settings`).
#[derive(Debug, Clone, Default)]
pub struct RouterSettings {
    pub strategy: RoutingStrategy,
    /// Failures per minute before a deployment cools down.
    pub allowed_fails: u32,
    pub cooldown_time: Duration,
    pub disable_cooldowns: bool,
    /// Retries per error class (`retry_policy`), overriding `num_retries`.
    pub retry_policy: Vec<(ErrorClass, u32)>,
    /// Least wait before a retry.
    pub retry_after: Duration,
    pub fallbacks: BTreeMap<String, Vec<String>>,
    pub context_window_fallbacks: BTreeMap<String, Vec<String>>,
    pub content_policy_fallbacks: BTreeMap<String, Vec<String>>,
    pub default_fallbacks: Vec<String>,
    pub max_fallbacks: u32,
    /// `model_group_alias`: another name for a group.
    pub aliases: BTreeMap<String, String>,
    /// `enable_pre_call_checks`: skip deployments whose context cannot hold the prompt.
    pub pre_call_checks: bool,
    /// `enable_tag_filtering`: route tagged requests by deployment `tags`.
    pub tag_filtering: bool,
    /// `tag_filtering_match_any` (default true): one shared tag is enough; false: every
    /// request tag must be on the deployment.
    pub tag_match_any: bool,
    /// `model_group_retry_policy`: a group's own retry policy, replacing `retry_policy`.
    pub group_retry_policy: BTreeMap<String, Vec<(ErrorClass, u32)>>,
    /// `allowed_fails_policy`: failures per class a deployment tolerates within a minute
    /// before it cools down, replacing `allowed_fails` (and the at-once cooldown of a 429
    /// or an overload) for those classes.
    pub allowed_fails_policy: Vec<(ErrorClass, u32)>,
    /// Wildcard group names (`openai/*`, `*`), so names of plain groups resolve without
    /// a scan when there are none.
    pub wildcard_groups: Vec<String>,
}

impl RouterSettings {
    /// Retries allowed for a failure of `class`.
    pub fn retries_for(&self, class: ErrorClass, num_retries: u32) -> u32 {
        policy(&self.retry_policy, class).unwrap_or(num_retries)
    }

    /// Retries allowed for a failure of `class` in `group`: the group's own policy when it
    /// has one (`model_group_retry_policy`), else `retry_policy`, else `num_retries`.
    pub fn retries_in(&self, group: &str, class: ErrorClass, num_retries: u32) -> u32 {
        match self.group_retry_policy.get(group) {
            Some(own) => policy(own, class).unwrap_or(num_retries),
            None => self.retries_for(class, num_retries),
        }
    }

    /// Failures of `class` a deployment tolerates before it cools down, if
    /// `allowed_fails_policy` names the class.
    pub fn allowed_fails_for(&self, class: ErrorClass) -> Option<u32> {
        policy(&self.allowed_fails_policy, class)
    }
}

fn policy(list: &[(ErrorClass, u32)], class: ErrorClass) -> Option<u32> {
    list.iter().find(|(c, _)| *c == class).map(|(_, n)| *n)
}

/// A spend limit per provider (`router_settings.provider_budget_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderBudget {
    pub provider: String,
    pub budget_limit: f64,
    pub period: Duration,
}

/// Flow-control settings (`sluice.limits`).
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Admit without a check when Redis is down (logged loudly). Default: defer jobs.
    pub fail_open: bool,
    /// Output tokens assumed for a request without `max_tokens`.
    pub default_max_tokens: u32,
    /// Longest single deferral of a job waiting for a limit.
    pub max_defer: Duration,
    /// Longest total wait of one job (from its submission) for limits or budget; then the
    /// job ends `failed` (`sluice.limits.max_wait_secs`).
    pub max_wait: Duration,
    pub provider_budgets: Vec<ProviderBudget>,
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Concurrent jobs per worker.
    pub capacity: usize,
    pub ack_wait: Duration,
    /// How long a worker finishes in-flight jobs after SIGTERM before NAKing them.
    pub drain: Duration,
    /// Deliveries of a job that may die mid-call (`sluice.worker.max_deliver`).
    pub max_deliver: u32,
    /// Provider calls one job may make across all its deliveries
    /// (`sluice.worker.max_calls_per_job`); unset: see [`Config::max_calls_per_job`].
    pub max_calls: Option<u32>,
    /// How long an unfinished job, whose message is gone from the jobs stream, stays
    /// without an update before a reconciler ends it `failed`
    /// (`sluice.worker.lost_message_grace_secs`).
    pub lost_message_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub file: Option<PathBuf>,
    pub deployments: Vec<Deployment>,
    pub nats_url: String,
    pub redis_url: String,
    pub database_url: String,
    pub subject_prefix: String,
    pub master_key: Option<Secret>,
    pub api_addr: String,
    pub metrics_addr: String,
    pub max_body_bytes: usize,
    pub events_max_age: Duration,
    pub worker: WorkerSettings,
    /// Retries of one job within its model group (LiteLLM `num_retries`).
    pub num_retries: u32,
    pub router: RouterSettings,
    pub limits: LimitSettings,
    pub batches: crate::batch_settings::BatchSettings,
    /// Guards against hostile input (`sluice.safety`).
    pub safety: crate::safety::SafetySettings,
    /// Prices in LiteLLM's `model_prices_and_context_window.json` format.
    pub pricing_file: Option<PathBuf>,
    /// Signs webhook deliveries (`SLUICE_WEBHOOK_SECRET` or `sluice.webhook_secret`).
    pub webhook_secret: Option<Secret>,
    /// The response cache (`litellm_settings.cache` + `cache_params`); `None`: off.
    pub cache: Option<CacheSettings>,
    /// Keys present in the file that Sluice does not act on (yet).
    pub ignored_keys: Vec<String>,
    /// LiteLLM's usage callbacks (`litellm_settings.success_callback`, ...).
    pub callbacks: callbacks::Callbacks,
    /// Replicas of every stream Sluice creates (`sluice.nats.replicas`: 1, 3 or 5).
    pub nats_replicas: usize,
    /// `SSL_CERT_FILE` and the NATS credential variables (see `core/src/tls.rs`).
    pub tls: crate::tls::TlsEnv,
}

/// The environment, as a lookup function, so tests can supply their own.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl Config {
    /// Loads `SLUICE_CONFIG` (or `path`) and the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env = ProcessEnv;
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| env.var("SLUICE_CONFIG").map(PathBuf::from));
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Config::from_yaml(&text, Some(path), &env)
            }
            None => Config::from_yaml("", None, &env),
        }
    }

    /// Parses and validates a config text; `env` resolves `os.environ/NAME` and overrides.
    pub fn from_yaml(
        text: &str,
        file: Option<PathBuf>,
        env: &dyn Env,
    ) -> Result<Config, ConfigError> {
        let file_name = file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<no config file>".to_string());
        let raw = parse(text, &file_name)?;
        let ctx = Ctx {
            file: &file_name,
            env,
        };
        let mut ignored = keys::not_acted_on(&raw);
        let callbacks = callbacks::resolve(&file_name, &raw.litellm_settings, env, &mut ignored)?;
        let deployments = ctx.deployments(&raw, &mut ignored)?;
        let router = ctx.router_settings(&raw, &deployments)?;
        let master_key = ctx.master_key(&raw)?;
        let s = &raw.sluice;
        let subject_prefix = ctx.subject_prefix(s)?;
        let worker = ctx.worker_settings(s)?;
        let nats_replicas = ctx.nats_replicas(s)?;
        let cache = ctx.cache_settings(&raw.litellm_settings, &mut ignored)?;
        let pick = |name: &str, file: &Option<String>, default: &str| {
            env.var(name)
                .or_else(|| file.clone())
                .unwrap_or(default.into())
        };
        Ok(Config {
            cache,
            nats_replicas,
            tls: crate::tls::TlsEnv::from_env(env),
            file,
            deployments,
            nats_url: pick("NATS_URL", &s.nats_url, defaults::NATS_URL),
            redis_url: pick("REDIS_URL", &s.redis_url, defaults::REDIS_URL),
            database_url: pick("DATABASE_URL", &s.database_url, defaults::DATABASE_URL),
            subject_prefix,
            master_key,
            api_addr: pick("SLUICE_API_ADDR", &s.api_addr, defaults::API_ADDR),
            metrics_addr: pick(
                "SLUICE_METRICS_ADDR",
                &s.metrics_addr,
                defaults::METRICS_ADDR,
            ),
            max_body_bytes: s.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
            events_max_age: Duration::from_secs(
                s.events_max_age_secs
                    .unwrap_or(defaults::EVENTS_MAX_AGE_SECS),
            ),
            worker,
            router,
            pricing_file: s.pricing_file.clone(),
            webhook_secret: ctx.webhook_secret(s)?,
            num_retries: ctx.num_retries(&raw)?,
            limits: ctx.limit_settings(&raw)?,
            batches: s.batches.resolve().map_err(|(k, m)| ctx.invalid(k, m))?,
            safety: s.safety.resolve().map_err(|(k, m)| ctx.invalid(k, m))?,
            ignored_keys: ignored,
            callbacks,
        })
    }

    /// Provider calls one job may make across all its deliveries: set, or enough for every
    /// retry in every group of a full fallback chain, plus one call per delivery a dead
    /// worker may have cut short.
    pub fn max_calls_per_job(&self) -> u32 {
        if let Some(n) = self.worker.max_calls {
            return n;
        }
        let r = &self.router;
        let retries = r
            .retry_policy
            .iter()
            .chain(r.group_retry_policy.values().flatten())
            .map(|(_, n)| *n)
            .chain([self.num_retries])
            .max()
            .unwrap_or(0);
        (retries + 1)
            .saturating_mul(r.max_fallbacks.saturating_add(1))
            .saturating_add(self.worker.max_deliver)
    }

    /// Model group names, sorted, for error messages and `/v1/models`.
    pub fn groups(&self) -> Vec<&str> {
        let mut g: Vec<&str> = self.deployments.iter().map(|d| d.group.as_str()).collect();
        g.sort_unstable();
        g.dedup();
        g
    }

    /// Whether `group` names a model group: exactly, by alias, or by a wildcard group
    /// (`openai/*`).
    pub fn has_group(&self, group: &str) -> bool {
        self.deployments.iter().any(|d| d.group == group)
            || self.router.aliases.contains_key(group)
            || self.wildcard_group(group).is_some()
    }

    /// The wildcard group (`model_name` with a `*`) that `name` falls under, if `name` is
    /// no group of its own.
    pub fn wildcard_group(&self, name: &str) -> Option<&str> {
        wildcard::best(self.router.wildcard_groups.iter().map(String::as_str), name)
    }

    /// A human-readable account of the resolved config (secrets masked), for
    /// `sluice config check`.
    /// The group a name refers to: `model_group_alias` resolved, else the name itself,
    /// else the wildcard group it falls under.
    pub fn resolve_group<'a>(&'a self, name: &'a str) -> &'a str {
        if let Some(g) = self.router.aliases.get(name) {
            return g;
        }
        if !self.router.wildcard_groups.is_empty()
            && !name.contains('*')
            && !self.deployments.iter().any(|d| d.group == name)
        {
            if let Some(g) = self.wildcard_group(name) {
                return g;
            }
        }
        name
    }

    pub fn deployments_of<'a>(
        &'a self,
        group: &'a str,
    ) -> impl Iterator<Item = &'a Deployment> + 'a {
        self.deployments.iter().filter(move |d| d.group == group)
    }
}

/// The file's text as its raw shapes (an empty file is an empty config).
fn parse(text: &str, file_name: &str) -> Result<RawFile, ConfigError> {
    if text.trim().is_empty() {
        return Ok(RawFile::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
        file: file_name.to_string(),
        message: e.to_string(),
    })
}

/// The steps of [`Config::from_yaml`], one section (or part of one) each.
impl Ctx<'_> {
    /// `SLUICE_MASTER_KEY`, else `general_settings.master_key`.
    fn master_key(&self, raw: &RawFile) -> Result<Option<Secret>, ConfigError> {
        if let Some(k) = self.env.var("SLUICE_MASTER_KEY") {
            return Ok(Some(Secret::new(k)));
        }
        Ok(self
            .opt_str(&raw.general_settings, "general_settings", "master_key")?
            .map(Secret::new))
    }

    /// `sluice.nats.replicas`: 1, 3 or 5.
    fn nats_replicas(&self, s: &RawSluice) -> Result<usize, ConfigError> {
        let nats_replicas = s.nats.replicas.unwrap_or(1);
        if ![1, 3, 5].contains(&nats_replicas) {
            return Err(self.invalid(
                "sluice.nats.replicas",
                format!("{nats_replicas} is not 1, 3 or 5"),
            ));
        }
        Ok(nats_replicas)
    }

    /// `num_retries`: `router_settings` wins over `litellm_settings`; at most 100.
    fn num_retries(&self, raw: &RawFile) -> Result<u32, ConfigError> {
        Ok(self
            .opt_u64(&raw.router_settings, "router_settings", "num_retries")?
            .or(self.opt_u64(&raw.litellm_settings, "litellm_settings", "num_retries")?)
            .map(|n| n.min(100) as u32)
            .unwrap_or(defaults::NUM_RETRIES))
    }

    /// `model_list` as deployments, each id once; what each inherits comes from
    /// `router_settings` and `litellm_settings`.
    fn deployments(
        &self,
        raw: &RawFile,
        ignored: &mut Vec<String>,
    ) -> Result<Vec<Deployment>, ConfigError> {
        let (r, l) = (&raw.router_settings, &raw.litellm_settings);
        let timeout = self
            .opt_f64(r, "router_settings", "timeout")?
            .or(self.opt_f64(l, "litellm_settings", "request_timeout")?)
            .unwrap_or(defaults::TIMEOUT_SECS);
        let stream_timeout = self.opt_f64(r, "router_settings", "stream_timeout")?;
        let drop_params = self
            .opt_bool(l, "litellm_settings", "drop_params")?
            .unwrap_or(false);
        let mut deployments = Vec::with_capacity(raw.model_list.len());
        for (i, m) in raw.model_list.iter().enumerate() {
            let defaults = DeploymentDefaults {
                timeout,
                stream_timeout,
                stream_idle_timeout: self.opt_f64(r, "router_settings", "stream_idle_timeout")?,
                drop_params,
            };
            let d = self.deployment(i, m, &defaults, ignored)?;
            if deployments.iter().any(|o: &Deployment| o.id == d.id) {
                return Err(self.invalid(
                    &format!("model_list[{i}].model_info.id"),
                    format!("duplicate deployment id {:?}", d.id),
                ));
            }
            deployments.push(d);
        }
        Ok(deployments)
    }

    /// `sluice.subject_prefix`: dot-separated NATS tokens, no wildcards.
    fn subject_prefix(&self, s: &RawSluice) -> Result<String, ConfigError> {
        let subject_prefix = s
            .subject_prefix
            .clone()
            .unwrap_or_else(|| defaults::SUBJECT_PREFIX.to_string());
        if subject_prefix.is_empty()
            || subject_prefix
                .split('.')
                .any(|t| t.is_empty() || t.contains(['*', '>', ' ']))
        {
            return Err(self.invalid(
                "sluice.subject_prefix",
                format!("{subject_prefix:?} is not a valid NATS subject prefix"),
            ));
        }
        Ok(subject_prefix)
    }

    /// `sluice.worker`.
    fn worker_settings(&self, s: &RawSluice) -> Result<WorkerSettings, ConfigError> {
        let w = &s.worker;
        let capacity = w.capacity.unwrap_or(defaults::WORKER_CAPACITY);
        if capacity == 0 {
            return Err(self.invalid("sluice.worker.capacity", "must be at least 1".into()));
        }
        let ack_wait = w.ack_wait_secs.unwrap_or(defaults::ACK_WAIT_SECS).max(1);
        let lost_grace = w
            .lost_message_grace_secs
            .unwrap_or(defaults::LOST_MESSAGE_GRACE_SECS)
            .max(1);
        Ok(WorkerSettings {
            capacity,
            ack_wait: Duration::from_secs(ack_wait),
            drain: Duration::from_secs(w.drain_secs.unwrap_or(defaults::DRAIN_SECS)),
            max_deliver: w.max_deliver.unwrap_or(defaults::MAX_DELIVER).max(1),
            max_calls: w.max_calls_per_job.map(|n| n.max(1)),
            lost_message_grace: Duration::from_secs(lost_grace),
        })
    }

    /// The webhook signing secret: `SLUICE_WEBHOOK_SECRET`, else `sluice.webhook_secret`.
    fn webhook_secret(&self, s: &RawSluice) -> Result<Option<Secret>, ConfigError> {
        if let Some(v) = self.env.var("SLUICE_WEBHOOK_SECRET") {
            return Ok(Some(Secret::new(v)));
        }
        match &s.webhook_secret {
            Some(v) => Ok(Some(Secret::new(
                self.resolve("sluice.webhook_secret", &Value::String(v.clone()))?,
            ))),
            None => Ok(None),
        }
    }

    /// `sluice.limits`, with `router_settings.provider_budget_config`.
    fn limit_settings(&self, raw: &RawFile) -> Result<LimitSettings, ConfigError> {
        let l = &raw.sluice.limits;
        let secs = |v: Option<u64>, default: u64| Duration::from_secs(v.unwrap_or(default).max(1));
        Ok(LimitSettings {
            fail_open: l.fail_open.unwrap_or(false),
            default_max_tokens: l
                .default_max_tokens
                .unwrap_or(defaults::DEFAULT_MAX_TOKENS)
                .max(1),
            max_defer: secs(l.max_defer_secs, defaults::MAX_DEFER_SECS),
            max_wait: secs(l.max_wait_secs, defaults::MAX_WAIT_SECS),
            provider_budgets: self.provider_budgets(&raw.router_settings)?,
        })
    }
}
