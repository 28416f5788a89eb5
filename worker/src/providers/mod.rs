//! The provider layer: one OpenAI-shaped call over every wire protocol.
//!
//! Owns the HTTP client and the call ([`Providers::call`]). The files, leaves first:
//! - `error.rs`: [`ProviderError`], the one status → class table, `Retry-After`;
//! - `chunk.rs`: the chunk types adapters emit; `params.rs`, `request.rs`: request mapping
//!   helpers; `reasoning.rs`: OpenAI's reasoning-model rules; `ratelimit.rs`: rate-limit
//!   headers and provider-given waits; `accumulate.rs`: chunks → completion;
//! - `wire.rs`: the `Wire` trait every protocol implements (request, completion,
//!   stream, classify); `decode.rs`: [`StreamDecoder`], which frames a streamed body and
//!   feeds a protocol's `Normalise` through that trait;
//! - `output.rs`: what a call hands back ([`CallOutput`]) and where a stream's chunks go
//!   ([`ChunkSink`]);
//! - the adapters, one per protocol: [`openai`] and its compatible family, [`azure`],
//!   [`anthropic`], [`gemini`], [`ollama`] (they use the files above and none of the
//!   files below);
//! - `protocols.rs`: which adapter a protocol uses ([`wire`]) and [`classify`];
//! - [`stream`]: the driver that sends a request and reads a whole or streamed answer;
//!   [`embeddings`]: embeddings calls;
//! - this file: the call. Nothing above imports it, so the files form no cycle.
//!
//! Every failure leaves this layer as a [`ProviderError`] with exactly one
//! [`ErrorClass`]. Retry, cooldown and fallback decisions live elsewhere and look only at
//! the class.

pub mod accumulate;
pub mod anthropic;
pub mod azure;
pub mod chunk;
mod decode;
pub mod embeddings;
mod error;
pub mod gemini;
pub mod ollama;
pub mod openai;
mod output;
pub mod params;
mod protocols;
pub mod ratelimit;
mod reasoning;
mod request;
pub mod stream;
mod wire;

use std::time::{Duration, Instant};

use sluice_core::config::Deployment;
use sluice_schemas::embeddings::EmbeddingsRequest;
use sluice_schemas::openai::{ChatRequest, StreamOptions};
use sluice_schemas::ErrorClass;

pub use decode::StreamDecoder;
pub use error::{retry_after, ProviderError};
pub use output::{CallOutput, ChunkSink, NoSink};
pub use params::Params;
pub use protocols::classify;
pub(crate) use protocols::wire;
pub use ratelimit::{provider_wait, RateLimits};

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
            let builder = wire(deployment.protocol).request(
                &self.http,
                deployment,
                request,
                stream,
                &mut params,
            )?;
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
    /// Embeds `request`'s inputs with `deployment` (`providers/embeddings.rs`), within the
    /// deployment's timeout. The answer's vectors are floats, in input order.
    pub async fn embed(
        &self,
        deployment: &Deployment,
        request: &EmbeddingsRequest,
    ) -> Result<CallOutput, ProviderError> {
        let call = embeddings::call(&self.http, deployment, request);
        match tokio::time::timeout(deployment.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::new(
                ErrorClass::Timeout,
                format!("no complete response within {:?}", deployment.timeout),
            )),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::error::class_of_status;
    use sluice_core::config::Protocol;

    /// Every protocol falls back on the same status table when its error body says
    /// nothing more (the copies used to disagree on 402, 408, 499 and 529).
    #[test]
    fn every_protocol_reads_a_bare_status_the_same_way() {
        let protocols = [
            Protocol::OpenAi,
            Protocol::Azure,
            Protocol::Anthropic,
            Protocol::Gemini,
            Protocol::Ollama,
        ];
        for status in [
            400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 499, 500, 502, 503, 504, 529,
        ] {
            let expected = class_of_status(Some(status));
            for p in protocols {
                let got = wire(p).classify("provider", status, "{}").class;
                assert_eq!(got, expected, "{p:?} HTTP {status}");
            }
        }
        assert_eq!(class_of_status(Some(408)), ErrorClass::Timeout);
        assert_eq!(class_of_status(Some(529)), ErrorClass::Overloaded);
        assert_eq!(class_of_status(Some(402)), ErrorClass::Auth);
        assert_eq!(class_of_status(Some(409)), ErrorClass::BadRequest);
        assert_eq!(class_of_status(None), ErrorClass::Server);
    }
}
