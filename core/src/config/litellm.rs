//! LiteLLM's sections (`model_list`, `router_settings`, `litellm_settings`) turned into
//! typed deployments and router settings. Every group a rule names must exist.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::coerce::{parse_period, Ctx};
use super::keys::{INFO_KEYS, PARAM_KEYS};
use super::providers::{key_env, provider_defaults, split_provider, Protocol};
use super::raw::{RawFile, RawModel};
use super::{defaults, ConfigError, Deployment, ProviderBudget, RouterSettings, RoutingStrategy};
use crate::secret::Secret;
use sluice_schemas::ErrorClass;

/// Settings a deployment inherits unless its `litellm_params` say otherwise.
pub(super) struct DeploymentDefaults {
    pub(super) timeout: f64,
    pub(super) stream_timeout: Option<f64>,
    pub(super) stream_idle_timeout: Option<f64>,
    pub(super) drop_params: bool,
}

impl Ctx<'_> {
    /// The `i`th `model_list` entry as a deployment; keys it does not act on go to
    /// `ignored`.
    pub(super) fn deployment(
        &self,
        i: usize,
        m: &RawModel,
        defaults: &DeploymentDefaults,
        ignored: &mut Vec<String>,
    ) -> Result<Deployment, ConfigError> {
        self.named(i, m)?;
        not_acted_on(i, m, ignored);
        let section = format!("model_list[{i}].litellm_params");
        let info = format!("model_list[{i}].model_info");
        let p = &m.litellm_params;
        let e = self.endpoint(p, &section)?;
        let id = match m.model_info.get("id") {
            Some(v) => self.resolve(&format!("{info}.id"), v)?,
            None => format!("{}/{}", m.model_name, i),
        };
        let secs = |v: f64| Duration::from_secs_f64(v);
        let number = |key: &str| self.opt_u64(p, &section, key);
        let seconds = |key: &str| self.opt_f64(p, &section, key);
        let price = |key: &str| self.opt_decimal(p, &section, key);
        // A key of `litellm_params`, else of `model_info`.
        let price_or_info = |key: &str| self.or_info(m, i, key, Ctx::opt_decimal);
        let number_or_info = |key: &str| self.or_info(m, i, key, Ctx::opt_u64);
        Ok(Deployment {
            id,
            group: m.model_name.clone(),
            api_key: self.api_key(p, &section, &e.provider)?,
            provider: e.provider,
            protocol: e.protocol,
            model: e.model,
            api_base: e.api_base,
            weight: number("weight")?.unwrap_or(1).min(u32::MAX as u64) as u32,
            order: number("order")?.unwrap_or(0).min(u32::MAX as u64) as u32,
            rpm: number("rpm")?,
            tpm: number("tpm")?,
            timeout: secs(seconds("timeout")?.unwrap_or(defaults.timeout)),
            stream_timeout: seconds("stream_timeout")?
                .or(defaults.stream_timeout)
                .map(secs),
            input_cost_per_token: price("input_cost_per_token")?,
            output_cost_per_token: price("output_cost_per_token")?,
            max_parallel_requests: number("max_parallel_requests")?,
            api_version: e.api_version,
            drop_params: self
                .opt_bool(p, &section, "drop_params")?
                .unwrap_or(defaults.drop_params),
            cooldown_time: seconds("cooldown_time")?.map(secs),
            stream_idle_timeout: seconds("stream_idle_timeout")?
                .or(defaults.stream_idle_timeout)
                .map(secs),
            cache_read_input_token_cost: price("cache_read_input_token_cost")?,
            cache_creation_input_token_cost: price("cache_creation_input_token_cost")?,
            output_cost_per_reasoning_token: price("output_cost_per_reasoning_token")?,
            base_model: self.opt_str(&m.model_info, &info, "base_model")?,
            input_cost_per_token_batches: price_or_info("input_cost_per_token_batches")?,
            output_cost_per_token_batches: price_or_info("output_cost_per_token_batches")?,
            tags: self.tags(p, &section)?,
            tag_regex: self.tag_regex(p, &section)?,
            max_input_tokens: self.opt_u64(&m.model_info, &info, "max_input_tokens")?,
            batch_enqueued_tokens: number_or_info("batch_enqueued_tokens")?.filter(|n| *n > 0),
            chat_url: Default::default(),
        })
    }

    /// `model_name` must not be empty.
    fn named(&self, i: usize, m: &RawModel) -> Result<(), ConfigError> {
        if m.model_name.trim().is_empty() {
            return Err(self.invalid(
                &format!("model_list[{i}].model_name"),
                "must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// `key` of the `i`th entry's `litellm_params`, else of its `model_info`, read with
    /// `read`.
    fn or_info<T>(
        &self,
        m: &RawModel,
        i: usize,
        key: &str,
        read: impl Fn(&Self, &BTreeMap<String, Value>, &str, &str) -> Result<Option<T>, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        let section = format!("model_list[{i}].litellm_params");
        match read(self, &m.litellm_params, &section, key)? {
            Some(v) => Ok(Some(v)),
            None => read(
                self,
                &m.model_info,
                &format!("model_list[{i}].model_info"),
                key,
            ),
        }
    }

    /// Where a deployment's calls go: its provider (from `model`: `provider/model`), the
    /// protocol and `api_base` (the provider's default unless given), and Azure's
    /// `api_version`.
    fn endpoint(
        &self,
        p: &BTreeMap<String, Value>,
        section: &str,
    ) -> Result<Endpoint, ConfigError> {
        let full_model = self.opt_str(p, section, "model")?.ok_or_else(|| {
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
        let api_base = match self.opt_str(p, section, "api_base")? {
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
        let api_version = self.opt_str(p, section, "api_version")?;
        if protocol == Protocol::Azure && api_version.is_none() && !api_base.contains("/openai/v1")
        {
            return Err(self.invalid(
                &format!("{section}.api_version"),
                "is required for azure/ deployments (e.g. 2024-10-21), unless api_base is the v1 endpoint (…/openai/v1)".into(),
            ));
        }
        Ok(Endpoint {
            provider: provider.to_string(),
            protocol,
            model: model.to_string(),
            api_base,
            api_version,
        })
    }

    /// `api_key`, or the provider's usual environment variable, as LiteLLM reads it.
    fn api_key(
        &self,
        p: &BTreeMap<String, Value>,
        section: &str,
        provider: &str,
    ) -> Result<Option<Secret>, ConfigError> {
        Ok(match self.opt_str(p, section, "api_key")? {
            Some(k) => Some(Secret::new(k)),
            None => key_env(provider)
                .and_then(|name| self.env.var(name))
                .map(Secret::new),
        })
    }
}

/// Where a deployment's calls go.
struct Endpoint {
    provider: String,
    protocol: Protocol,
    model: String,
    api_base: String,
    api_version: Option<String>,
}

/// Names the keys of the `i`th `model_list` entry that Sluice does not act on.
fn not_acted_on(i: usize, m: &RawModel, ignored: &mut Vec<String>) {
    for key in m.litellm_params.keys() {
        if !PARAM_KEYS.contains(&key.as_str()) {
            ignored.push(format!("model_list[{i}].litellm_params.{key}"));
        }
    }
    for key in m.model_info.keys() {
        if !INFO_KEYS.contains(&key.as_str()) {
            ignored.push(format!("model_list[{i}].model_info.{key}"));
        }
    }
}

impl Ctx<'_> {
    /// `tags: [a, b]` (a single string is one tag).
    fn tags(&self, p: &BTreeMap<String, Value>, section: &str) -> Result<Vec<String>, ConfigError> {
        let key = format!("{section}.tags");
        match p.get("tags") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| self.resolve(&format!("{key}[{i}]"), v))
                .collect(),
            Some(v) => Ok(vec![self.resolve(&key, v)?]),
        }
    }

    /// `tag_regex: ["^User-Agent: claude-code/"]` (a single string is one pattern), each
    /// compiled once here; a pattern that does not compile is a config error naming it.
    fn tag_regex(
        &self,
        p: &BTreeMap<String, Value>,
        section: &str,
    ) -> Result<Vec<regex::Regex>, ConfigError> {
        let key = format!("{section}.tag_regex");
        let patterns: Vec<(String, &Value)> = match p.get("tag_regex") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{key}[{i}]"), v))
                .collect(),
            Some(v) => vec![(key, v)],
        };
        patterns
            .into_iter()
            .map(|(key, v)| {
                let pattern = self.resolve(&key, v)?;
                regex::Regex::new(&pattern)
                    .map_err(|e| self.invalid(&key, format!("is not a valid regex: {e}")))
            })
            .collect()
    }

    /// A LiteLLM policy map (`{RateLimitErrorRetries: 3, ...}` or
    /// `{RateLimitErrorAllowedFails: 100, ...}`): the count per error class. `suffix` is
    /// `Retries` or `AllowedFails`.
    fn class_policy(
        &self,
        key: &str,
        v: &Value,
        suffix: &str,
    ) -> Result<Vec<(ErrorClass, u32)>, ConfigError> {
        let map: BTreeMap<String, u32> = serde_yaml_ng::from_value(v.clone()).map_err(|e| {
            self.invalid(key, format!("expected {{ErrorName{suffix}: count}}: {e}"))
        })?;
        let mut out = Vec::new();
        for (name, n) in map {
            let classes: &[ErrorClass] = match name.strip_suffix(suffix) {
                Some("RateLimitError") => &[ErrorClass::RateLimit],
                Some("TimeoutError") => &[ErrorClass::Timeout],
                Some("InternalServerError") => &[
                    ErrorClass::Server,
                    ErrorClass::Overloaded,
                    ErrorClass::Connection,
                    ErrorClass::TruncatedStream,
                ],
                Some("ServiceUnavailableError") => &[ErrorClass::Overloaded],
                Some("BadGatewayError") => &[ErrorClass::Server],
                Some("AuthenticationError") => &[ErrorClass::Auth],
                Some("BadRequestError") => &[ErrorClass::BadRequest],
                Some("NotFoundError") => &[ErrorClass::NotFound],
                Some("ContentPolicyViolationError") => &[ErrorClass::ContentPolicy],
                _ => {
                    return Err(self.invalid(
                        &format!("{key}.{name}"),
                        format!("unknown policy key; expected e.g. RateLimitError{suffix}"),
                    ))
                }
            };
            for c in classes {
                // A specific name (ServiceUnavailable, BadGateway) wins over the broad
                // InternalServerError one, whatever their order in the file.
                let specific = !name.starts_with("InternalServerError");
                match out.iter_mut().find(|(have, _)| have == c) {
                    Some(entry) if specific => entry.1 = n.min(100),
                    Some(_) => {}
                    None => out.push((*c, n.min(100))),
                }
            }
        }
        Ok(out)
    }

    /// Routing, retry, cooldown and fallback rules; `router_settings` wins over
    /// `litellm_settings`. Every group a rule names must exist.
    pub(super) fn router_settings(
        &self,
        raw: &RawFile,
        deployments: &[Deployment],
    ) -> Result<RouterSettings, ConfigError> {
        let r = &raw.router_settings;
        let strategy = self.strategy(r)?;
        let groups: Vec<&str> = deployments.iter().map(|d| d.group.as_str()).collect();
        let aliases = self.aliases(r)?;
        let known = |g: &str| groups.contains(&g) || aliases.contains_key(g);
        let fallbacks = self.fallback_map(raw, "fallbacks", &known)?;
        let context_window_fallbacks =
            self.fallback_map(raw, "context_window_fallbacks", &known)?;
        let content_policy_fallbacks =
            self.fallback_map(raw, "content_policy_fallbacks", &known)?;
        let default_fallbacks = self.default_fallbacks(raw, &known)?;
        let retry_policy = self.policy(r, "retry_policy", "Retries")?;
        let group_retry_policy = self.group_retry_policy(r, &known)?;
        let allowed_fails_policy = self.policy(r, "allowed_fails_policy", "AllowedFails")?;
        let bool_or = |key: &str, default: bool| {
            Ok::<_, ConfigError>(self.opt_bool(r, "router_settings", key)?.unwrap_or(default))
        };
        let secs_or = |key: &str, default: f64| {
            Ok::<_, ConfigError>(Duration::from_secs_f64(
                self.opt_f64(r, "router_settings", key)?.unwrap_or(default),
            ))
        };
        Ok(RouterSettings {
            strategy,
            allowed_fails: self
                .opt_u64(r, "router_settings", "allowed_fails")?
                .map(|n| n.min(u32::MAX as u64) as u32)
                .unwrap_or(defaults::ALLOWED_FAILS),
            cooldown_time: secs_or("cooldown_time", defaults::COOLDOWN_SECS)?,
            disable_cooldowns: bool_or("disable_cooldowns", false)?,
            retry_policy,
            retry_after: secs_or("retry_after", 0.0)?,
            fallbacks,
            context_window_fallbacks,
            content_policy_fallbacks,
            default_fallbacks,
            max_fallbacks: self
                .opt_u64(r, "router_settings", "max_fallbacks")?
                .map(|n| n.min(100) as u32)
                .unwrap_or(defaults::MAX_FALLBACKS),
            aliases,
            pre_call_checks: bool_or("enable_pre_call_checks", false)?,
            tag_filtering: bool_or("enable_tag_filtering", false)?,
            tag_match_any: bool_or("tag_filtering_match_any", true)?,
            group_retry_policy,
            allowed_fails_policy,
            wildcard_groups: wildcard_groups(&groups),
        })
    }

    /// `router_settings.<key>`, a policy map ([`Ctx::class_policy`]); empty when unset.
    fn policy(
        &self,
        r: &BTreeMap<String, Value>,
        key: &str,
        suffix: &str,
    ) -> Result<Vec<(ErrorClass, u32)>, ConfigError> {
        match r.get(key).filter(|v| !v.is_null()) {
            Some(v) => self.class_policy(&format!("router_settings.{key}"), v, suffix),
            None => Ok(Vec::new()),
        }
    }

    /// `routing_strategy`, LiteLLM's names.
    fn strategy(&self, r: &BTreeMap<String, Value>) -> Result<RoutingStrategy, ConfigError> {
        Ok(match self.opt_str(r, "router_settings", "routing_strategy")?.as_deref() {
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
        })
    }

    /// `model_group_alias: {alias: group}` (LiteLLM also accepts `{model: group, hidden}`).
    fn aliases(
        &self,
        r: &BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut aliases = BTreeMap::new();
        let Some(v) = r.get("model_group_alias").filter(|v| !v.is_null()) else {
            return Ok(aliases);
        };
        let map: BTreeMap<String, Value> = serde_yaml_ng::from_value(v.clone())
            .map_err(|e| self.invalid("router_settings.model_group_alias", e.to_string()))?;
        for (alias, target) in map {
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
        Ok(aliases)
    }

    /// A fallback rule (`fallbacks`, `context_window_fallbacks`, ...): group → the groups
    /// to try next, from `router_settings`, else `litellm_settings`.
    fn fallback_map(
        &self,
        raw: &RawFile,
        key: &str,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
        let (section, v) = match (raw.router_settings.get(key), raw.litellm_settings.get(key)) {
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
                    return Err(self.invalid(&name, format!("model group {t:?} does not exist")));
                }
            }
            out.insert(group, targets);
        }
        Ok(out)
    }

    /// `default_fallbacks`: the groups any group falls back to.
    fn default_fallbacks(
        &self,
        raw: &RawFile,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, ConfigError> {
        let (r, l) = (&raw.router_settings, &raw.litellm_settings);
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
        Ok(default_fallbacks)
    }

    /// `model_group_retry_policy: {group: {...Retries: n}}`.
    fn group_retry_policy(
        &self,
        r: &BTreeMap<String, Value>,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, Vec<(ErrorClass, u32)>>, ConfigError> {
        let mut out = BTreeMap::new();
        let Some(v) = r.get("model_group_retry_policy").filter(|v| !v.is_null()) else {
            return Ok(out);
        };
        let key = "router_settings.model_group_retry_policy";
        let map: BTreeMap<String, Value> = serde_yaml_ng::from_value(v.clone()).map_err(|e| {
            self.invalid(key, format!("expected {{group: {{...Retries: n}}}}: {e}"))
        })?;
        for (group, policy) in map {
            if !known(&group) {
                return Err(self.invalid(key, format!("model group {group:?} does not exist")));
            }
            let policy = self.class_policy(&format!("{key}.{group}"), &policy, "Retries")?;
            out.insert(group, policy);
        }
        Ok(out)
    }
}

/// The groups with a `*` (wildcard groups), sorted, each once.
fn wildcard_groups(groups: &[&str]) -> Vec<String> {
    let mut w: Vec<String> = groups
        .iter()
        .filter(|g| g.contains('*'))
        .map(|g| g.to_string())
        .collect();
    w.sort_unstable();
    w.dedup();
    w
}

impl Ctx<'_> {
    /// `provider_budget_config: {openai: {budget_limit: 100, time_period: 1d}}`
    pub(super) fn provider_budgets(
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
