//! LiteLLM's usage callbacks: `litellm_settings.success_callback`, `failure_callback` and
//! `callbacks` (both). Sluice acts on `langfuse` (its ingestion API, configured by
//! `LANGFUSE_PUBLIC_KEY`, `LANGFUSE_SECRET_KEY`, `LANGFUSE_HOST`) and `otel` (the trace
//! export, configured by the `OTEL_*` variables); other names are reported as not acted
//! on. `turn_off_message_logging: true` keeps the prompt and the answer out of them. The
//! worker sends them (`worker/src/callbacks.rs`).

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::{ConfigError, Env};
use crate::Secret;

/// Where Langfuse is and how to sign in.
#[derive(Debug, Clone)]
pub struct Langfuse {
    /// Without a trailing `/`; `https://cloud.langfuse.com` unless `LANGFUSE_HOST` says.
    pub host: String,
    pub public_key: String,
    pub secret_key: Secret,
}

/// Which callbacks fire on a job's success and failure.
#[derive(Debug, Clone, Default)]
pub struct Callbacks {
    pub langfuse_on_success: bool,
    pub langfuse_on_failure: bool,
    /// `otel` was named: traces are wanted (exported when an endpoint is set).
    pub otel: bool,
    /// Set when Langfuse is named in either list.
    pub langfuse: Option<Langfuse>,
    /// `litellm_settings.turn_off_message_logging`: callbacks carry usage, cost and
    /// timings but neither the prompt nor the answer.
    pub redact_messages: bool,
}

impl Callbacks {
    pub fn any_langfuse(&self) -> bool {
        self.langfuse.is_some()
    }
}

pub(super) const KEYS: &[&str] = &["success_callback", "failure_callback", "callbacks"];
/// The message-logging switch, read here as well.
pub(super) const REDACT_KEY: &str = "turn_off_message_logging";

/// Reads the three keys of `litellm_settings`; names it does not act on go to `ignored`.
pub(super) fn resolve(
    file: &str,
    settings: &BTreeMap<String, Value>,
    env: &dyn Env,
    ignored: &mut Vec<String>,
) -> Result<Callbacks, ConfigError> {
    let redact_messages = match settings.get(REDACT_KEY) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ConfigError::Invalid {
                file: file.to_string(),
                key: format!("litellm_settings.{REDACT_KEY}"),
                message: "expected true or false".into(),
            })
        }
    };
    let mut out = Callbacks {
        redact_messages,
        ..Callbacks::default()
    };
    for key in KEYS {
        let names: Vec<&str> = match settings.get(*key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Sequence(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(_) => {
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    key: format!("litellm_settings.{key}"),
                    message: "expected a list of callback names".into(),
                })
            }
        };
        for name in names {
            match name {
                "langfuse" => {
                    if *key != "failure_callback" {
                        out.langfuse_on_success = true;
                    }
                    if *key != "success_callback" {
                        out.langfuse_on_failure = true;
                    }
                }
                "otel" | "opentelemetry" => out.otel = true,
                other => ignored.push(format!("litellm_settings.{key}: {other}")),
            }
        }
    }
    if out.langfuse_on_success || out.langfuse_on_failure {
        let missing = |name: &str| ConfigError::Invalid {
            file: file.to_string(),
            key: "litellm_settings.success_callback".into(),
            message: format!("the langfuse callback needs {name} in the environment"),
        };
        let public_key = env
            .var("LANGFUSE_PUBLIC_KEY")
            .ok_or_else(|| missing("LANGFUSE_PUBLIC_KEY"))?;
        let secret_key = env
            .var("LANGFUSE_SECRET_KEY")
            .ok_or_else(|| missing("LANGFUSE_SECRET_KEY"))?;
        let host = env
            .var("LANGFUSE_HOST")
            .unwrap_or_else(|| "https://cloud.langfuse.com".into());
        let host = host.trim_end_matches('/').to_string();
        if !(host.starts_with("http://") || host.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                file: file.to_string(),
                key: "LANGFUSE_HOST".into(),
                message: format!("{host:?} is not an http(s) URL"),
            });
        }
        out.langfuse = Some(Langfuse {
            host,
            public_key,
            secret_key: Secret::new(secret_key),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> BTreeMap<String, Value> {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn langfuse_success_callback_reads_the_environment() {
        let env = |k: &str| match k {
            "LANGFUSE_PUBLIC_KEY" => Some("pk-lf-1".to_string()),
            "LANGFUSE_SECRET_KEY" => Some("sk-lf-1".to_string()),
            "LANGFUSE_HOST" => Some("https://lf.example.com/".to_string()),
            _ => None,
        };
        let mut ignored = Vec::new();
        let c = resolve(
            "f",
            &settings("success_callback: [\"langfuse\"]\ncallbacks: [\"otel\", \"prometheus\"]"),
            &env,
            &mut ignored,
        )
        .unwrap();
        assert!(c.langfuse_on_success && !c.langfuse_on_failure && c.otel);
        let lf = c.langfuse.unwrap();
        assert_eq!(lf.host, "https://lf.example.com");
        assert_eq!(lf.public_key, "pk-lf-1");
        assert_eq!(ignored, ["litellm_settings.callbacks: prometheus"]);
        assert!(!c.redact_messages);
        let c = resolve(
            "f",
            &settings("success_callback: [\"langfuse\"]\nturn_off_message_logging: true"),
            &env,
            &mut ignored,
        )
        .unwrap();
        assert!(c.redact_messages);
        let e = resolve(
            "f",
            &settings("turn_off_message_logging: maybe"),
            &env,
            &mut ignored,
        )
        .unwrap_err();
        assert!(e.to_string().contains("turn_off_message_logging"), "{e}");
    }

    #[test]
    fn langfuse_without_keys_is_an_error_naming_the_variable() {
        let env = |_: &str| None;
        let e = resolve(
            "f",
            &settings("failure_callback: [\"langfuse\"]"),
            &env,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("LANGFUSE_PUBLIC_KEY"), "{e}");
    }
}
