//! Parameters a provider cannot take, with LiteLLM's `drop_params` semantics: dropped (and
//! listed for the attempt record) when the deployment says `drop_params: true`, otherwise
//! the call fails as `bad_request` naming the parameter, before anything is sent.

use sluice_core::config::Deployment;
use sluice_schemas::ErrorClass;

use super::error::ProviderError;

/// Collects the parameters dropped while one request is mapped.
#[derive(Debug)]
pub struct Params {
    drop: bool,
    provider: String,
    dropped: Vec<String>,
}

impl Params {
    pub fn new(d: &Deployment) -> Self {
        Params {
            drop: d.drop_params,
            provider: d.provider.clone(),
            dropped: Vec::new(),
        }
    }

    /// For tests and benchmarks: a provider name and the `drop_params` setting.
    pub fn with(provider: &str, drop: bool) -> Self {
        Params {
            drop,
            provider: provider.to_string(),
            dropped: Vec::new(),
        }
    }

    /// `name` was set but the provider has no equivalent.
    pub fn unsupported(&mut self, name: &str) -> Result<(), ProviderError> {
        if self.drop {
            if !self.dropped.iter().any(|d| d == name) {
                self.dropped.push(name.to_string());
            }
            Ok(())
        } else {
            Err(ProviderError::new(
                ErrorClass::BadRequest,
                format!(
                    "{} does not support the parameter `{name}`; remove it or set drop_params: true on the deployment",
                    self.provider
                ),
            ))
        }
    }

    /// `name` has a value the provider cannot express (e.g. `n: 3`).
    pub fn unsupported_value(&mut self, name: &str, value: &str) -> Result<(), ProviderError> {
        if self.drop {
            self.unsupported(name)
        } else {
            Err(ProviderError::new(
                ErrorClass::BadRequest,
                format!(
                    "{} does not support `{name}: {value}`; remove it or set drop_params: true on the deployment",
                    self.provider
                ),
            ))
        }
    }

    pub fn dropped(&self) -> &[String] {
        &self.dropped
    }

    pub fn into_dropped(self) -> Vec<String> {
        self.dropped
    }
}

/// A request that cannot be expressed at all (bad tool arguments, unknown roles, ...).
pub(crate) fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorClass::BadRequest, message)
}
