//! Who is calling: the master key (`SLUICE_MASTER_KEY`, owner `master`) or a virtual key
//! (owner = the key's id). A virtual key is looked up by its SHA-256 through a short-lived
//! cache ([`KeyCache`]), so a submit does not pay an extra database round trip; a revoked
//! key stops working on this instance at once and on others within [`POSITIVE_TTL`]; a
//! key created on another instance works here within the negative TTL.
//!
//! Presented keys never reach a log line, a metric or an error message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use sluice_core::keys::{hash_key, KeyRecord};
use sluice_core::{Secret, Store};
use sluice_schemas::MASTER_OWNER;

use crate::errors::ApiError;
use crate::AppState;

/// How long a found key is trusted without asking Postgres again.
pub const POSITIVE_TTL: Duration = Duration::from_secs(5);
/// Entries kept at most, for found keys and for unknown ones each. Unknown keys (anyone
/// can present millions) live in their own map, so they never push a good key out.
const MAX_ENTRIES: usize = 10_000;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Recorded as the job's owner; never a secret.
    pub owner: String,
    /// The virtual key, when the caller used one.
    pub key: Option<Arc<KeyRecord>>,
}

impl Caller {
    fn master() -> Caller {
        Caller {
            owner: MASTER_OWNER.into(),
            key: None,
        }
    }

    pub fn is_master(&self) -> bool {
        self.key.is_none() && self.owner == MASTER_OWNER
    }

    /// Whether this caller may see a job owned by `owner`.
    pub fn may_see(&self, owner: &str) -> bool {
        self.is_master() || self.owner == owner
    }

    /// Whether this caller may use model group `group`.
    pub fn may_use_model(&self, group: &str) -> bool {
        self.key.as_ref().is_none_or(|k| k.allows_model(group))
    }

    /// Refuses anyone but the master key.
    pub fn require_master(&self) -> Result<(), ApiError> {
        if self.is_master() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this endpoint needs the master key"))
        }
    }
}

/// The caller as a handler argument: authenticates the request (master key or virtual
/// key) before the handler runs, answering 401 otherwise.
impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        state.caller(&parts.headers).await
    }
}

/// A handler argument for endpoints only the master key may use: 401 for a wrong key,
/// 403 for a virtual key.
pub struct Master;

impl FromRequestParts<Arc<AppState>> for Master {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        state.caller(&parts.headers).await?.require_master()?;
        Ok(Master)
    }
}

/// When a key hash was resolved, and to what.
type Resolved = (Instant, Arc<KeyRecord>);

/// Recently resolved keys, by hash; and recently presented unknown keys, so repeating
/// one costs no database query (`sluice.safety.negative_key_ttl_secs`).
pub struct KeyCache {
    found: Mutex<HashMap<String, Resolved>>,
    unknown: Mutex<HashMap<String, Instant>>,
    negative_ttl: Duration,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new(Duration::from_secs(
            sluice_core::safety::defaults::NEGATIVE_KEY_TTL_SECS,
        ))
    }
}

impl KeyCache {
    pub fn new(negative_ttl: Duration) -> Self {
        KeyCache {
            found: Mutex::default(),
            unknown: Mutex::default(),
            negative_ttl,
        }
    }

    fn get(&self, hash: &str) -> Option<Option<Arc<KeyRecord>>> {
        {
            let found = self.found.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, record)) = found.get(hash) {
                if at.elapsed() < POSITIVE_TTL {
                    return Some(Some(Arc::clone(record)));
                }
            }
        }
        let unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        let at = unknown.get(hash)?;
        (at.elapsed() < self.negative_ttl).then_some(None)
    }

    fn put(&self, hash: String, record: Option<Arc<KeyRecord>>) {
        match record {
            Some(record) => {
                let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
                if found.len() >= MAX_ENTRIES {
                    found.retain(|_, (at, _)| at.elapsed() < POSITIVE_TTL);
                    if found.len() >= MAX_ENTRIES {
                        found.clear();
                    }
                }
                found.insert(hash, (Instant::now(), record));
            }
            None => {
                let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
                if unknown.len() >= MAX_ENTRIES {
                    let ttl = self.negative_ttl;
                    unknown.retain(|_, at| at.elapsed() < ttl);
                    if unknown.len() >= MAX_ENTRIES {
                        unknown.clear();
                    }
                }
                unknown.insert(hash, Instant::now());
            }
        }
    }

    /// Forgets every cached entry of key `id` (after it is revoked here).
    pub fn forget(&self, id: &str) {
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        found.retain(|_, (_, r)| r.id != id);
    }

    /// Forgets a cached "unknown" for a key just created here.
    pub fn forget_hash(&self, hash: &str) {
        let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        unknown.remove(hash);
    }
}

/// The key presented in `Authorization: Bearer <key>` (or `api-key` / `x-api-key`).
fn presented(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("api-key").and_then(|v| v.to_str().ok()))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// Resolves the caller. Without a configured master key every caller that presents no
/// valid virtual key is the master (the API then serves loopback only, see `serve`).
pub async fn authenticate(
    headers: &HeaderMap,
    master: Option<&Secret>,
    store: &Store,
    cache: &KeyCache,
) -> Result<Caller, ApiError> {
    let key = presented(headers).filter(|k| !k.is_empty());
    if let (Some(key), Some(master)) = (key, master) {
        if master.matches(key) {
            return Ok(Caller::master());
        }
    }
    if let Some(key) = key {
        if let Some(record) = lookup(key, store, cache).await? {
            if record.is_expired(chrono::Utc::now()) {
                return Err(ApiError::unauthorized("this API key has expired"));
            }
            return Ok(Caller {
                owner: record.id.clone(),
                key: Some(record),
            });
        }
    }
    match (master, key) {
        (None, _) => Ok(Caller::master()),
        (Some(_), None) => Err(ApiError::unauthorized(
            "missing API key: send `Authorization: Bearer <key>`",
        )),
        (Some(_), Some(_)) => Err(ApiError::unauthorized("incorrect API key provided")),
    }
}

async fn lookup(
    key: &str,
    store: &Store,
    cache: &KeyCache,
) -> Result<Option<Arc<KeyRecord>>, ApiError> {
    if !key.starts_with(sluice_core::keys::KEY_PREFIX) {
        return Ok(None);
    }
    let hash = hash_key(key);
    if let Some(hit) = cache.get(&hash) {
        return Ok(hit);
    }
    let record = store.api_key_by_hash(&hash).await.map_err(|e| {
        tracing::error!(error = %e, "API key lookup failed");
        ApiError::unavailable("cannot check the API key right now; retry shortly")
    })?;
    let record = record.map(Arc::new);
    cache.put(hash, record.clone());
    Ok(record)
}
