//! The response cache (LiteLLM's `litellm_settings.cache` with `cache_params`), shared by
//! every worker in Redis.
//!
//! - **Key**: SHA-256 over everything that changes the answer: the kind (chat or one
//!   embeddings input), the model group (every deployment of a group shares entries, as
//!   in LiteLLM) and the request with its model, stream settings and cache controls left
//!   out; stored as `{namespace}:{hex}` (the namespace defaults to `{prefix}:cache`).
//! - **Entries**: a chat answer is stored whole with its usage and cost; embeddings are
//!   stored per input (vector, tokens, cost share), so a request whose inputs were partly
//!   seen sends only the others upstream. Entries larger than `max_entry_bytes` are not
//!   stored; failed calls and empty answers never are.
//! - **Per request** (the body's `cache` object, as LiteLLM reads it): `no-cache: true`
//!   skips the lookup, `no-store: true` skips the write, `ttl` (seconds) sets this entry's
//!   life, `s-maxage` (seconds) takes only entries stored less than that long ago (an
//!   older one is a miss, and the fresh answer replaces it), `namespace` its prefix; with
//!   `mode: default_off`, only `use-cache: true` caches. Each entry records when it was
//!   stored for `s-maxage`.
//! - Lookups are one `MGET` before admission. The write is handed to a background task as
//!   soon as the call succeeds (`job/cached.rs`, `after_call`), before the job's result is
//!   recorded; the job never waits for it. Redis trouble is a miss, never a failed job.
//!
//! With the cache off nothing here runs: the pipeline only takes the `cache` object out
//! of the request so no provider sees it.

use std::time::Duration;

use deadpool_redis::redis;
use deadpool_redis::Pool;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sluice_core::config::CacheSettings;
use sluice_schemas::embeddings::{EmbeddingsRequest, InputItem};
use sluice_schemas::job::JobResult;
use sluice_schemas::openai::{ChatRequest, Usage};

/// The cache, when `litellm_settings.cache` is on.
pub struct Cache {
    pool: Pool,
    settings: CacheSettings,
    /// `{prefix}:cache`: the namespace when neither config nor request names one.
    default_namespace: String,
}

/// What one request asks of the cache (its `cache` object).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Controls {
    pub no_cache: bool,
    pub no_store: bool,
    pub use_cache: bool,
    pub ttl: Option<Duration>,
    /// `s-maxage`: the oldest entry this request takes.
    pub max_age: Option<Duration>,
    pub namespace: Option<String>,
}

impl Controls {
    /// Takes the `cache` object out of a request's extra fields (no provider takes it).
    pub fn take(extra: &mut Map<String, Value>) -> Controls {
        let Some(Value::Object(c)) = extra.remove("cache") else {
            return Controls::default();
        };
        let flag = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
        let secs = |k: &str| {
            c.get(k)
                .and_then(Value::as_f64)
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(Duration::from_secs_f64)
        };
        Controls {
            no_cache: flag("no-cache"),
            no_store: flag("no-store"),
            use_cache: flag("use-cache"),
            ttl: secs("ttl").filter(|t| !t.is_zero()),
            max_age: secs("s-maxage"),
            namespace: c
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        }
    }
}

/// A cached chat answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatEntry {
    pub result: JobResult,
    pub usage: Option<Usage>,
    /// What the call cost (`None`: unpriced).
    pub cost: Option<f64>,
    /// When it was stored (Unix ms; 0 for entries written before this field).
    #[serde(default)]
    pub stored_at_ms: i64,
}

/// One cached embedding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VectorEntry {
    pub vector: Vec<f32>,
    pub tokens: u64,
    pub cost: Option<f64>,
    /// When it was stored (Unix ms; 0 for entries written before this field).
    #[serde(default)]
    pub stored_at_ms: i64,
}

/// Unix milliseconds now, for [`ChatEntry::stored_at_ms`] and [`VectorEntry::stored_at_ms`].
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether the cache serves this request, and the key prefix it uses.
pub struct Plan {
    pub lookup: bool,
    pub store: bool,
    pub ttl: Duration,
    /// `s-maxage`: entries stored longer ago than this are misses.
    pub max_age: Option<Duration>,
    namespace: String,
}

impl Plan {
    /// Whether an entry stored at `stored_at_ms` is young enough for this request.
    pub fn fresh(&self, stored_at_ms: i64) -> bool {
        match self.max_age {
            None => true,
            Some(max) => {
                let age = now_ms().saturating_sub(stored_at_ms);
                u128::try_from(age).is_ok_and(|age| age < max.as_millis())
            }
        }
    }
}

impl Cache {
    pub fn new(pool: Pool, settings: CacheSettings, prefix: &str) -> Cache {
        Cache {
            pool,
            settings,
            default_namespace: format!("{prefix}:cache"),
        }
    }

    pub fn max_entry_bytes(&self) -> usize {
        self.settings.max_entry_bytes
    }

    /// What the cache does for a request with `controls`, of a kind it caches (`chat` or
    /// embeddings); `None` when it does nothing.
    pub fn plan(&self, controls: &Controls, chat: bool) -> Option<Plan> {
        let kind_on = if chat {
            self.settings.chat
        } else {
            self.settings.embeddings
        };
        if !kind_on || (self.settings.default_off && !controls.use_cache) {
            return None;
        }
        let plan = Plan {
            lookup: !controls.no_cache,
            store: !controls.no_store,
            ttl: controls.ttl.unwrap_or(self.settings.ttl),
            max_age: controls.max_age,
            namespace: controls
                .namespace
                .clone()
                .or_else(|| self.settings.namespace.clone())
                .unwrap_or_else(|| self.default_namespace.clone()),
        };
        (plan.lookup || plan.store).then_some(plan)
    }

