//! Settings of the Batch API (`sluice.batches`): file limits, the ingestion rate and the
//! lease that keeps one API instance driving each batch. Defaults live here, next to the
//! type; `config.rs` only hooks the section in.

use std::time::Duration;

use serde::Deserialize;

pub mod defaults {
    /// OpenAI's limits: 200 MB and 50,000 requests per input file.
    pub const MAX_FILE_BYTES: u64 = 200 * 1024 * 1024;
    pub const MAX_LINES: u32 = 50_000;
    /// Lines turned into jobs per second, per batch.
    pub const PUBLISH_RATE: u32 = 5_000;
    /// Lines of one batch waiting in the queue before ingestion pauses.
    pub const MAX_QUEUED: u32 = 5_000;
    pub const LEASE_SECS: u64 = 15;
    pub const POLL_MS: u64 = 500;
    /// Batches one API instance drives at once.
    pub const CONCURRENT: usize = 4;
    /// First wait between polls of an upstream batch; it doubles up to `NATIVE_POLL_MAX_MS`.
    pub const NATIVE_POLL_MS: u64 = 5_000;
    pub const NATIVE_POLL_MAX_MS: u64 = 60_000;
}

/// `sluice.batches` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatchSettings {
    max_file_bytes: Option<u64>,
    max_lines: Option<u32>,
    publish_rate: Option<u32>,
    max_queued: Option<u32>,
    lease_secs: Option<f64>,
    poll_ms: Option<u64>,
    concurrent: Option<usize>,
    default_mode: Option<String>,
    native_poll_ms: Option<u64>,
    native_poll_max_ms: Option<u64>,
    native_rerun_live: Option<bool>,
    native_max_lines: Option<u32>,
    native_max_bytes: Option<u64>,
    native_enqueued_tokens: Option<u64>,
}

/// The Batch API's limits and pacing.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// Largest upload accepted by `POST /v1/files`.
    pub max_file_bytes: u64,
    /// Most request lines in one input file.
    pub max_lines: u32,
    /// Lines per second one batch publishes at most.
    pub publish_rate: u32,
    /// Ingestion of a batch pauses while this many of its lines wait in the queue, so a
    /// cancel has little to take back and other work is not flooded.
    pub max_queued: u32,
    /// How long a batch's driver holds it without renewing; another API instance takes
    /// over after this when one dies.
    pub lease: Duration,
    /// How often progress is checked and idle batches are looked for.
    pub poll: Duration,
    /// Batches one API instance drives at once.
    pub concurrent: usize,
    /// How a batch runs when its `metadata.sluice_mode` does not say.
    pub default_mode: crate::native_batches::BatchMode,
    /// First and longest wait between polls of an upstream batch (backoff doubles).
    pub native_poll: Duration,
    pub native_poll_max: Duration,
    /// Lines of an upstream batch that failed or expired run live while the batch's
    /// window is open (else they end `expired`).
    pub native_rerun_live: bool,
    /// Caps below the providers' own limits per upstream batch (`None`: the provider's).
    pub native_max_lines: Option<u32>,
    pub native_max_bytes: Option<u64>,
    /// The providers' enqueued-token limit (prompt tokens of a deployment's upstream
    /// batches in flight at once), for deployments that do not set their own
    /// (`model_info.batch_enqueued_tokens`). `None`: no limit is kept. The providers publish
    /// it per model and account tier (README "Batches").
    pub native_enqueued_tokens: Option<u64>,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_file_bytes: defaults::MAX_FILE_BYTES,
            max_lines: defaults::MAX_LINES,
            publish_rate: defaults::PUBLISH_RATE,
            max_queued: defaults::MAX_QUEUED,
            lease: Duration::from_secs(defaults::LEASE_SECS),
            poll: Duration::from_millis(defaults::POLL_MS),
            concurrent: defaults::CONCURRENT,
            default_mode: crate::native_batches::BatchMode::Live,
            native_poll: Duration::from_millis(defaults::NATIVE_POLL_MS),
            native_poll_max: Duration::from_millis(defaults::NATIVE_POLL_MAX_MS),
            native_rerun_live: true,
            native_max_lines: None,
            native_max_bytes: None,
            native_enqueued_tokens: None,
        }
    }
}

