//! The limits of virtual keys, as the worker needs them for admission.
//!
//! Looked up by the job's owner (a key id) and cached for a short while, so a busy key
//! costs one Postgres read per worker per [`TTL`], not one per job. Jobs of the master
//! key (or with no owner) have no key limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::Store;

use crate::limits::{Kind, Scope};

/// How long a key's limits are reused before they are read again.
pub const TTL: Duration = Duration::from_secs(30);
const MINUTE: Duration = Duration::from_secs(60);
const MAX_CACHED: usize = 10_000;

/// Key id → (when read, its scopes).
type Cache = HashMap<String, (Instant, Option<Arc<Vec<Scope>>>)>;

pub struct KeyLimits {
    store: Store,
    cache: Mutex<Cache>,
}

impl KeyLimits {
    pub fn new(store: Store) -> Self {
        KeyLimits {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The scopes a job of `owner` is admitted against (empty for the master key);
    /// `None` when `owner` is a revoked key, whose jobs must not run.
    pub async fn scopes(
        &self,
        owner: &str,
    ) -> Result<Option<Arc<Vec<Scope>>>, sluice_core::store::StoreError> {
        if sluice_schemas::is_master_owner(owner) {
            return Ok(Some(Arc::default()));
        }
        if let Some((at, scopes)) = self.lock().get(owner) {
            if at.elapsed() < TTL {
                return Ok(scopes.clone());
            }
        }
        let record = self.store.api_key(owner).await?;
        if record.is_none() && self.store.api_key_revoked(owner).await? {
            self.lock()
                .insert(owner.to_string(), (Instant::now(), None));
            return Ok(None);
        }
        let mut scopes = Vec::new();
        if let Some(k) = record {
            let subject = format!("key:{}", k.id);
            if let Some(n) = k.rpm_limit.filter(|n| *n > 0) {
                scopes.push(Scope::new(Kind::Rpm, subject.clone(), n as f64, MINUTE));
            }
            if let Some(n) = k.tpm_limit.filter(|n| *n > 0) {
                scopes.push(Scope::new(Kind::Tpm, subject.clone(), n as f64, MINUTE));
            }
            if let Some(n) = k.max_parallel_requests.filter(|n| *n > 0) {
                scopes.push(Scope::new(
                    Kind::Parallel,
                    subject.clone(),
                    n as f64,
                    MINUTE,
                ));
            }
            // Shared with native batch results (`sluice_core::budgets`).
            scopes.extend(sluice_core::budgets::key_budget(&k).map(Scope::budget));
        }
        let scopes = Arc::new(scopes);
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (at, _)| at.elapsed() < TTL);
        }
        cache.insert(
            owner.to_string(),
            (Instant::now(), Some(Arc::clone(&scopes))),
        );
        Ok(Some(scopes))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}
