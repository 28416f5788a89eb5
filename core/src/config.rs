//! The one typed configuration: `sluice.yaml` (a LiteLLM `config.yaml` plus a `sluice:`
//! section) overlaid with environment variables, validated at start-up.
//!
//! Every error names the key and the file. Keys Sluice reads but does not act on are
//! collected in [`Config::ignored_keys`] so the binary can name them in one warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::secret::Secret;
use sluice_schemas::ErrorClass;

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

/// Where an upstream is reached and how it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    OpenAi,
    Azure,
    Anthropic,
    Gemini,
    Ollama,
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
}

impl RouterSettings {
    /// Retries allowed for a failure of `class`.
    pub fn retries_for(&self, class: ErrorClass, num_retries: u32) -> u32 {
        self.retry_policy
            .iter()
            .find(|(c, _)| *c == class)
            .map(|(_, n)| *n)
            .unwrap_or(num_retries)
    }
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
    pub provider_budgets: Vec<ProviderBudget>,
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Concurrent jobs per worker.
    pub capacity: usize,
    pub ack_wait: Duration,
    /// How long a worker finishes in-flight jobs after SIGTERM before NAKing them.
    pub drain: Duration,
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
    /// Keys present in the file that Sluice does not act on (yet).
    pub ignored_keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawFile {
    #[serde(default)]
    model_list: Vec<RawModel>,
    #[serde(default)]
    router_settings: BTreeMap<String, Value>,
    #[serde(default)]
    litellm_settings: BTreeMap<String, Value>,
    #[serde(default)]
    general_settings: BTreeMap<String, Value>,
    #[serde(default)]
    sluice: RawSluice,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RawModel {
    model_name: String,
    litellm_params: BTreeMap<String, Value>,
    #[serde(default)]
    model_info: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSluice {
    nats_url: Option<String>,
    redis_url: Option<String>,
    database_url: Option<String>,
    subject_prefix: Option<String>,
    api_addr: Option<String>,
    metrics_addr: Option<String>,
    max_body_bytes: Option<usize>,
    events_max_age_secs: Option<u64>,
    pricing_file: Option<PathBuf>,
    webhook_secret: Option<String>,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    batches: crate::batch_settings::RawBatchSettings,
    #[serde(default)]
    safety: crate::safety::RawSafetySettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    fail_open: Option<bool>,
    default_max_tokens: Option<u32>,
    max_defer_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    capacity: Option<usize>,
    ack_wait_secs: Option<u64>,
    drain_secs: Option<u64>,
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
        let raw: RawFile = if text.trim().is_empty() {
            RawFile::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
                file: file_name.clone(),
                message: e.to_string(),
            })?
        };
        let ctx = Ctx {
            file: &file_name,
            env,
        };

        let mut ignored = Vec::new();
        for key in raw.other.keys() {
            ignored.push(key.clone());
        }
        for (section, map, known) in [
            ("router_settings", &raw.router_settings, ROUTER_KEYS),
            ("litellm_settings", &raw.litellm_settings, LITELLM_KEYS),
            ("general_settings", &raw.general_settings, GENERAL_KEYS),
        ] {
            for key in map.keys() {
                if !known.contains(&key.as_str()) {
                    ignored.push(format!("{section}.{key}"));
                }
            }
        }

        let default_timeout = ctx
            .opt_f64(&raw.router_settings, "router_settings", "timeout")?
            .or(ctx.opt_f64(&raw.litellm_settings, "litellm_settings", "request_timeout")?)
            .unwrap_or(defaults::TIMEOUT_SECS);
        let default_stream_timeout =
            ctx.opt_f64(&raw.router_settings, "router_settings", "stream_timeout")?;
        let default_drop_params = ctx
            .opt_bool(&raw.litellm_settings, "litellm_settings", "drop_params")?
            .unwrap_or(false);

        let mut deployments = Vec::with_capacity(raw.model_list.len());
        for (i, m) in raw.model_list.iter().enumerate() {
            let defaults = DeploymentDefaults {
                timeout: default_timeout,
                stream_timeout: default_stream_timeout,
                stream_idle_timeout: ctx.opt_f64(
                    &raw.router_settings,
                    "router_settings",
                    "stream_idle_timeout",
                )?,
                drop_params: default_drop_params,
            };
            let d = ctx.deployment(i, m, &defaults, &mut ignored)?;
            if deployments.iter().any(|o: &Deployment| o.id == d.id) {
                return Err(ctx.invalid(
                    &format!("model_list[{i}].model_info.id"),
                    format!("duplicate deployment id {:?}", d.id),
                ));
            }
            deployments.push(d);
        }

        let router = ctx.router_settings(&raw, &deployments)?;
        let master_key = match env.var("SLUICE_MASTER_KEY") {
            Some(k) => Some(Secret::new(k)),
            None => ctx
                .opt_str(&raw.general_settings, "general_settings", "master_key")?
                .map(Secret::new),
        };
        let s = &raw.sluice;
        let pick = |env_name: &str, file: &Option<String>, default: &str| {
            env.var(env_name)
                .or_else(|| file.clone())
                .unwrap_or_else(|| default.to_string())
        };
        let subject_prefix = s
            .subject_prefix
            .clone()
            .unwrap_or_else(|| defaults::SUBJECT_PREFIX.to_string());
        if subject_prefix.is_empty()
            || subject_prefix
                .split('.')
                .any(|t| t.is_empty() || t.contains(['*', '>', ' ']))
        {
            return Err(ctx.invalid(
                "sluice.subject_prefix",
                format!("{subject_prefix:?} is not a valid NATS subject prefix"),
            ));
        }
        let capacity = s.worker.capacity.unwrap_or(defaults::WORKER_CAPACITY);
        if capacity == 0 {
            return Err(ctx.invalid("sluice.worker.capacity", "must be at least 1".into()));
        }
        let config = Config {
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
            worker: WorkerSettings {
                capacity,
                ack_wait: Duration::from_secs(
                    s.worker
                        .ack_wait_secs
                        .unwrap_or(defaults::ACK_WAIT_SECS)
                        .max(1),
                ),
                drain: Duration::from_secs(s.worker.drain_secs.unwrap_or(defaults::DRAIN_SECS)),
            },
            router,
            pricing_file: s.pricing_file.clone(),
            webhook_secret: match env.var("SLUICE_WEBHOOK_SECRET") {
                Some(v) => Some(Secret::new(v)),
                None => match &s.webhook_secret {
                    Some(v) => Some(Secret::new(
                        ctx.resolve("sluice.webhook_secret", &Value::String(v.clone()))?,
                    )),
                    None => None,
                },
            },
            num_retries: ctx
                .opt_u64(&raw.router_settings, "router_settings", "num_retries")?
                .or(ctx.opt_u64(&raw.litellm_settings, "litellm_settings", "num_retries")?)
                .map(|n| n.min(100) as u32)
                .unwrap_or(defaults::NUM_RETRIES),
            limits: LimitSettings {
                fail_open: s.limits.fail_open.unwrap_or(false),
                default_max_tokens: s
                    .limits
                    .default_max_tokens
                    .unwrap_or(defaults::DEFAULT_MAX_TOKENS)
                    .max(1),
                max_defer: Duration::from_secs(
                    s.limits
                        .max_defer_secs
                        .unwrap_or(defaults::MAX_DEFER_SECS)
                        .max(1),
                ),
                provider_budgets: ctx.provider_budgets(&raw.router_settings)?,
            },
            batches: s.batches.resolve().map_err(|(k, m)| ctx.invalid(k, m))?,
            safety: s.safety.resolve().map_err(|(k, m)| ctx.invalid(k, m))?,
            ignored_keys: ignored,
        };
        Ok(config)
    }

