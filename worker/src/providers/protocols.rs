//! Which adapter a [`Protocol`] uses: the one place a protocol picks its [`Wire`], for
//! the driver (`stream.rs`), the embeddings calls (`embeddings.rs`) and the call
//! (`mod.rs`). The adapters never import this file.

use reqwest::header::HeaderMap;
use sluice_core::config::{Deployment, Protocol};

use super::decode::StreamDecoder;
use super::error::ProviderError;
use super::wire::Wire;
use super::{anthropic, azure, gemini, ollama, openai};

/// The wire protocol `protocol` speaks: the one place a [`Protocol`] picks an adapter.
pub(crate) fn wire(protocol: Protocol) -> &'static dyn Wire {
    match protocol {
        Protocol::OpenAi => &openai::OpenAi,
        Protocol::Azure => &azure::Azure,
        Protocol::Anthropic => &anthropic::Anthropic,
        Protocol::Gemini => &gemini::Gemini,
        Protocol::Ollama => &ollama::Ollama,
    }
}

impl StreamDecoder {
    /// A decoder for `protocol`'s streams; `model` names the chunks of protocols whose
    /// payloads do not carry it.
    pub fn new(protocol: Protocol, model: &str) -> Self {
        StreamDecoder::for_wire(wire(protocol), model)
    }
}

/// Classifies a non-2xx response of `d` in its protocol's own terms, with what the
/// response headers say (Retry-After, rate limits).
pub fn classify(d: &Deployment, status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
    wire(d.protocol)
        .classify(&d.provider, status, body)
        .with_response(status, headers)
}
