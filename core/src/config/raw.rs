//! The serde shapes of `sluice.yaml` as written: LiteLLM's sections stay open maps (their
//! keys are read one by one in `litellm.rs`), the `sluice:` section is closed
//! (`deny_unknown_fields`), so a typo there is an error rather than a silent default.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml_ng::Value;

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) model_list: Vec<RawModel>,
    #[serde(default)]
    pub(super) router_settings: BTreeMap<String, Value>,
    #[serde(default)]
    pub(super) litellm_settings: BTreeMap<String, Value>,
    #[serde(default)]
    pub(super) general_settings: BTreeMap<String, Value>,
    #[serde(default)]
    pub(super) sluice: RawSluice,
    #[serde(flatten)]
    pub(super) other: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawModel {
    pub(super) model_name: String,
    pub(super) litellm_params: BTreeMap<String, Value>,
    #[serde(default)]
    pub(super) model_info: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSluice {
    pub(super) nats_url: Option<String>,
    pub(super) redis_url: Option<String>,
    pub(super) database_url: Option<String>,
    pub(super) subject_prefix: Option<String>,
    pub(super) api_addr: Option<String>,
    pub(super) metrics_addr: Option<String>,
    pub(super) max_body_bytes: Option<usize>,
    pub(super) events_max_age_secs: Option<u64>,
    pub(super) pricing_file: Option<PathBuf>,
    pub(super) webhook_secret: Option<String>,
    #[serde(default)]
    pub(super) worker: RawWorker,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) batches: crate::batch_settings::RawBatchSettings,
    #[serde(default)]
    pub(super) safety: crate::safety::RawSafetySettings,
    #[serde(default)]
    pub(super) nats: RawNats,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNats {
    pub(super) replicas: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) fail_open: Option<bool>,
    pub(super) default_max_tokens: Option<u32>,
    pub(super) max_defer_secs: Option<u64>,
    pub(super) max_wait_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorker {
    pub(super) capacity: Option<usize>,
    pub(super) ack_wait_secs: Option<u64>,
    pub(super) drain_secs: Option<u64>,
    pub(super) max_deliver: Option<u32>,
    pub(super) max_calls_per_job: Option<u32>,
    pub(super) lost_message_grace_secs: Option<u64>,
}