    /// Model group names, sorted, for error messages and `/v1/models`.
    pub fn groups(&self) -> Vec<&str> {
        let mut g: Vec<&str> = self.deployments.iter().map(|d| d.group.as_str()).collect();
        g.sort_unstable();
        g.dedup();
        g
    }

    pub fn has_group(&self, group: &str) -> bool {
        self.deployments.iter().any(|d| d.group == group) || self.router.aliases.contains_key(group)
    }

    /// A human-readable account of the resolved config (secrets masked), for
    /// `sluice config check`.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let file = self
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(none)".into());
        let _ = writeln!(out, "config: {file}");
        for g in self.groups() {
            let _ = writeln!(out, "model group {g}");
            for d in self.deployments_of(g) {
                let price = match (d.input_cost_per_token, d.output_cost_per_token) {
                    (Some(i), Some(o)) => format!("${i}/${o} per token"),
                    _ => "no price".into(),
                };
                let key = d
                    .api_key
                    .as_ref()
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| "no key".into());
                let limits: Vec<String> = [
                    d.rpm.map(|n| format!("rpm {n}")),
                    d.tpm.map(|n| format!("tpm {n}")),
                    d.max_parallel_requests.map(|n| format!("parallel {n}")),
                ]
                .into_iter()
                .flatten()
                .collect();
                let _ = writeln!(
                    out,
                    "  - {} = {}/{} at {} (key {key}; order {}, weight {}; timeout {:?}; {price}{}{})",
                    d.id,
                    d.provider,
                    d.model,
                    d.api_base,
                    d.order,
                    d.weight,
                    d.timeout,
                    if limits.is_empty() { String::new() } else { format!("; {}", limits.join(", ")) },
                    d.stream_timeout.map(|t| format!("; first token within {t:?}")).unwrap_or_default(),
                );
            }
        }
        let r = &self.router;
        let _ = writeln!(
            out,
            "routing: {:?}; retries {} (policy {:?}); retry_after {:?}",
            r.strategy, self.num_retries, r.retry_policy, r.retry_after
        );
        let _ = writeln!(
            out,
            "cooldowns: {}",
            if r.disable_cooldowns {
                "disabled".to_string()
            } else {
                format!(
                    "after {} failures a minute or a 429, for {:?} (or Retry-After)",
                    r.allowed_fails, r.cooldown_time
                )
            }
        );
        for (name, map) in [
            ("fallbacks", &r.fallbacks),
            ("context_window_fallbacks", &r.context_window_fallbacks),
            ("content_policy_fallbacks", &r.content_policy_fallbacks),
        ] {
            for (g, to) in map {
                let _ = writeln!(out, "{name}: {g} -> {}", to.join(", "));
            }
        }
        if !r.default_fallbacks.is_empty() {
            let _ = writeln!(out, "default_fallbacks: {}", r.default_fallbacks.join(", "));
        }
        let _ = writeln!(out, "max_fallbacks: {}", r.max_fallbacks);
        for (alias, g) in &r.aliases {
            let _ = writeln!(out, "alias: {alias} -> {g}");
        }
        for b in &self.limits.provider_budgets {
            let _ = writeln!(
                out,
                "provider budget: {} ${} per {:?}",
                b.provider, b.budget_limit, b.period
            );
        }
        if !self.ignored_keys.is_empty() {
            let _ = writeln!(out, "not acted on: {}", self.ignored_keys.join(", "));
        }
        out
    }

    /// The group a name refers to (`model_group_alias` resolved).
    pub fn resolve_group<'a>(&'a self, name: &'a str) -> &'a str {
        self.router
            .aliases
            .get(name)
            .map(String::as_str)
            .unwrap_or(name)
    }

    pub fn deployments_of<'a>(
        &'a self,
        group: &'a str,
    ) -> impl Iterator<Item = &'a Deployment> + 'a {
        self.deployments.iter().filter(move |d| d.group == group)
    }
}

