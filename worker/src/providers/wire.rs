//! [`Wire`]: the one trait every wire protocol implements (request, completion, stream,
//! classify), and [`Normalise`], the per-stream state that turns a protocol's payloads
//! into OpenAI chunks. The adapters (`openai.rs`, `azure.rs`, `anthropic.rs`,
//! `gemini.rs`, `ollama.rs`) implement them; the call and the stream driver (`mod.rs`,
//! `stream.rs`) use them and never look at the protocol again.

use sluice_core::config::Deployment;
use sluice_schemas::openai::{ChatCompletion, ChatRequest};
use sluice_schemas::sse::SseEvent;

use super::chunk::{Emitted, EventError};
use super::error::ProviderError;
use super::params::Params;

/// One wire protocol.
pub(crate) trait Wire: Send + Sync {
    /// The HTTP request for one call of `d` (`request.model` is already the upstream
    /// name). Parameters the protocol cannot take go through `params` (`drop_params`).
    fn request(
        &self,
        http: &reqwest::Client,
        d: &Deployment,
        request: &ChatRequest,
        stream: bool,
        params: &mut Params,
    ) -> Result<reqwest::RequestBuilder, ProviderError>;

    /// Reads a whole (non-streamed) response as a `chat.completion`.
    fn completion(&self, bytes: &[u8], model: &str) -> Result<ChatCompletion, ProviderError>;

    /// How a streamed body is framed, and fresh state to normalise its payloads; `model`
    /// names the chunks of protocols whose payloads do not carry it.
    fn stream(&self, model: &str) -> (Framing, Box<dyn Normalise>);

    /// Classifies a non-2xx response in the protocol's own terms (`provider` is the
    /// LiteLLM prefix, for provider quirks within a family). The status fallback is
    /// [`status_class`](super::error::status_class).
    fn classify(&self, provider: &str, status: u16, body: &str) -> ProviderError;
}

/// How a streamed body is split into payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Server-Sent Events.
    Sse,
    /// Newline-delimited JSON (Ollama).
    Ndjson,
}

/// The state of one streamed response: payloads in, OpenAI chunks out.
pub(crate) trait Normalise: Send + std::fmt::Debug {
    /// Handles one payload, pushing the chunks it completes.
    fn event(&mut self, ev: SseEvent, out: &mut Vec<Emitted>) -> Result<(), EventError>;

    /// Whether the protocol's end of response has been seen.
    fn complete(&self) -> bool;

    /// The body ended after a complete response: emit what was held back.
    fn end(&mut self, _out: &mut Vec<Emitted>) {}

    /// What marks the end of this protocol's stream, for the truncation error.
    fn terminator(&self) -> &'static str;

    /// Whether the end is an explicit terminator, after which the rest of the body can be
    /// ignored (Gemini has none: its stream ends when the server closes it).
    fn explicit_terminator(&self) -> bool {
        true
    }
}
