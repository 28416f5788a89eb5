//! The job envelope: what goes on `<prefix>.jobs.<tier>`.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::embeddings::EmbeddingsRequest;
use crate::openai::ChatRequest;

/// The owner of jobs submitted with the master key (`SLUICE_MASTER_KEY`), and of jobs
/// published straight to NATS without an owner. Virtual keys own their jobs by key id.
pub const MASTER_OWNER: &str = "master";

/// Whether `owner` is the master key's (an empty owner counts as the master's).
pub fn is_master_owner(owner: &str) -> bool {
    owner == MASTER_OWNER || owner.is_empty()
}

/// One job as published to JetStream: a chat completion, or embeddings when
/// [`JobEnvelope::embeddings`] is set.
///
/// A trusted service may publish this straight to NATS (with `Nats-Msg-Id: <id>`); the
/// worker tracks it exactly like a job submitted through the API.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct JobEnvelope {
    /// UUIDv7 job id; also the `Nats-Msg-Id` of the publish.
    pub id: Uuid,
    /// The OpenAI chat request; `request.model` names the model group (for an embeddings
    /// job too, whose `messages` are empty).
    pub request: ChatRequest,
    /// An embeddings job: the OpenAI embeddings request (its `model` is the same group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Box<EmbeddingsRequest>>,
    #[serde(default)]
    pub tier: Tier,
    /// Who submitted it: a key id, or [`MASTER_OWNER`] (also when absent). Never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Core NATS subject that receives the terminal event as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Unix milliseconds when the job was accepted (queue-wait measurements start here).
    #[serde(default)]
    pub submitted_at_ms: i64,
    /// Model groups to fall back to for this job, before the configured ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallbacks: Option<Vec<String>>,
    /// No fallback groups for this job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_fallbacks: bool,
    /// The submitting request's `User-Agent`, for deployments routed by `tag_regex`; set
    /// only while tag filtering is on and a deployment has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// Priority tier. Accepts a name (`critical`, `high`, `normal`, `low`) or 0–3 (0 = critical).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord, JsonSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type))]
#[cfg_attr(feature = "sqlx", sqlx(type_name = "text", rename_all = "lowercase"))]
#[schemars(with = "String")]
pub enum Tier {
    Critical,
    High,
    #[default]
    Normal,
    Low,
}

impl Tier {
    /// Highest priority first.
    pub const ALL: [Tier; 4] = [Tier::Critical, Tier::High, Tier::Normal, Tier::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Critical => "critical",
            Tier::High => "high",
            Tier::Normal => "normal",
            Tier::Low => "low",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<Tier> {
        match s.trim().to_ascii_lowercase().as_str() {
            "critical" | "0" => Some(Tier::Critical),
            "high" | "1" => Some(Tier::High),
            "normal" | "2" => Some(Tier::Normal),
            "low" | "3" => Some(Tier::Low),
            _ => None,
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Tier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Tier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Number(i64),
        }
        let bad = |what: String| {
            serde::de::Error::custom(format!(
                "invalid priority {what}: expected critical, high, normal, low or 0-3"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Name(s) => Tier::parse(&s).ok_or_else(|| bad(format!("{s:?}"))),
            Raw::Number(n) => match n {
                0..=3 => Ok(Tier::ALL[n as usize]),
                _ => Err(bad(n.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_accepts_names_and_numbers_and_rejects_others() {
        let t: Tier = serde_json::from_str("\"HIGH\"").unwrap();
        assert_eq!(t, Tier::High);
        let t: Tier = serde_json::from_str("0").unwrap();
        assert_eq!(t, Tier::Critical);
        assert!(serde_json::from_str::<Tier>("7").is_err());
        assert!(serde_json::from_str::<Tier>("\"urgent\"").is_err());
        assert_eq!(serde_json::to_string(&Tier::Low).unwrap(), "\"low\"");
    }
}
