//! The response cache's settings: `litellm_settings.cache: true` and `cache_params`, as
//! LiteLLM reads them (the cache itself is `worker/src/cache.rs`).
//!
//! Acted on: `type` (`redis` only: every worker shares the entries), `host`, `port`,
//! `password` (another Redis than Sluice's own; by default Sluice's `redis_url`),
//! `namespace`, `ttl` (else `default_in_redis_ttl`, else one day), `supported_call_types`
//! (`completion`/`acompletion` for chat, `embedding`/`aembedding` for embeddings; `[]`
//! caches nothing), `mode: default_off` (only requests that send `cache: {"use-cache":
//! true}`), and Sluice's own `max_entry_bytes` (the size cap of one entry, default 1 MiB).
//! Other `cache_params` keys are named in the start-up warning.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::coerce::Ctx;
use super::ConfigError;

/// Where the cache's keys live in the file.
const SECTION: &str = "litellm_settings.cache_params";
/// Entries live this long unless `ttl` (or the request) says otherwise.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The largest entry stored, unless `max_entry_bytes` says otherwise.
const DEFAULT_MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// `cache_params` keys acted on.
const KEYS: &[&str] = &[
    "type",
    "host",
    "port",
    "password",
    "namespace",
    "ttl",
    "default_in_redis_ttl",
    "supported_call_types",
    "mode",
    "max_entry_bytes",
];

/// The response cache, when `litellm_settings.cache` is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Another Redis than Sluice's (`cache_params.host`/`port`/`password`); `None`: the
    /// shared `redis_url`.
    pub redis_url: Option<String>,
    /// Prefix of every key (`{namespace}:…`).
    pub namespace: Option<String>,
    pub ttl: Duration,
    /// Chat completions are cached.
    pub chat: bool,
    /// Embeddings are cached (per input).
    pub embeddings: bool,
    /// `mode: default_off`: only requests that ask (`cache: {"use-cache": true}`).
    pub default_off: bool,
    pub max_entry_bytes: usize,
}

impl Ctx<'_> {
    /// The cache settings of `litellm_settings`; `None` when the cache is off. Keys of
    /// `cache_params` not acted on are added to `ignored`.
    pub(super) fn cache_settings(
        &self,
        litellm: &BTreeMap<String, Value>,
        ignored: &mut Vec<String>,
    ) -> Result<Option<CacheSettings>, ConfigError> {
        if !self
            .opt_bool(litellm, "litellm_settings", "cache")?
            .unwrap_or(false)
        {
            return Ok(None);
        }
        let params = self.cache_params(litellm)?;
        for key in params.keys().filter(|k| !KEYS.contains(&k.as_str())) {
            ignored.push(format!("{SECTION}.{key}"));
        }
        if let Some(t) = self.opt_str(&params, SECTION, "type")? {
            if t != "redis" {
                return Err(self.invalid(
                    &format!("{SECTION}.type"),
                    format!("{t:?} is not supported: Sluice's workers share one cache in Redis (type: redis)"),
                ));
            }
        }
        let redis_url = self.cache_redis_url(&params)?;
        let ttl = self
            .opt_f64(&params, SECTION, "ttl")?
            .or(self.opt_f64(&params, SECTION, "default_in_redis_ttl")?)
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_TTL);
        let (chat, embeddings) = self.call_types(&params)?;
        let default_off = match self.opt_str(&params, SECTION, "mode")?.as_deref() {
            None | Some("default_on") => false,
            Some("default_off") => true,
            Some(m) => {
                return Err(self.invalid(
                    &format!("{SECTION}.mode"),
                    format!("{m:?} is not default_on or default_off"),
                ))
            }
        };
        let max_entry_bytes = self
            .opt_u64(&params, SECTION, "max_entry_bytes")?
            .map_or(DEFAULT_MAX_ENTRY_BYTES, |n| n as usize);
        Ok(Some(CacheSettings {
            redis_url,
            namespace: self
                .opt_str(&params, SECTION, "namespace")?
                .filter(|n| !n.is_empty()),
            ttl,
            chat,
            embeddings,
            default_off,
            max_entry_bytes,
        }))
    }

    /// `cache_params`, as a map (none: empty).
    fn cache_params(
        &self,
        litellm: &BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, Value>, ConfigError> {
        match litellm.get("cache_params") {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Mapping(m)) => Ok(m
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
                .collect()),
            Some(_) => Err(self.invalid(SECTION, "expected a mapping".into())),
        }
    }

    /// The cache's own Redis, from `host`, `port` and `password`; `None`: Sluice's Redis.
    /// `os.environ/REDIS_HOST` and friends, as LiteLLM's docs write them, may be unset:
    /// then Sluice's own Redis serves.
    fn cache_redis_url(
        &self,
        params: &BTreeMap<String, Value>,
    ) -> Result<Option<String>, ConfigError> {
        let set = |key: &str| match params.get(key) {
            Some(Value::String(s)) => s
                .strip_prefix("os.environ/")
                .is_none_or(|name| self.env.var(name).is_some()),
            _ => true,
        };
        let host = match set("host") {
            true => self.opt_str(params, SECTION, "host")?,
            false => None,
        };
        let Some(host) = host else {
            return Ok(None);
        };
        let port = match set("port") {
            true => self.opt_u64(params, SECTION, "port")?,
            false => None,
        };
        let password = match set("password") {
            true => self.opt_str(params, SECTION, "password")?,
            false => None,
        };
        let port = port.unwrap_or(6379);
        Ok(Some(match password {
            Some(p) => format!("redis://:{p}@{host}:{port}"),
            None => format!("redis://{host}:{port}"),
        }))
    }

    /// `supported_call_types`: whether chat and embeddings calls are cached (unset: both).
    fn call_types(&self, params: &BTreeMap<String, Value>) -> Result<(bool, bool), ConfigError> {
        let not_a_list = || {
            self.invalid(
                &format!("{SECTION}.supported_call_types"),
                "expected a list of call type names".into(),
            )
        };
        let types = match params.get("supported_call_types") {
            None | Some(Value::Null) => return Ok((true, true)),
            Some(Value::Sequence(types)) => types,
            Some(_) => return Err(not_a_list()),
        };
        let mut on = (false, false);
        for t in types {
            match t.as_str() {
                Some("completion" | "acompletion") => on.0 = true,
                Some("embedding" | "aembedding") => on.1 = true,
                // Call types Sluice does not run (transcription, text completion): nothing
                // of theirs to cache.
                Some(_) => {}
                None => return Err(not_a_list()),
            }
        }
        Ok(on)
    }
}
