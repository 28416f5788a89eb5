//! What a call hands back: [`CallOutput`] for a successful call, and the [`ChunkSink`]
//! that receives a streamed call's chunks as they arrive. A leaf: it uses none of the
//! other provider files but `ratelimit.rs`.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use sluice_schemas::job::JobResult;
use sluice_schemas::openai::{ChatCompletion, ChatCompletionChunk, Usage};

use super::ratelimit::RateLimits;

/// Receives each chunk of a streamed call as it arrives.
pub trait ChunkSink: Send {
    /// `raw` is the chunk's JSON as the provider sent it when that already is an OpenAI
    /// chunk (so it can be forwarded without re-encoding or copying), otherwise `None`.
    fn chunk(
        &mut self,
        chunk: &ChatCompletionChunk,
        raw: Option<Bytes>,
    ) -> impl Future<Output = ()> + Send;
}

/// A sink that drops everything (non-streamed calls, tests).
pub struct NoSink;

impl ChunkSink for NoSink {
    async fn chunk(&mut self, _: &ChatCompletionChunk, _: Option<Bytes>) {}
}

/// A successful call.
#[derive(Debug, Clone)]
pub struct CallOutput {
    /// The `chat.completion` (a chat call) or the embeddings (an embeddings call).
    pub result: JobResult,
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

impl CallOutput {
    /// The completion of a chat call.
    pub fn completion(&self) -> Option<&ChatCompletion> {
        self.result.chat()
    }
}
