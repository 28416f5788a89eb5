//! Value coercion: a YAML value (or `os.environ/NAME`) turned into a string, number,
//! boolean, price or period, with errors that name the key and the file.

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_yaml_ng::Value;

use super::{ConfigError, Env};

pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) env: &'a dyn Env,
}

impl Ctx<'_> {
    pub(super) fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            key: key.to_string(),
            message,
        }
    }

    /// A string value, with `os.environ/NAME` resolved.
    pub(super) fn resolve(&self, key: &str, v: &Value) -> Result<String, ConfigError> {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(self.invalid(key, "expected a string".into())),
        };
        match s.strip_prefix("os.environ/") {
            Some(name) => self.env.var(name).ok_or_else(|| {
                self.invalid(key, format!("environment variable {name} is not set"))
            }),
            None => Ok(s),
        }
    }

    pub(super) fn opt_str(
        &self,
        map: &BTreeMap<String, Value>,
        section: &str,
        key: &str,
    ) -> Result<Option<String>, ConfigError> {
        map.get(key)
            .filter(|v| !v.is_null())
            .map(|v| self.resolve(&format!("{section}.{key}"), v))
            .transpose()
    }

    pub(super) fn opt_f64(
        &self,
        map: &BTreeMap<String, Value>,
        section: &str,
        key: &str,
    ) -> Result<Option<f64>, ConfigError> {
        match self.opt_str(map, section, key)? {
            None => Ok(None),
            Some(s) => match s.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
                _ => Err(self.invalid(
                    &format!("{section}.{key}"),
                    format!("expected a non-negative number, got {s:?}"),
                )),
            },
        }
    }

    pub(super) fn opt_bool(
        &self,
        map: &BTreeMap<String, Value>,
        section: &str,
        key: &str,
    ) -> Result<Option<bool>, ConfigError> {
        match self.opt_str(map, section, key)? {
            None => Ok(None),
            Some(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(self.invalid(
                    &format!("{section}.{key}"),
                    format!("expected true or false, got {s:?}"),
                )),
            },
        }
    }

    pub(super) fn opt_u64(
        &self,
        map: &BTreeMap<String, Value>,
        section: &str,
        key: &str,
    ) -> Result<Option<u64>, ConfigError> {
        match self.opt_str(map, section, key)? {
            None => Ok(None),
            Some(s) => s.trim().parse::<u64>().map(Some).map_err(|_| {
                self.invalid(
                    &format!("{section}.{key}"),
                    format!("expected a whole number, got {s:?}"),
                )
            }),
        }
    }

    pub(super) fn opt_decimal(
        &self,
        map: &BTreeMap<String, Value>,
        section: &str,
        key: &str,
    ) -> Result<Option<Decimal>, ConfigError> {
        match self.opt_str(map, section, key)? {
            None => Ok(None),
            Some(s) => {
                let s = s.trim();
                let d = Decimal::from_str_exact(s)
                    .or_else(|_| Decimal::from_scientific(s))
                    .map_err(|_| {
                        self.invalid(
                            &format!("{section}.{key}"),
                            format!("expected a price, got {s:?}"),
                        )
                    })?;
                if d.is_sign_negative() {
                    return Err(self.invalid(
                        &format!("{section}.{key}"),
                        "a price cannot be negative".into(),
                    ));
                }
                Ok(Some(d))
            }
        }
    }
}

/// A LiteLLM period: `30s`, `10m`, `1h`, `1d`, `1mo` (30 days).
pub fn parse_period(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "mo" => 30 * 86_400,
        _ => return None,
    };
    (n > 0).then(|| Duration::from_secs(n * secs))
}
