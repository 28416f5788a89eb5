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
    pub(super) fn deployment(
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
            // No `api_key`: the provider's usual environment variable, as LiteLLM reads it.
            api_key: match self.opt_str(p, &section, "api_key")? {
                Some(k) => Some(Secret::new(k)),
                None => key_env(provider)
                    .and_then(|name| self.env.var(name))
                    .map(Secret::new),
            },
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
            input_cost_per_token_batches: match self.opt_decimal(
                p,
                &section,
                "input_cost_per_token_batches",
            )? {
                Some(d) => Some(d),
                None => self.opt_decimal(
                    &m.model_info,
                    &format!("model_list[{i}].model_info"),
                    "input_cost_per_token_batches",
                )?,
            },
            output_cost_per_token_batches: match self.opt_decimal(
                p,
                &section,
                "output_cost_per_token_batches",
            )? {
                Some(d) => Some(d),
                None => self.opt_decimal(
                    &m.model_info,
                    &format!("model_list[{i}].model_info"),
                    "output_cost_per_token_batches",
                )?,
            },
            tags: self.tags(p, &section)?,
            tag_regex: self.tag_regex(p, &section)?,
            max_input_tokens: self.opt_u64(
                &m.model_info,
                &format!("model_list[{i}].model_info"),
                "max_input_tokens",
            )?,
            batch_enqueued_tokens: match self.opt_u64(p, &section, "batch_enqueued_tokens")? {
                Some(n) => Some(n),
                None => self.opt_u64(
                    &m.model_info,
                    &format!("model_list[{i}].model_info"),
                    "batch_enqueued_tokens",
                )?,
            }
            .filter(|n| *n > 0),
        })
    }

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
        let retry_policy = match r.get("retry_policy").filter(|v| !v.is_null()) {
            Some(v) => self.class_policy("router_settings.retry_policy", v, "Retries")?,
            None => Vec::new(),
        };
        let mut group_retry_policy = BTreeMap::new();
        if let Some(v) = r.get("model_group_retry_policy").filter(|v| !v.is_null()) {
            let key = "router_settings.model_group_retry_policy";
            let map: BTreeMap<String, Value> =
                serde_yaml_ng::from_value(v.clone()).map_err(|e| {
                    self.invalid(key, format!("expected {{group: {{...Retries: n}}}}: {e}"))
                })?;
            for (group, policy) in map {
                if !known(&group) {
                    return Err(self.invalid(key, format!("model group {group:?} does not exist")));
                }
                let policy = self.class_policy(&format!("{key}.{group}"), &policy, "Retries")?;
                group_retry_policy.insert(group, policy);
            }
        }
        let allowed_fails_policy = match r.get("allowed_fails_policy").filter(|v| !v.is_null()) {
            Some(v) => {
                self.class_policy("router_settings.allowed_fails_policy", v, "AllowedFails")?
            }
            None => Vec::new(),
        };
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
            pre_call_checks: self
                .opt_bool(r, "router_settings", "enable_pre_call_checks")?
                .unwrap_or(false),
            tag_filtering: self
                .opt_bool(r, "router_settings", "enable_tag_filtering")?
                .unwrap_or(false),
            tag_match_any: self
                .opt_bool(r, "router_settings", "tag_filtering_match_any")?
                .unwrap_or(true),
            group_retry_policy,
            allowed_fails_policy,
            wildcard_groups: {
                let mut w: Vec<String> = groups
                    .iter()
                    .filter(|g| g.contains('*'))
                    .map(|g| g.to_string())
                    .collect();
                w.sort_unstable();
                w.dedup();
                w
            },
        })
    }

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
