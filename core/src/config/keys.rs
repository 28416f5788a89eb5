//! The keys Sluice acts on, per section. Everything else found in the file is collected
//! into [`Config::ignored_keys`](super::Config::ignored_keys) and named in one start-up
//! warning, never silently ignored.

/// `router_settings` keys acted on so far.
pub(super) const ROUTER_KEYS: &[&str] = &[
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
    "enable_pre_call_checks",
    "enable_tag_filtering",
    "tag_filtering_match_any",
    "model_group_retry_policy",
    "allowed_fails_policy",
];
pub(super) const LITELLM_KEYS: &[&str] = &[
    "request_timeout",
    "drop_params",
    "num_retries",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "default_fallbacks",
    // Their values are checked one by one in `callbacks.rs`.
    "success_callback",
    "failure_callback",
    "callbacks",
    "cache",
    "cache_params",
    "turn_off_message_logging",
];
pub(super) const GENERAL_KEYS: &[&str] = &["master_key"];
/// `litellm_params` keys acted on so far.
pub(super) const PARAM_KEYS: &[&str] = &[
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
    "input_cost_per_token_batches",
    "output_cost_per_token_batches",
    "batch_enqueued_tokens",
    "tags",
    "tag_regex",
];
pub(super) const INFO_KEYS: &[&str] = &[
    "id",
    "base_model",
    "max_input_tokens",
    "input_cost_per_token_batches",
    "output_cost_per_token_batches",
    "batch_enqueued_tokens",
];

/// Top-level sections and section keys of `raw` that Sluice does not act on, as
/// `section.key` paths (the per-deployment ones are added in `litellm.rs`).
pub(super) fn not_acted_on(raw: &super::raw::RawFile) -> Vec<String> {
    let mut ignored: Vec<String> = raw.other.keys().cloned().collect();
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
    ignored
}
