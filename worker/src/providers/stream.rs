//! Sending a prepared request and turning the response into a [`CallOutput`]: the shared
//! driver every adapter uses. A streamed body goes through a [`StreamDecoder`]
//! (`decode.rs`).
//!
//! Owns: status checks, time to first token (`stream_timeout`), stalls
//! (`stream_idle_timeout`) and the content-filter check on the final completion. Does not
//! own framing (`decode.rs`), request mapping or error wording: those are per protocol.

use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_core::config::Deployment;
use sluice_schemas::job::JobResult;
use sluice_schemas::openai::{ChatCompletion, ChatCompletionChunk};
use sluice_schemas::ErrorClass;

use super::accumulate::Accumulator;
use super::chunk::Emitted;
use super::decode::StreamDecoder;
use super::error::{redirect_error, ProviderError};
use super::output::{CallOutput, ChunkSink};
use super::protocols::{classify, wire};
use super::ratelimit::RateLimits;

/// Sends `builder` and reads the answer: a whole completion, or a stream fed to `sink`.
pub(crate) async fn execute<S: ChunkSink>(
    builder: reqwest::RequestBuilder,
    d: &Deployment,
    stream: bool,
    sink: &mut S,
    started: Instant,
) -> Result<CallOutput, ProviderError> {
    let resp = builder
        .send()
        .await
        .map_err(|e| ProviderError::from_reqwest(&e))?;
    let status = resp.status().as_u16();
    let rate_limits = RateLimits::from_headers(resp.headers());
    if resp.status().is_redirection() {
        return Err(redirect_error(status, resp.headers()));
    }
    if !resp.status().is_success() {
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        return Err(classify(d, status, &headers, &text));
    }
    let with_limits = |mut e: ProviderError| {
        e.status.get_or_insert(status);
        e.rate_limits = rate_limits.map(Box::new);
        e
    };
    if !stream {
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::from_reqwest(&e))?;
        let completion = wire(d.protocol)
            .completion(&bytes, &d.model)
            .map_err(with_limits)?;
        if let Some(e) = refusal_error(&completion) {
            return Err(with_limits(e));
        }
        return Ok(CallOutput {
            usage: completion.usage,
            result: JobResult::Chat(completion),
            ttft: None,
            latency: started.elapsed(),
            dropped_params: Vec::new(),
            rate_limits,
        });
    }

    let mut body = resp.bytes_stream();
    let mut decoder = StreamDecoder::for_wire(wire(d.protocol), &d.model);
    let mut out: Vec<Emitted> = Vec::new();
    let mut acc = Accumulator::new();
    let mut ttft: Option<Duration> = None;
    loop {
        let next = match (ttft, d.stream_timeout) {
            (None, Some(limit)) => {
                let left = limit.saturating_sub(started.elapsed());
                tokio::time::timeout(left, body.next()).await.map_err(|_| {
                    ProviderError::new(
                        ErrorClass::Timeout,
                        format!("no first token within stream_timeout {limit:?}"),
                    )
                })?
            }
            (Some(_), _) if d.stream_idle_timeout.is_some() => {
                let idle = d.stream_idle_timeout.unwrap_or_default();
                tokio::time::timeout(idle, body.next()).await.map_err(|_| {
                    ProviderError::new(
                        ErrorClass::Timeout,
                        format!("stream stalled: no data for stream_idle_timeout {idle:?}"),
                    )
                })?
            }
            _ => body.next().await,
        };
        let (fed, ended) = match next {
            Some(Ok(bytes)) => match decoder.feed(&bytes, &mut out) {
                // The terminator came: whatever follows is not part of the response.
                Ok(()) if decoder.is_terminated() => (decoder.finish(&mut out), true),
                fed => (fed, false),
            },
            Some(Err(e)) => {
                let mut err = ProviderError::from_reqwest(&e);
                if err.class != ErrorClass::Timeout {
                    err.class = ErrorClass::TruncatedStream;
                }
                (Err(err), true)
            }
            None => (decoder.finish(&mut out), true),
        };
        for e in out.drain(..) {
            if ttft.is_none() && has_output(&e.chunk) {
                ttft = Some(started.elapsed());
            }
            acc.push(&e.chunk);
            sink.chunk(&e.chunk, e.raw).await;
        }
        fed.map_err(with_limits)?;
        if ended {
            break;
        }
    }
    let usage = acc.usage();
    let completion = acc.into_completion().map_err(with_limits)?;
    if let Some(e) = refusal_error(&completion) {
        return Err(with_limits(e));
    }
    Ok(CallOutput {
        result: JobResult::Chat(completion),
        usage,
        ttft,
        latency: started.elapsed(),
        dropped_params: Vec::new(),
        rate_limits,
    })
}

/// A chunk that carries something a user sees (not just the opening role).
fn has_output(c: &ChatCompletionChunk) -> bool {
    c.choices.iter().any(|ch| {
        let d = &ch.delta;
        d.content.as_deref().is_some_and(|s| !s.is_empty())
            || d.reasoning_content
                .as_deref()
                .is_some_and(|s| !s.is_empty())
            || d.refusal.is_some()
            || d.tool_calls.is_some()
            || ch.finish_reason.is_some()
    })
}

/// A `content_filter` finish on every choice is a policy block, not a result.
fn refusal_error(c: &ChatCompletion) -> Option<ProviderError> {
    let filtered = !c.choices.is_empty()
        && c.choices
            .iter()
            .all(|ch| ch.finish_reason.as_deref() == Some("content_filter"));
    filtered.then(|| {
        let said = c
            .choices
            .iter()
            .find_map(|ch| ch.message.refusal.clone())
            .unwrap_or_default();
        ProviderError::new(
            ErrorClass::ContentPolicy,
            if said.is_empty() {
                "the provider's content filter blocked the response".to_string()
            } else {
                format!("the provider refused: {said}")
            },
        )
    })
}
