//! Config loading: LiteLLM files as written, errors that name the key and the file.

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
    assert!(c.router.pre_call_checks);
    assert!(!c
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
    let yaml = "model_list:\n  - model_name: a\n    litellm_params: {model: hosted_vllm/llama}\n";
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

/// A `config.yaml` as LiteLLM's documentation writes it.
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
    assert_eq!(c.router.allowed_fails_for(ErrorClass::RateLimit), Some(100));
    assert_eq!(c.router.allowed_fails_for(ErrorClass::Server), None);
    assert_eq!(azure.max_input_tokens, Some(128_000));
    // The cache is on; its Redis host is an unset variable here, so Sluice's Redis serves.
    let cache = c.cache.as_ref().unwrap();
    assert_eq!(
        (cache.redis_url.as_deref(), cache.chat, cache.embeddings),
        (None, true, true)
    );
    for acted_on in [
        "router_settings.allowed_fails_policy",
        "router_settings.enable_pre_call_checks",
        "litellm_settings.cache",
        "litellm_settings.cache_params",
        "model_list[0].model_info.max_input_tokens",
    ] {
        assert!(!c.ignored_keys.iter().any(|k| k == acted_on), "{acted_on}");
    }
    for key in [
        "router_settings.redis_host",
        "litellm_settings.max_budget",
        "general_settings.database_url",
        "model_list[0].litellm_params.max_retries",
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

#[test]
fn tags_wildcards_policies_and_env_keys_resolve() {
    let yaml = r#"
model_list:
  - model_name: chat
    litellm_params: {model: openai/gpt-4o, tags: [eu, default]}
    model_info: {id: eu, max_input_tokens: 8000}
  - model_name: chat
    litellm_params: {model: anthropic/claude-sonnet-4-5, tags: us, tag_regex: ["^User-Agent: claude-code/"]}
    model_info: {id: us}
  - model_name: "openai/*"
    litellm_params: {model: "openai/*"}
  - model_name: "*"
    litellm_params: {model: "deepseek/*"}
router_settings:
  enable_tag_filtering: true
  tag_filtering_match_any: false
  retry_policy: {RateLimitErrorRetries: 1}
  model_group_retry_policy:
    chat: {TimeoutErrorRetries: 4}
  allowed_fails_policy: {TimeoutErrorAllowedFails: 7, InternalServerErrorAllowedFails: 2, ServiceUnavailableErrorAllowedFails: 9}
"#;
    let env = |name: &str| match name {
        "OPENAI_API_KEY" => Some("sk-openai-from-env".to_string()),
        "ANTHROPIC_API_KEY" => Some("sk-ant-from-env".to_string()),
        _ => None,
    };
    let c = Config::from_yaml(yaml, None, &env).unwrap();
    assert!(c.ignored_keys.is_empty(), "{:?}", c.ignored_keys);
    assert_eq!(c.deployments[0].tags, ["eu", "default"]);
    assert_eq!(c.deployments[1].tags, ["us"]);
    assert!(c.deployments[1].tag_regex[0].is_match("User-Agent: claude-code/1.0"));
    assert!(c.deployments[0].tag_regex.is_empty());
    let bad = yaml.replace("^User-Agent: claude-code/", "(unclosed");
    let err = Config::from_yaml(&bad, None, &env).unwrap_err().to_string();
    assert!(
        err.contains("model_list[1].litellm_params.tag_regex[0]"),
        "{err}"
    );
    assert_eq!(c.deployments[0].max_input_tokens, Some(8000));
    assert_eq!(
        c.deployments[0].api_key.as_ref().unwrap().expose(),
        "sk-openai-from-env"
    );
    assert_eq!(
        c.deployments[1].api_key.as_ref().unwrap().expose(),
        "sk-ant-from-env"
    );
    assert!(
        c.deployments[3].api_key.is_none(),
        "DEEPSEEK_API_KEY is not set"
    );
    assert!(c.router.tag_filtering && !c.router.tag_match_any);
    // The group's own policy replaces retry_policy; unnamed classes get num_retries.
    assert_eq!(c.router.retries_in("chat", ErrorClass::Timeout, 2), 4);
    assert_eq!(c.router.retries_in("chat", ErrorClass::RateLimit, 2), 2);
    assert_eq!(c.router.retries_in("openai/*", ErrorClass::RateLimit, 2), 1);
    assert_eq!(c.router.allowed_fails_for(ErrorClass::Timeout), Some(7));
    assert_eq!(c.router.allowed_fails_for(ErrorClass::Server), Some(2));
    assert_eq!(c.router.allowed_fails_for(ErrorClass::Overloaded), Some(9));
    assert_eq!(c.router.allowed_fails_for(ErrorClass::RateLimit), None);
    // Wildcards: exact groups first, then the most specific pattern.
    assert!(c.has_group("openai/gpt-4o-mini") && c.has_group("mistral-large"));
    assert_eq!(c.resolve_group("chat"), "chat");
    assert_eq!(c.resolve_group("openai/o3"), "openai/*");
    assert_eq!(c.resolve_group("something-else"), "*");
    let d = c.deployments[2].for_model(&["o3"]);
    assert_eq!((d.provider.as_str(), d.model.as_str()), ("openai", "o3"));

    let bad = "model_list:\n  - {model_name: a, litellm_params: {model: openai/x}}\nrouter_settings:\n  allowed_fails_policy: {SlowErrorAllowedFails: 1}\n";
    let err = Config::from_yaml(bad, Some("s.yaml".into()), &env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("allowed_fails_policy.SlowErrorAllowedFails"),
        "{err}"
    );
    let bad = "model_list:\n  - {model_name: a, litellm_params: {model: openai/x}}\nrouter_settings:\n  model_group_retry_policy: {nope: {RateLimitErrorRetries: 1}}\n";
    let err = Config::from_yaml(bad, Some("s.yaml".into()), &env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model_group_retry_policy") && err.contains("nope"),
        "{err}"
    );
}
