//! The provider layer: one OpenAI-shaped call over every wire protocol.
//!
//! Owns the HTTP client, the wire adapters (one module per protocol: [`openai`] and its
//! compatible family, [`azure`], [`anthropic`], [`gemini`], [`ollama`]), the stream driver
//! ([`stream`]) and error classification: every failure leaves this layer as a
//! [`ProviderError`] with exactly one [`ErrorClass`]. Retry, cooldown and fallback decisions
//! live elsewhere and look only at the class.

pub mod accumulate;
pub mod anthropic;
pub mod azure;
pub mod chunk;
mod error;
pub mod gemini;
pub mod ollama;
pub mod openai;
pub mod params;
pub mod ratelimit;
mod request;
pub mod stream;

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use sluice_core::config::{Deployment, Protocol};
use sluice_schemas::openai::{
    ChatCompletion, ChatCompletionChunk, ChatRequest, StreamOptions, Usage,
};
use sluice_schemas::ErrorClass;

pub use error::{provider_wait, retry_after, ProviderError};
pub use params::Params;
pub use ratelimit::RateLimits;
pub use stream::StreamDecoder;

/// Classifies a non-2xx response in the protocol's own terms.
pub fn classify(
    protocol: Protocol,
    provider: &str,
    status: u16,
    headers: &HeaderMap,
    body: &str,
) -> ProviderError {
    let e = match protocol {
        Protocol::OpenAi | Protocol::Azure => openai::classify(provider, status, body),
        Protocol::Anthropic => anthropic::classify(status, body),
        Protocol::Gemini => gemini::classify(status, body),
        Protocol::Ollama => ollama::classify(status, body),
    };
    e.with_response(status, headers)
}

/// Receives each chunk of a streamed call as it arrives.
pub trait ChunkSink: Send {
    /// `raw` is the chunk's JSON as the provider sent it when that already is an OpenAI
    /// chunk (so it can be forwarded without re-encoding), otherwise `None`.
    fn chunk(
        &mut self,
        chunk: &ChatCompletionChunk,
        raw: Option<&str>,
    ) -> impl Future<Output = ()> + Send;
}

/// A sink that drops everything (non-streamed calls, tests).
pub struct NoSink;

impl ChunkSink for NoSink {
    async fn chunk(&mut self, _: &ChatCompletionChunk, _: Option<&str>) {}
}

/// A successful call.
#[derive(Debug, Clone)]
pub struct CallOutput {
    pub completion: ChatCompletion,
    /// `None` when the provider did not report usage.
    pub usage: Option<Usage>,
    /// Time to first content chunk (streamed calls only).
    pub ttft: Option<Duration>,
    pub latency: Duration,
    /// Request parameters left out because the provider cannot take them
    /// (`drop_params: true`), for the attempt record.
    pub dropped_params: Vec<String>,
    /// The provider's rate-limit headers, for flow control.
    pub rate_limits: Option<RateLimits>,
}

/// The shared provider client: one connection pool for every upstream.
#[derive(Clone)]
pub struct Providers {
    http: reqwest::Client,
}

impl Providers {
    pub fn new() -> Self {
        // HTTP/2 is negotiated by ALPN where the provider offers it (rustls).
        // No redirects: a 3xx to another host would take the prompt (and a header key)
        // along; it is an attempt error instead (see `stream::execute`).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Providers { http }
    }

    /// Calls `deployment` with `request`, rewriting its `model` to the upstream name and
    /// its stream settings (streamed calls always ask for usage). Enforces the whole-call
    /// timeout here and time-to-first-token in the stream driver.
    pub async fn call<S: ChunkSink>(
        &self,
        deployment: &Deployment,
        request: &mut ChatRequest,
        stream: bool,
        sink: &mut S,
    ) -> Result<CallOutput, ProviderError> {
        crate::panics::debug_panic(request);
        let started = Instant::now();
        request.model.clone_from(&deployment.model);
        request.stream = Some(stream);
        request.stream_options = stream.then_some(StreamOptions {
            include_usage: true,
        });
        let request = &*request;
        let call = async {
            let mut params = Params::new(deployment);
            let builder = match deployment.protocol {
                Protocol::OpenAi => openai::build(&self.http, deployment, request, &mut params),
                Protocol::Azure => azure::build(&self.http, deployment, request, &mut params),
                Protocol::Anthropic => {
                    anthropic::build(&self.http, deployment, request, stream, &mut params)
                }
                Protocol::Gemini => {
                    gemini::build(&self.http, deployment, request, stream, &mut params)
                }
                Protocol::Ollama => {
                    ollama::build(&self.http, deployment, request, stream, &mut params)
                }
            }?;
            let dropped = params.into_dropped();
            if !dropped.is_empty() {
                tracing::debug!(deployment = %deployment.id, ?dropped, "dropped unsupported params");
            }
            match stream::execute(builder, deployment, stream, sink, started).await {
                Ok(mut out) => {
                    out.dropped_params = dropped;
                    Ok(out)
                }
                Err(mut e) => {
                    e.dropped_params = dropped;
                    Err(e)
                }
            }
        };
        match tokio::time::timeout(deployment.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::new(
                ErrorClass::Timeout,
                format!("no complete response within {:?}", deployment.timeout),
            )),
        }
    }
}

impl Providers {
    /// The shared HTTP client (webhooks reuse its connection pool).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

impl Default for Providers {
    fn default() -> Self {
        Self::new()
    }
}