/// `router_settings` keys acted on so far.
const ROUTER_KEYS: &[&str] = &[
    "timeout",
    "stream_timeout",
    "stream_idle_timeout",
    "num_retries",
    "provider_budget_config",
    "routing_strategy",
    "allowed_fails",
    "cooldown_time",
    "disable_cooldowns",
    "retry_policy",
    "retry_after",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "default_fallbacks",
    "max_fallbacks",
    "model_group_alias",
];
const LITELLM_KEYS: &[&str] = &[
    "request_timeout",
    "drop_params",
    "num_retries",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "default_fallbacks",
];
const GENERAL_KEYS: &[&str] = &["master_key"];
/// `litellm_params` keys acted on so far.
const PARAM_KEYS: &[&str] = &[
    "model",
    "api_base",
    "api_key",
    "rpm",
    "tpm",
    "weight",
    "order",
    "timeout",
    "stream_timeout",
    "input_cost_per_token",
    "output_cost_per_token",
    "max_parallel_requests",
    "api_version",
    "drop_params",
    "cooldown_time",
    "stream_idle_timeout",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
];
const INFO_KEYS: &[&str] = &["id", "base_model"];

/// Settings a deployment inherits unless its `litellm_params` say otherwise.
struct DeploymentDefaults {
    timeout: f64,
    stream_timeout: Option<f64>,
    stream_idle_timeout: Option<f64>,
    drop_params: bool,
}

struct Ctx<'a> {
    file: &'a str,
    env: &'a dyn Env,
}