    /// The key of a chat request of `group`.
    pub fn chat_key(plan: &Plan, group: &str, request: &ChatRequest) -> String {
        let mut r = request.clone();
        r.model = String::new();
        r.stream = None;
        r.stream_options = None;
        let body = serde_json::to_string(&r).unwrap_or_default();
        key(plan, &["chat", group, &body])
    }

    /// The key of each input of an embeddings request of `group`.
    pub fn embedding_keys(plan: &Plan, group: &str, request: &EmbeddingsRequest) -> Vec<String> {
        let params = serde_json::json!({
            "dimensions": request.dimensions,
            "user": request.user,
            "extra": request.extra,
        })
        .to_string();
        request
            .input
            .items()
            .into_iter()
            .map(|item| {
                let input = match item {
                    InputItem::Text(t) => serde_json::to_string(t),
                    InputItem::Tokens(t) => serde_json::to_string(t),
                }
                .unwrap_or_default();
                key(plan, &["embedding", group, &params, &input])
            })
            .collect()
    }

    /// The entries stored under `keys` (a miss, also when Redis fails, is `None`).
    pub async fn get<T: for<'de> Deserialize<'de>>(&self, keys: &[String]) -> Vec<Option<T>> {
        let misses = || keys.iter().map(|_| None).collect();
        if keys.is_empty() {
            return Vec::new();
        }
        let mut conn = match Box::pin(self.pool.get()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "response cache unavailable; treating as a miss");
                return misses();
            }
        };
        let values: Result<Vec<Option<Vec<u8>>>, _> =
            redis::cmd("MGET").arg(keys).query_async(&mut conn).await;
        match values {
            Ok(values) => values
                .into_iter()
                .map(|v| v.and_then(|b| serde_json::from_slice(&b).ok()))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "response cache read failed; treating as a miss");
                misses()
            }
        }
    }

    /// Stores `entries` for `ttl`, skipping any larger than `max_entry_bytes`; runs in the
    /// background (a failed write only costs a later miss).
    pub fn put<T: Serialize>(&self, entries: Vec<(String, T)>, ttl: Duration) {
        let max = self.settings.max_entry_bytes;
        let mut pipe = redis::pipe();
        let mut n = 0;
        for (key, entry) in entries {
            match serde_json::to_vec(&entry) {
                Ok(bytes) if bytes.len() <= max => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(bytes)
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64)
                        .ignore();
                    n += 1;
                }
                Ok(bytes) => {
                    tracing::debug!(bytes = bytes.len(), max, "response too large to cache");
                    crate::metrics::cache("too_large");
                }
                Err(_) => {}
            }
        }
        if n == 0 {
            return;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let done = async {
                let mut conn = Box::pin(pool.get()).await.map_err(|e| e.to_string())?;
                pipe.query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = Box::pin(done).await {
                tracing::warn!(error = %e, "response cache write failed");
            }
        });
    }
}

/// `{namespace}:{sha256 hex of the parts}`.
fn key(plan: &Plan, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("{}:{}", plan.namespace, hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_schemas::openai::Message;

    fn plan() -> Plan {
        Plan {
            lookup: true,
            store: true,
            ttl: Duration::from_secs(1),
            max_age: None,
            namespace: "ns".into(),
        }
    }

    #[test]
    fn the_key_covers_what_changes_the_answer_and_nothing_else() {
        let mut a = ChatRequest {
            model: "deployment-model".into(),
            messages: vec![Message::user("hi")],
            ..Default::default()
        };
        let k = Cache::chat_key(&plan(), "g", &a);
        assert!(k.starts_with("ns:"));
        a.stream = Some(true);
        a.model = "other".into();
        assert_eq!(
            Cache::chat_key(&plan(), "g", &a),
            k,
            "stream and model do not count"
        );
        assert_ne!(Cache::chat_key(&plan(), "h", &a), k, "the group does");
        a.temperature = Some(0.5);
        assert_ne!(Cache::chat_key(&plan(), "g", &a), k, "parameters do");
    }

    #[test]
    fn controls_are_read_and_taken_out_of_the_request() {
        let mut extra = Map::new();
        extra.insert(
            "cache".into(),
            serde_json::json!({"no-cache": true, "ttl": 30, "namespace": "team"}),
        );
        let c = Controls::take(&mut extra);
        assert!(extra.is_empty());
        assert!(c.no_cache && !c.no_store);
        assert_eq!(c.ttl, Some(Duration::from_secs(30)));
        assert_eq!(c.namespace.as_deref(), Some("team"));
    }

    #[test]
    fn s_maxage_takes_only_entries_younger_than_it() {
        let mut extra = Map::new();
        extra.insert("cache".into(), serde_json::json!({"s-maxage": 60}));
        let c = Controls::take(&mut extra);
        assert_eq!(c.max_age, Some(Duration::from_secs(60)));
        let mut p = plan();
        p.max_age = c.max_age;
        assert!(p.fresh(now_ms() - 1_000));
        assert!(!p.fresh(now_ms() - 61_000));
        assert!(!p.fresh(0), "an entry of unknown age is not fresh");
        p.max_age = Some(Duration::ZERO);
        assert!(!p.fresh(now_ms()), "s-maxage 0 takes nothing");
        p.max_age = None;
        assert!(p.fresh(0));
    }
}
