//! Azure OpenAI: OpenAI's body and responses behind a
//! different URL and auth.
//!
//! Classic form: `{api_base}/openai/deployments/{deployment}/chat/completions?api-version=…`
//! (the deployment name is the model after `azure/`). When `api_base` already is the v1
//! endpoint (`…/openai/v1`) the path is `/chat/completions` with no `api-version`. Auth is the
//! `api-key` header. Parsing, streaming and classification are the OpenAI family's
//! ([`super::openai`]), which already skips Azure's prompt-filter chunks and knows its
//! `content_filter` / `ResponsibleAIPolicyViolation` wording.

use sluice_core::config::Deployment;
use sluice_schemas::openai::{ChatCompletion, ChatRequest};

use super::error::ProviderError;
use super::openai::OpenAi;
use super::params::Params;
use super::wire::{Framing, Normalise, Wire};

/// The endpoint for one deployment.
pub fn url(d: &Deployment) -> String {
    operation_url(d, "chat/completions")
}

/// The endpoint of `operation` (`chat/completions`, `embeddings`) for one deployment.
pub(crate) fn operation_url(d: &Deployment, operation: &str) -> String {
    let base = d.api_base.trim_end_matches('/');
    if base.ends_with("/openai/v1") {
        return format!("{base}/{operation}");
    }
    let mut url = if base.contains("/openai/deployments/") {
        format!("{base}/{operation}")
    } else {
        format!("{base}/openai/deployments/{}/{operation}", d.model)
    };
    if let Some(v) = &d.api_version {
        url.push_str("?api-version=");
        url.push_str(v);
    }
    url
}

fn build(
    http: &reqwest::Client,
    d: &Deployment,
    request: &ChatRequest,
    params: &mut Params,
) -> Result<reqwest::RequestBuilder, ProviderError> {
    // Reasoning deployments (o-series, gpt-5; told by `base_model` or the deployment
    // name) follow OpenAI's rules.
    let body = super::reasoning::adapt(d, request, params)?;
    let mut req = super::request::post_chat(http, d, url).json(&*body);
    if let Some(key) = &d.api_key {
        req = req.header("api-key", key.expose());
    }
    Ok(req)
}

/// Azure OpenAI: its own URL and auth, the OpenAI family's everything else.
pub(crate) struct Azure;

impl Wire for Azure {
    fn request(
        &self,
        http: &reqwest::Client,
        d: &Deployment,
        request: &ChatRequest,
        _stream: bool,
        params: &mut Params,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        build(http, d, request, params)
    }

    fn completion(&self, bytes: &[u8], model: &str) -> Result<ChatCompletion, ProviderError> {
        OpenAi.completion(bytes, model)
    }

    fn stream(&self, model: &str) -> (Framing, Box<dyn Normalise>) {
        OpenAi.stream(model)
    }

    fn classify(&self, provider: &str, status: u16, body: &str) -> ProviderError {
        OpenAi.classify(provider, status, body)
    }
}