impl Ctx<'_> {
    fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            key: key.to_string(),
            message,
        }
    }

    /// A string value, with `os.environ/NAME` resolved.
    fn resolve(&self, key: &str, v: &Value) -> Result<String, ConfigError> {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(self.invalid(key, "expected a string".into())),
        };
        match s.strip_prefix("os.environ/") {
            Some(name) => self.env.var(name).ok_or_else(|| {
                self.invalid(key, format!("environment variable {name} is not set"))
            }),
            None => Ok(s),
        }
    }

    fn opt_str(
        &self,
        map: &BTreeMap<String, Value>,
        section: &str,
        key: &str,
    ) -> Result<Option<String>, ConfigError> {
        map.get(key)
            .filter(|v| !v.is_null())
            .map(|v| self.resolve(&format!("{section}.{key}"), v))
            .transpose()
    }

    fn opt_f64(
        &self,
        map: &BTreeMap<String, Value>,
        section: &str,
        key: &str,
    ) -> Result<Option<f64>, ConfigError> {
        match self.opt_str(map, section, key)? {
            None => Ok(None),
            Some(s) => match s.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
                _ => Err(self.invalid(
                    &format!("{section}.{key}"),
                    format!("expected a non-negative number, got {s:?}"),
                )),
            },
        }
    }

    fn opt_bool(
        &self,
        map: &BTreeMap<String, Value>,
        section: &str,
        key: &str,
    ) -> Result<Option<bool>, ConfigError> {
        match self.opt_str(map, section, key)? {
            None => Ok(None),
            Some(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(self.invalid(
                    &format!("{section}.{key}"),
                    format!("expected true or false, got {s:?}"),
                )),
            },
        }
    }

    fn opt_u64(
        &self,
        map: &BTreeMap<String, Value>,
        section: &str,
        key: &str,
    ) -> Result<Option<u64>, ConfigError> {
        match self.opt_str(map, section, key)? {
            None => Ok(None),
            Some(s) => s.trim().parse::<u64>().map(Some).map_err(|_| {
                self.invalid(
                    &format!("{section}.{key}"),
                    format!("expected a whole number, got {s:?}"),
                )
            }),
        }
    }

    fn opt_decimal(
        &self,
        map: &BTreeMap<String, Value>,
        section: &str,
        key: &str,
    ) -> Result<Option<Decimal>, ConfigError> {
        match self.opt_str(map, section, key)? {
            None => Ok(None),
            Some(s) => {
                let s = s.trim();
                let d = Decimal::from_str_exact(s)
                    .or_else(|_| Decimal::from_scientific(s))
                    .map_err(|_| {
                        self.invalid(
                            &format!("{section}.{key}"),
                            format!("expected a price, got {s:?}"),
                        )
                    })?;
                if d.is_sign_negative() {
                    return Err(self.invalid(
                        &format!("{section}.{key}"),
                        "a price cannot be negative".into(),
                    ));
                }
                Ok(Some(d))
            }
        }
    }

    fn deployment(
        &self,
        i: usize,
        m: &RawModel,
        defaults: &DeploymentDefaults,
        ignored: &mut Vec<String>,
    ) -> Result<Deployment, ConfigError> {
        let section = format!("model_list[{i}].litellm_params");
        let p = &m.litellm_params;
        if m.model_name.trim().is_empty() {
            return Err(self.invalid(
                &format!("model_list[{i}].model_name"),
                "must not be empty".into(),
            ));
        }
        for key in p.keys() {
            if !PARAM_KEYS.contains(&key.as_str()) {
                ignored.push(format!("{section}.{key}"));
            }
        }
        for key in m.model_info.keys() {
            if !INFO_KEYS.contains(&key.as_str()) {
                ignored.push(format!("model_list[{i}].model_info.{key}"));
            }
        }
        let full_model = self.opt_str(p, &section, "model")?.ok_or_else(|| {
            self.invalid(
                &format!("{section}.model"),
                "is required (provider/model)".into(),
            )
        })?;
        let (provider, model) = split_provider(&full_model)
            .ok_or_else(|| self.invalid(&format!("{section}.model"), format!(
                "cannot tell the provider of {full_model:?}: write it as provider/model, e.g. openai/gpt-4o-mini"
            )))?;
        let (protocol, default_base) = provider_defaults(provider).ok_or_else(|| {
            self.invalid(
                &format!("{section}.model"),
                format!("unknown provider {provider:?}"),
            )
        })?;
        let api_base = match self.opt_str(p, &section, "api_base")? {
            Some(b) => b,
            None => default_base.map(str::to_string).ok_or_else(|| {
                self.invalid(
                    &format!("{section}.api_base"),
                    format!("is required for provider {provider:?}"),
                )
            })?,
        };
        let api_base = api_base.trim_end_matches('/').to_string();
        if !(api_base.starts_with("http://") || api_base.starts_with("https://")) {
            return Err(self.invalid(
                &format!("{section}.api_base"),
                format!("{api_base:?} is not an http(s) URL"),
            ));
        }
        let api_version = self.opt_str(p, &section, "api_version")?;
        if protocol == Protocol::Azure && api_version.is_none() && !api_base.contains("/openai/v1")
        {
            return Err(self.invalid(
                &format!("{section}.api_version"),
                "is required for azure/ deployments (e.g. 2024-10-21), unless api_base is the v1 endpoint (…/openai/v1)".into(),
            ));
        }
        let id = match m.model_info.get("id") {
            Some(v) => self.resolve(&format!("model_list[{i}].model_info.id"), v)?,
            None => format!("{}/{}", m.model_name, i),
        };
        let secs = |v: f64| Duration::from_secs_f64(v);
        Ok(Deployment {
            id,
            group: m.model_name.clone(),
            provider: provider.to_string(),
            protocol,
            model: model.to_string(),
            api_base,
            api_key: self.opt_str(p, &section, "api_key")?.map(Secret::new),
            weight: self
                .opt_u64(p, &section, "weight")?
                .unwrap_or(1)
                .min(u32::MAX as u64) as u32,
            order: self
                .opt_u64(p, &section, "order")?
                .unwrap_or(0)
                .min(u32::MAX as u64) as u32,
            rpm: self.opt_u64(p, &section, "rpm")?,
            tpm: self.opt_u64(p, &section, "tpm")?,
            timeout: secs(
                self.opt_f64(p, &section, "timeout")?
                    .unwrap_or(defaults.timeout),
            ),
            stream_timeout: self
                .opt_f64(p, &section, "stream_timeout")?
                .or(defaults.stream_timeout)
                .map(secs),
            input_cost_per_token: self.opt_decimal(p, &section, "input_cost_per_token")?,
            output_cost_per_token: self.opt_decimal(p, &section, "output_cost_per_token")?,
            max_parallel_requests: self.opt_u64(p, &section, "max_parallel_requests")?,
            api_version,
            drop_params: self
                .opt_bool(p, &section, "drop_params")?
                .unwrap_or(defaults.drop_params),
            cooldown_time: self.opt_f64(p, &section, "cooldown_time")?.map(secs),
            stream_idle_timeout: self
                .opt_f64(p, &section, "stream_idle_timeout")?
                .or(defaults.stream_idle_timeout)
                .map(secs),
            cache_read_input_token_cost: self.opt_decimal(
                p,
                &section,
                "cache_read_input_token_cost",
            )?,
            cache_creation_input_token_cost: self.opt_decimal(
                p,
                &section,
                "cache_creation_input_token_cost",
            )?,
            output_cost_per_reasoning_token: self.opt_decimal(
                p,
                &section,
                "output_cost_per_reasoning_token",
            )?,
            base_model: self.opt_str(
                &m.model_info,
                &format!("model_list[{i}].model_info"),
                "base_model",
            )?,
        })
    }

    /// Routing, retry, cooldown and fallback rules; `router_settings` wins over
    /// `litellm_settings`. Every group a rule names must exist.
    fn router_settings(
        &self,
        raw: &RawFile,
        deployments: &[Deployment],
    ) -> Result<RouterSettings, ConfigError> {
        let r = &raw.router_settings;
        let l = &raw.litellm_settings;
        let strategy = match self.opt_str(r, "router_settings", "routing_strategy")?.as_deref() {
            None | Some("simple-shuffle") => RoutingStrategy::SimpleShuffle,
            Some("least-busy") => RoutingStrategy::LeastBusy,
            Some("latency-based-routing") => RoutingStrategy::LatencyBased,
            Some("cost-based-routing") => RoutingStrategy::CostBased,
            Some("usage-based-routing") | Some("usage-based-routing-v2") => RoutingStrategy::UsageBased,
            Some(other) => {
                return Err(self.invalid(
                    "router_settings.routing_strategy",
                    format!("unknown strategy {other:?}; use simple-shuffle, least-busy, latency-based-routing, cost-based-routing or usage-based-routing(-v2)"),
                ))
            }
        };
        let groups: Vec<&str> = deployments.iter().map(|d| d.group.as_str()).collect();
        let mut aliases = BTreeMap::new();
        if let Some(v) = r.get("model_group_alias").filter(|v| !v.is_null()) {
            let map: BTreeMap<String, Value> = serde_yaml_ng::from_value(v.clone())
                .map_err(|e| self.invalid("router_settings.model_group_alias", e.to_string()))?;
            for (alias, target) in map {
                // LiteLLM also accepts {model: name, hidden: bool}.
                let target = match &target {
                    Value::Mapping(m) => m.get("model").cloned().unwrap_or(Value::Null),
                    other => other.clone(),
                };
                let target = self.resolve(
                    &format!("router_settings.model_group_alias.{alias}"),
                    &target,
                )?;
                aliases.insert(alias, target);
            }
        }
        let known = |g: &str| groups.contains(&g) || aliases.contains_key(g);
        let fallback_map = |key: &str| -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
            let (section, v) = match (r.get(key), l.get(key)) {
                (Some(v), _) if !v.is_null() => ("router_settings", v),
                (_, Some(v)) if !v.is_null() => ("litellm_settings", v),
                _ => return Ok(BTreeMap::new()),
            };
            let name = format!("{section}.{key}");
            // LiteLLM writes a list of one-entry maps; a plain map is accepted too.
            let entries: Vec<BTreeMap<String, Vec<String>>> = match v {
                Value::Sequence(_) => serde_yaml_ng::from_value(v.clone()),
                _ => serde_yaml_ng::from_value(v.clone()).map(|m| vec![m]),
            }
            .map_err(|e| {
                self.invalid(
                    &name,
                    format!("expected [{{group: [fallback groups]}}]: {e}"),
                )
            })?;
            let mut out = BTreeMap::new();
            for (group, targets) in entries.into_iter().flatten() {
                for t in targets.iter().chain(std::iter::once(&group)) {
                    if t != "*" && !known(t) {
                        return Err(
                            self.invalid(&name, format!("model group {t:?} does not exist"))
                        );
                    }
                }
                out.insert(group, targets);
            }
            Ok(out)
        };
        let fallbacks = fallback_map("fallbacks")?;
        let context_window_fallbacks = fallback_map("context_window_fallbacks")?;
        let content_policy_fallbacks = fallback_map("content_policy_fallbacks")?;
        let default_fallbacks: Vec<String> =
            match (r.get("default_fallbacks"), l.get("default_fallbacks")) {
                (Some(v), _) | (None, Some(v)) if !v.is_null() => {
                    serde_yaml_ng::from_value(v.clone()).map_err(|e| {
                        self.invalid(
                            "default_fallbacks",
                            format!("expected a list of groups: {e}"),
                        )
                    })?
                }
                _ => Vec::new(),
            };
        for g in &default_fallbacks {
            if !known(g) {
                return Err(self.invalid(
                    "default_fallbacks",
                    format!("model group {g:?} does not exist"),
                ));
            }
        }
        let mut retry_policy = Vec::new();
        if let Some(v) = r.get("retry_policy").filter(|v| !v.is_null()) {
            let map: BTreeMap<String, u32> = serde_yaml_ng::from_value(v.clone())
                .map_err(|e| self.invalid("router_settings.retry_policy", e.to_string()))?;
            for (name, n) in map {
                let classes: &[ErrorClass] = match name.as_str() {
                    "RateLimitErrorRetries" => &[ErrorClass::RateLimit],
                    "TimeoutErrorRetries" => &[ErrorClass::Timeout],
                    "InternalServerErrorRetries" => &[
                        ErrorClass::Server,
                        ErrorClass::Overloaded,
                        ErrorClass::Connection,
                        ErrorClass::TruncatedStream,
                    ],
                    "AuthenticationErrorRetries" => &[ErrorClass::Auth],
                    "BadRequestErrorRetries" => &[ErrorClass::BadRequest],
                    "ContentPolicyViolationErrorRetries" => &[ErrorClass::ContentPolicy],
                    other => {
                        return Err(self.invalid(
                            &format!("router_settings.retry_policy.{other}"),
                            "unknown retry policy key".into(),
                        ))
                    }
                };
                retry_policy.extend(classes.iter().map(|c| (*c, n.min(100))));
            }
        }
        Ok(RouterSettings {
            strategy,
            allowed_fails: self
                .opt_u64(r, "router_settings", "allowed_fails")?
                .map(|n| n.min(u32::MAX as u64) as u32)
                .unwrap_or(defaults::ALLOWED_FAILS),
            cooldown_time: Duration::from_secs_f64(
                self.opt_f64(r, "router_settings", "cooldown_time")?
                    .unwrap_or(defaults::COOLDOWN_SECS),
            ),
            disable_cooldowns: self
                .opt_bool(r, "router_settings", "disable_cooldowns")?
                .unwrap_or(false),
            retry_policy,
            retry_after: Duration::from_secs_f64(
                self.opt_f64(r, "router_settings", "retry_after")?
                    .unwrap_or(0.0),
            ),
            fallbacks,
            context_window_fallbacks,
            content_policy_fallbacks,
            default_fallbacks,
            max_fallbacks: self
                .opt_u64(r, "router_settings", "max_fallbacks")?
                .map(|n| n.min(100) as u32)
                .unwrap_or(defaults::MAX_FALLBACKS),
            aliases,
        })
    }

    /// `provider_budget_config: {openai: {budget_limit: 100, time_period: 1d}}`
    fn provider_budgets(
        &self,
        router: &BTreeMap<String, Value>,
    ) -> Result<Vec<ProviderBudget>, ConfigError> {
        let Some(v) = router
            .get("provider_budget_config")
            .filter(|v| !v.is_null())
        else {
            return Ok(Vec::new());
        };
        let key = "router_settings.provider_budget_config";
        let map: BTreeMap<String, BTreeMap<String, Value>> = serde_yaml_ng::from_value(v.clone())
            .map_err(|e| {
            self.invalid(
                key,
                format!("expected {{provider: {{budget_limit, time_period}}}}: {e}"),
            )
        })?;
        let mut out = Vec::new();
        for (provider, settings) in map {
            let k = format!("{key}.{provider}");
            let budget_limit = self
                .opt_f64(&settings, &k, "budget_limit")?
                .ok_or_else(|| self.invalid(&format!("{k}.budget_limit"), "is required".into()))?;
            let period = match self.opt_str(&settings, &k, "time_period")? {
                Some(p) => parse_period(&p).ok_or_else(|| {
                    self.invalid(
                        &format!("{k}.time_period"),
                        format!("{p:?} is not a period like 30s, 10m, 1h, 1d or 1mo"),
                    )
                })?,
                None => Duration::from_secs(86_400),
            };
            out.push(ProviderBudget {
                provider,
                budget_limit,
                period,
            });
        }
        Ok(out)
    }
}