impl RawBatchSettings {
    /// Validates the section; an error names the key (under `sluice.batches`).
    pub fn resolve(&self) -> Result<BatchSettings, (&'static str, String)> {
        let positive = |key: &'static str, v: Option<u64>, default: u64| match v {
            Some(0) => Err((key, "must be at least 1".to_string())),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let lease = match self.lease_secs {
            Some(s) if !(0.2..=3600.0).contains(&s) => {
                return Err((
                    "sluice.batches.lease_secs",
                    "must be between 0.2 and 3600".into(),
                ))
            }
            Some(s) => Duration::from_secs_f64(s),
            None => Duration::from_secs(defaults::LEASE_SECS),
        };
        let default_mode = match self.default_mode.as_deref() {
            None => crate::native_batches::BatchMode::Live,
            Some(m) => crate::native_batches::BatchMode::parse(m).ok_or((
                "sluice.batches.default_mode",
                format!("{m:?} is not a mode: use live, native or auto"),
            ))?,
        };
        let native_poll = positive(
            "sluice.batches.native_poll_ms",
            self.native_poll_ms,
            defaults::NATIVE_POLL_MS,
        )?;
        let native_poll_max = positive(
            "sluice.batches.native_poll_max_ms",
            self.native_poll_max_ms,
            defaults::NATIVE_POLL_MAX_MS.max(native_poll),
        )?
        .max(native_poll);
        Ok(BatchSettings {
            max_file_bytes: positive(
                "sluice.batches.max_file_bytes",
                self.max_file_bytes,
                defaults::MAX_FILE_BYTES,
            )?,
            max_lines: positive(
                "sluice.batches.max_lines",
                self.max_lines.map(u64::from),
                u64::from(defaults::MAX_LINES),
            )?
            .min(u64::from(u32::MAX)) as u32,
            publish_rate: positive(
                "sluice.batches.publish_rate",
                self.publish_rate.map(u64::from),
                u64::from(defaults::PUBLISH_RATE),
            )? as u32,
            max_queued: positive(
                "sluice.batches.max_queued",
                self.max_queued.map(u64::from),
                u64::from(defaults::MAX_QUEUED),
            )? as u32,
            lease,
            poll: Duration::from_millis(positive(
                "sluice.batches.poll_ms",
                self.poll_ms,
                defaults::POLL_MS,
            )?),
            concurrent: positive(
                "sluice.batches.concurrent",
                self.concurrent.map(|c| c as u64),
                defaults::CONCURRENT as u64,
            )? as usize,
            default_mode,
            native_poll: Duration::from_millis(native_poll),
            native_poll_max: Duration::from_millis(native_poll_max),
            native_rerun_live: self.native_rerun_live.unwrap_or(true),
            native_max_lines: match self.native_max_lines {
                Some(0) => {
                    return Err((
                        "sluice.batches.native_max_lines",
                        "must be at least 1".into(),
                    ))
                }
                v => v,
            },
            native_max_bytes: match self.native_max_bytes {
                Some(0) => {
                    return Err((
                        "sluice.batches.native_max_bytes",
                        "must be at least 1".into(),
                    ))
                }
                v => v,
            },
            native_enqueued_tokens: match self.native_enqueued_tokens {
                Some(0) => {
                    return Err((
                        "sluice.batches.native_enqueued_tokens",
                        "must be at least 1".into(),
                    ))
                }
                v => v,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_openai_limits_and_zero_is_refused() {
        let s = BatchSettings::default();
        assert_eq!(s.max_lines, 50_000);
        assert_eq!(s.max_file_bytes, 200 * 1024 * 1024);
        let raw: RawBatchSettings = serde_yaml_ng::from_str("publish_rate: 0").unwrap();
        assert_eq!(raw.resolve().unwrap_err().0, "sluice.batches.publish_rate");
    }

    #[test]
    fn default_mode_is_live_and_an_unknown_mode_names_the_key() {
        assert_eq!(
            BatchSettings::default().default_mode,
            crate::native_batches::BatchMode::Live
        );
        let raw: RawBatchSettings = serde_yaml_ng::from_str("default_mode: auto").unwrap();
        assert_eq!(
            raw.resolve().unwrap().default_mode,
            crate::native_batches::BatchMode::Auto
        );
        let raw: RawBatchSettings = serde_yaml_ng::from_str("default_mode: cheap").unwrap();
        assert_eq!(raw.resolve().unwrap_err().0, "sluice.batches.default_mode");
    }
}
