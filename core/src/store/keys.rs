//! Virtual keys: creating them, finding one by the key a caller presents, listing and
//! revoking. A key is stored only as its SHA-256 (hex); the clear key exists only in the
//! answer to its creation. Limits (`rpm_limit`, `tpm_limit`, `max_parallel_requests`,
//! `max_budget` + `budget_duration`) are stored and returned here; enforcing them is the
//! admission stage's job, which reads them with [`Store::api_key`].

use chrono::{DateTime, Utc};
use rand::RngCore;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Store, StoreError};
use crate::secret::Secret;

/// Prefix of every virtual key; the master key is configured, never generated.
pub const KEY_PREFIX: &str = "sk-sluice-";

/// The hex SHA-256 of a presented key: what `api_keys.key_hash` holds.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A fresh random key (256 bits) and its id.
pub fn generate() -> (String, Secret) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let id = format!("key_{}", uuid::Uuid::now_v7().simple());
    (
        id,
        Secret::new(format!("{KEY_PREFIX}{}", hex::encode(bytes))),
    )
}

/// What a key may do; set at creation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeySettings {
    /// A label for people; not unique.
    #[serde(default)]
    pub name: Option<String>,
    /// Model groups the key may use; empty means all.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub rpm_limit: Option<i64>,
    #[serde(default)]
    pub tpm_limit: Option<i64>,
    #[serde(default)]
    pub max_parallel_requests: Option<i64>,
    /// USD per `budget_duration` (or in total when that is unset).
    #[serde(default, with = "rust_decimal::serde::float_option")]
    pub max_budget: Option<Decimal>,
    /// LiteLLM's form: `30s`, `30m`, `24h`, `30d`.
    #[serde(default)]
    pub budget_duration: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A stored key, without its hash.
#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct KeyRecord {
    /// Recorded as the owner of the key's jobs.
    pub id: String,
    /// `sk-…abcd`: enough to tell keys apart, useless to an attacker.
    pub hint: String,
    pub name: Option<String>,
    pub models: Vec<String>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub max_parallel_requests: Option<i64>,
    #[serde(with = "rust_decimal::serde::float_option")]
    pub max_budget: Option<Decimal>,
    pub budget_duration: Option<String>,
    pub metadata: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    /// Whether the key may submit jobs to `group`.
    pub fn allows_model(&self, group: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == group)
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

const COLUMNS: &str = "id, hint, name, models, rpm_limit, tpm_limit, max_parallel_requests, \
                       max_budget, budget_duration, metadata, created_at, expires_at";

/// The secret that signs webhooks of `owner`'s jobs: the server's `webhook_secret` for
/// the master key, and for a virtual key one derived from it and the key id
/// (`whsec_` + hex HMAC-SHA256), so each key's receivers check their own secret and
/// nothing new is stored. The key's creator is shown it once, with the key.
#[allow(
    clippy::expect_used,
    reason = "HMAC takes keys of any length (RFC 2104)"
)]
pub fn webhook_secret(server: &Secret, owner: &str) -> Secret {
    use hmac::{Hmac, Mac};
    if owner == sluice_schemas::MASTER_OWNER {
        return server.clone();
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(server.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(b"sluice-webhook-key:");
    mac.update(owner.as_bytes());
    Secret::new(format!(
        "whsec_{}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// Checks a `budget_duration` (`<n>s|m|h|d`).
pub fn valid_budget_duration(s: &str) -> bool {
    let Some(unit) = s.chars().last() else {
        return false;
    };
    let n = &s[..s.len() - unit.len_utf8()];
    matches!(unit, 's' | 'm' | 'h' | 'd') && !n.is_empty() && n.parse::<u32>().is_ok_and(|n| n > 0)
}

impl Store {
    /// Stores a new key's hash and settings.
    pub async fn create_api_key(
        &self,
        id: &str,
        key: &Secret,
        settings: &KeySettings,
    ) -> Result<KeyRecord, StoreError> {
        let clear = key.expose();
        let tail: String = clear
            .chars()
            .skip(clear.chars().count().saturating_sub(4))
            .collect();
        Ok(sqlx::query_as::<_, KeyRecord>(&format!(
            "INSERT INTO api_keys (id, key_hash, hint, name, models, rpm_limit, tpm_limit,
                 max_parallel_requests, max_budget, budget_duration, metadata, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(hash_key(clear))
        .bind(format!("sk-…{tail}"))
        .bind(&settings.name)
        .bind(&settings.models)
        .bind(settings.rpm_limit)
        .bind(settings.tpm_limit)
        .bind(settings.max_parallel_requests)
        .bind(settings.max_budget)
        .bind(&settings.budget_duration)
        .bind(&settings.metadata)
        .bind(settings.expires_at)
        .fetch_one(self.pool())
        .await?)
    }

    /// The live (not revoked) key whose hash is `key_hash`.
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(sqlx::query_as::<_, KeyRecord>(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(key_hash)
        .fetch_optional(self.pool())
        .await?)
    }

    /// A live key by id: the record admission reads the key's limits from.
    pub async fn api_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(sqlx::query_as::<_, KeyRecord>(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE id = $1 AND revoked_at IS NULL"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Live keys, oldest first.
    pub async fn api_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(sqlx::query_as::<_, KeyRecord>(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// Whether `id` names a key that was revoked (not one that never existed).
    pub async fn api_key_revoked(&self, id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar::<_, bool>(
            "SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .unwrap_or(false))
    }

    /// Ends the queued jobs of a revoked key: `failed`, class `auth`. Returns their ids, so
    /// their subscribers can be told. A running job is refused its next call by the
    /// worker (`worker/src/keys.rs`).
    pub async fn end_jobs_of_revoked_key(&self, id: &str) -> Result<Vec<uuid::Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE jobs SET status = 'failed', error_class = 'auth',
                 error_message = 'the API key of this job was revoked',
                 finished_at = now(), not_before = NULL, updated_at = now()
             WHERE owner = $1 AND status = 'queued'
             RETURNING id",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Revokes a key; `false` if there was no live key with that id. The row stays, so its
    /// jobs and spend keep a known owner.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_hash_to_hex() {
        let (id1, k1) = generate();
        let (id2, k2) = generate();
        assert_ne!(id1, id2);
        assert_ne!(k1.expose(), k2.expose());
        assert!(k1.expose().starts_with(KEY_PREFIX));
        let h = hash_key(k1.expose());
        assert_eq!(h.len(), 64);
        assert!(!h.contains(k1.expose()));
        assert_eq!(h, hash_key(k1.expose()));
    }

    #[test]
    fn budget_durations() {
        for ok in ["30s", "5m", "24h", "30d"] {
            assert!(valid_budget_duration(ok), "{ok}");
        }
        for bad in ["", "d", "0d", "1w", "-1d", "1.5h"] {
            assert!(!valid_budget_duration(bad), "{bad}");
        }
    }
}