/// A LiteLLM period: `30s`, `10m`, `1h`, `1d`, `1mo` (30 days).
pub fn parse_period(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "mo" => 30 * 86_400,
        _ => return None,
    };
    (n > 0).then(|| Duration::from_secs(n * secs))
}

/// `openai/gpt-4o` → (`openai`, `gpt-4o`); a bare name resolves by its known family.
fn split_provider(model: &str) -> Option<(&str, &str)> {
    if let Some((p, m)) = model.split_once('/') {
        if provider_defaults(p).is_some() && !m.is_empty() {
            return Some((p, m));
        }
    }
    let bare = model;
    if bare.starts_with("gpt-") || bare.starts_with("chatgpt-") || is_o_series(bare) {
        Some(("openai", bare))
    } else if bare.starts_with("claude-") {
        Some(("anthropic", bare))
    } else if bare.starts_with("gemini-") {
        Some(("gemini", bare))
    } else {
        None
    }
}

fn is_o_series(m: &str) -> bool {
    let mut c = m.chars();
    c.next() == Some('o') && c.next().is_some_and(|d| d.is_ascii_digit())
}

/// The protocol and default `api_base` of a LiteLLM provider prefix.
pub fn provider_defaults(provider: &str) -> Option<(Protocol, Option<&'static str>)> {
    Some(match provider {
        "openai" => (Protocol::OpenAi, Some("https://api.openai.com/v1")),
        "deepseek" => (Protocol::OpenAi, Some("https://api.deepseek.com/v1")),
        "openrouter" => (Protocol::OpenAi, Some("https://openrouter.ai/api/v1")),
        "dashscope" => (
            Protocol::OpenAi,
            Some("https://dashscope-intl.aliyuncs.com/compatible-mode/v1"),
        ),
        "mistral" => (Protocol::OpenAi, Some("https://api.mistral.ai/v1")),
        "groq" => (Protocol::OpenAi, Some("https://api.groq.com/openai/v1")),
        "together_ai" => (Protocol::OpenAi, Some("https://api.together.xyz/v1")),
        "xai" => (Protocol::OpenAi, Some("https://api.x.ai/v1")),
        "hosted_vllm" | "openai_compatible" | "custom_openai" => (Protocol::OpenAi, None),
        "azure" => (Protocol::Azure, None),
        "anthropic" => (Protocol::Anthropic, Some("https://api.anthropic.com")),
        "gemini" => (
            Protocol::Gemini,
            Some("https://generativelanguage.googleapis.com"),
        ),
        "ollama" | "ollama_chat" => (Protocol::Ollama, Some("http://localhost:11434")),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SIM_KEY" => Some("sk-sim-123".into()),
            _ => None,
        }
    }

    #[test]
    fn litellm_style_model_list_resolves_env_and_prices() {
        let yaml = r#"
model_list:
  - model_name: fast
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:9000/v1/
      api_key: os.environ/SIM_KEY
      input_cost_per_token: 0.00000015
      output_cost_per_token: 6e-7
      max_retries: 0
    model_info:
      id: fast-1
router_settings:
  routing_strategy: simple-shuffle
  enable_pre_call_checks: true
"#;
        let c = Config::from_yaml(yaml, Some("s.yaml".into()), &env).unwrap();
        let d = &c.deployments[0];
        assert_eq!(d.id, "fast-1");
        assert_eq!(d.api_base, "http://127.0.0.1:9000/v1");
        assert_eq!(d.model, "gpt-4o-mini");
        assert_eq!(d.api_key.as_ref().unwrap().expose(), "sk-sim-123");
        assert_eq!(d.input_cost_per_token, Some(Decimal::new(15, 8)));
        assert_eq!(d.output_cost_per_token, Some(Decimal::new(6, 7)));
        assert!(c
            .ignored_keys
            .contains(&"model_list[0].litellm_params.max_retries".to_string()));
        assert!(c
            .ignored_keys
            .contains(&"router_settings.enable_pre_call_checks".to_string()));
    }

    #[test]
    fn missing_env_var_names_key_and_file() {
        let yaml = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, api_key: os.environ/NOPE}\n";
        let err = Config::from_yaml(yaml, Some("conf.yaml".into()), &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("conf.yaml"), "{err}");
        assert!(
            err.contains("model_list[0].litellm_params.api_key"),
            "{err}"
        );
        assert!(err.contains("NOPE"), "{err}");
    }

    #[test]
    fn bare_unknown_model_is_rejected_with_hint() {
        let yaml = "model_list:\n  - model_name: a\n    litellm_params: {model: llama-3}\n";
        let err = Config::from_yaml(yaml, None, &env).unwrap_err().to_string();
        assert!(err.contains("provider/model"), "{err}");
    }

    #[test]
    fn hosted_vllm_requires_api_base() {
        let yaml =
            "model_list:\n  - model_name: a\n    litellm_params: {model: hosted_vllm/llama}\n";
        let err = Config::from_yaml(yaml, None, &env).unwrap_err().to_string();
        assert!(err.contains("api_base"), "{err}");
    }

    #[test]
    fn provider_budgets_and_periods_parse() {
        let yaml = "router_settings:\n  provider_budget_config:\n    openai: {budget_limit: 2.5, time_period: 1mo}\n";
        let c = Config::from_yaml(yaml, None, &env).unwrap();
        assert_eq!(c.limits.provider_budgets[0].provider, "openai");
        assert_eq!(c.limits.provider_budgets[0].budget_limit, 2.5);
        assert_eq!(
            c.limits.provider_budgets[0].period,
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_period("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_period("1w"), None);
        let bad = "router_settings:\n  provider_budget_config:\n    openai: {budget_limit: 1, time_period: soon}\n";
        let err = Config::from_yaml(bad, None, &env).unwrap_err().to_string();
        assert!(
            err.contains("provider_budget_config.openai.time_period"),
            "{err}"
        );
    }

    #[test]
    fn every_protocol_loads_with_its_own_params() {
        let yaml = r#"
litellm_settings:
  drop_params: true
model_list:
  - model_name: a
    litellm_params: {model: anthropic/claude-sonnet-4-5, api_key: k}
  - model_name: g
    litellm_params: {model: gemini/gemini-2.5-flash, drop_params: false}
  - model_name: o
    litellm_params: {model: ollama_chat/llama3.2}
  - model_name: z
    litellm_params: {model: azure/my-gpt4o, api_base: "https://r.openai.azure.com", api_version: "2024-10-21"}
"#;
        let c = Config::from_yaml(yaml, None, &env).unwrap();
        let p: Vec<Protocol> = c.deployments.iter().map(|d| d.protocol).collect();
        assert_eq!(
            p,
            [
                Protocol::Anthropic,
                Protocol::Gemini,
                Protocol::Ollama,
                Protocol::Azure
            ]
        );
        assert_eq!(c.deployments[0].api_base, "https://api.anthropic.com");
        assert!(c.deployments[0].drop_params, "inherits litellm_settings");
        assert!(!c.deployments[1].drop_params, "deployment overrides");
        assert_eq!(c.deployments[3].api_version.as_deref(), Some("2024-10-21"));
        assert!(c.ignored_keys.is_empty(), "{:?}", c.ignored_keys);
    }

    #[test]
    fn azure_without_api_version_is_rejected() {
        let yaml = "model_list:\n  - model_name: z\n    litellm_params: {model: azure/d, api_base: 'https://r.openai.azure.com'}\n";
        let err = Config::from_yaml(yaml, None, &env).unwrap_err().to_string();
        assert!(err.contains("api_version"), "{err}");
    }

    /// The `config.yaml` of `reference/litellm.md` §7, as LiteLLM's docs write it.
    const LITELLM_DOCS_CONFIG: &str = r#"
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/my-gpt4o-deployment
      api_base: os.environ/AZURE_API_BASE
      api_key: os.environ/AZURE_API_KEY
      api_version: "2024-06-01"
      rpm: 600
      tpm: 100000
      weight: 2
      order: 1
      timeout: 300
      stream_timeout: 30
      max_retries: 0
      cooldown_time: 10
      input_cost_per_token: 0.0000025
      output_cost_per_token: 0.00001
    model_info:
      id: gpt4o-east
      base_model: azure/gpt-4o
      max_input_tokens: 128000
  - model_name: claude-sonnet
    litellm_params:
      model: anthropic/claude-sonnet-4-20250514
      api_key: os.environ/ANTHROPIC_API_KEY

router_settings:
  routing_strategy: simple-shuffle
  num_retries: 2
  retry_after: 0
  timeout: 600
  allowed_fails: 3
  cooldown_time: 5
  retry_policy: {RateLimitErrorRetries: 3, BadRequestErrorRetries: 0}
  allowed_fails_policy: {RateLimitErrorAllowedFails: 100}
  fallbacks: [{"gpt-4o": ["claude-sonnet"]}]
  context_window_fallbacks: [{"gpt-4o": ["claude-sonnet"]}]
  max_fallbacks: 5
  enable_pre_call_checks: true
  optional_pre_call_checks: [enforce_model_rate_limits]
  redis_host: os.environ/REDIS_HOST
  redis_port: os.environ/REDIS_PORT
  redis_password: os.environ/REDIS_PASSWORD

litellm_settings:
  request_timeout: 600
  default_fallbacks: ["claude-sonnet"]
  content_policy_fallbacks: [{"gpt-4o": ["claude-sonnet"]}]
  cache: true
  cache_params: {type: redis, host: os.environ/REDIS_HOST, port: os.environ/REDIS_PORT, password: os.environ/REDIS_PASSWORD}
  callbacks: ["prometheus"]
  max_budget: 1000
  budget_duration: 30d

general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  database_url: os.environ/DATABASE_URL
  proxy_batch_write_at: 60
  database_connection_pool_limit: 10
  use_redis_transaction_buffer: true
  disable_spend_logs: false
  allow_requests_on_db_unavailable: false
"#;

    #[test]
    fn the_litellm_docs_config_loads_unchanged_and_names_what_is_not_acted_on() {
        let env = |name: &str| match name {
            "AZURE_API_BASE" => Some("https://my-resource.openai.azure.com".to_string()),
            "AZURE_API_KEY" | "ANTHROPIC_API_KEY" | "LITELLM_MASTER_KEY" => {
                Some(format!("sk-{name}-0123456789"))
            }
            _ => None,
        };
        let c = Config::from_yaml(LITELLM_DOCS_CONFIG, Some("config.yaml".into()), &env).unwrap();
        assert_eq!(c.groups(), ["claude-sonnet", "gpt-4o"]);
        let azure = &c.deployments[0];
        assert_eq!(
            (azure.id.as_str(), azure.protocol, azure.rpm, azure.order),
            ("gpt4o-east", Protocol::Azure, Some(600), 1)
        );
        assert_eq!(azure.cooldown_time, Some(Duration::from_secs(10)));
        assert_eq!(c.router.fallbacks["gpt-4o"], ["claude-sonnet"]);
        assert_eq!(
            c.router.content_policy_fallbacks["gpt-4o"],
            ["claude-sonnet"]
        );
        assert_eq!(c.router.default_fallbacks, ["claude-sonnet"]);
        assert_eq!(
            c.router.retries_for(ErrorClass::RateLimit, c.num_retries),
            3
        );
        assert_eq!(c.router.retries_for(ErrorClass::Server, c.num_retries), 2);
        for key in [
            "router_settings.allowed_fails_policy",
            "router_settings.redis_host",
            "litellm_settings.cache",
            "litellm_settings.max_budget",
            "general_settings.database_url",
            "model_list[0].litellm_params.max_retries",
            "model_list[0].model_info.max_input_tokens",
        ] {
            assert!(
                c.ignored_keys.iter().any(|k| k == key),
                "{key} missing from {:?}",
                c.ignored_keys
            );
        }
        let text = c.describe();
        assert!(
            text.contains("gpt4o-east = azure/my-gpt4o-deployment"),
            "{text}"
        );
        assert!(
            !text.contains("sk-AZURE_API_KEY-0123456789"),
            "secrets are masked: {text}"
        );
    }

    #[test]
    fn a_fallback_to_an_unknown_group_names_the_key() {
        let yaml = "model_list:\n  - {model_name: a, litellm_params: {model: openai/x}}\nrouter_settings:\n  fallbacks: [{a: [nope]}]\n";
        let err = Config::from_yaml(yaml, Some("s.yaml".into()), &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("router_settings.fallbacks") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn unknown_sluice_key_is_an_error() {
        let yaml = "sluice:\n  natsurl: x\n";
        assert!(Config::from_yaml(yaml, None, &env).is_err());
    }
}
