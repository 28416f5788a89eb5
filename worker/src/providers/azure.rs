//! Azure OpenAI (`reference/providers.md` §2): OpenAI's body and responses behind a
//! different URL and auth.
//!
//! Classic form: `{api_base}/openai/deployments/{deployment}/chat/completions?api-version=…`
//! (the deployment name is the model after `azure/`). When `api_base` already is the v1
//! endpoint (`…/openai/v1`) the path is `/chat/completions` with no `api-version`. Auth is the
//! `api-key` header. Parsing, streaming and classification are the OpenAI family's
//! ([`super::openai`]), which already skips Azure's prompt-filter chunks and knows its
//! `content_filter` / `ResponsibleAIPolicyViolation` wording.

use sluice_core::config::Deployment;
use sluice_schemas::openai::ChatRequest;

use super::error::ProviderError;
use super::params::Params;

/// The endpoint for one deployment.
pub fn url(d: &Deployment) -> String {
    let base = d.api_base.trim_end_matches('/');
    if base.ends_with("/openai/v1") {
        return format!("{base}/chat/completions");
    }
    let mut url = if base.contains("/openai/deployments/") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/openai/deployments/{}/chat/completions", d.model)
    };
    if let Some(v) = &d.api_version {
        url.push_str("?api-version=");
        url.push_str(v);
    }
    url
}

pub(super) fn build(
    http: &reqwest::Client,
    d: &Deployment,
    request: &ChatRequest,
    _params: &mut Params,
) -> Result<reqwest::RequestBuilder, ProviderError> {
    let mut req = http.post(url(d)).json(request);
    if let Some(key) = &d.api_key {
        req = req.header("api-key", key.expose());
    }
    Ok(req)
}
