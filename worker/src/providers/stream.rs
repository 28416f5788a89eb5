//! Sending a prepared request and turning the response into a [`CallOutput`]: the shared
//! driver every adapter uses, and [`StreamDecoder`], which frames a response body (SSE or
//! NDJSON) and hands each payload to the protocol's normaliser, which emits OpenAI
//! `chat.completion.chunk`s.
//!
//! Owns: status checks, time to first token (`stream_timeout`), truncation (a stream is
//! complete only after its protocol's terminator) and the content-filter check on the
//! final completion. Does not own request mapping or error wording: those are per protocol.

use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_core::config::{Deployment, Protocol};
use sluice_schemas::job::JobResult;
use sluice_schemas::openai::{ChatCompletion, ChatCompletionChunk};
use sluice_schemas::sse::{SseEvent, SseParser, MAX_LINE};
use sluice_schemas::ErrorClass;

use super::accumulate::Accumulator;
use super::chunk::{Emitted, EventError};
use super::error::ProviderError;
use super::wire::{Framing, Normalise};
use super::{classify, wire, CallOutput, ChunkSink, RateLimits};

/// Splits a body into newline-delimited JSON lines (Ollama).
#[derive(Debug, Default)]
struct NdjsonParser {
    buf: Vec<u8>,
}

impl NdjsonParser {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), ProviderError> {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + end];
            start += end + 1;
            Self::line(line, out);
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            return Err(ProviderError::new(
                ErrorClass::Server,
                format!("NDJSON line longer than {MAX_LINE} bytes"),
            ));
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<SseEvent>) {
        let rest = std::mem::take(&mut self.buf);
        Self::line(&rest, out);
    }

    fn line(line: &[u8], out: &mut Vec<SseEvent>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        out.push(SseEvent {
            event: None,
            data: String::from_utf8_lossy(line).into_owned(),
        });
    }
}

#[derive(Debug)]
enum Parser {
    Sse(SseParser),
    Ndjson(NdjsonParser),
}

/// Frames a streamed body and normalises each payload to OpenAI chunks, for one protocol.
///
/// Feed it the body as it arrives, then call [`StreamDecoder::finish`] when the connection
/// ends: that is where a stream cut before its terminator becomes `truncated_stream`.
#[derive(Debug)]
pub struct StreamDecoder {
    parser: Parser,
    norm: Box<dyn Normalise>,
    events: Vec<SseEvent>,
    chunks: usize,
}

impl StreamDecoder {
    /// `model` names the chunks of protocols whose payloads do not carry it.
    pub fn new(protocol: Protocol, model: &str) -> Self {
        let (framing, norm) = wire(protocol).stream(model);
        let parser = match framing {
            Framing::Sse => Parser::Sse(SseParser::new()),
            Framing::Ndjson => Parser::Ndjson(NdjsonParser::default()),
        };
        StreamDecoder {
            parser,
            norm,
            events: Vec::new(),
            chunks: 0,
        }
    }

    /// Adds body bytes; pushes the chunks they complete onto `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Emitted>) -> Result<(), ProviderError> {
        match &mut self.parser {
            Parser::Sse(p) => p.feed(bytes, &mut self.events).map_err(|e| {
                ProviderError::new(ErrorClass::Server, format!("malformed stream: {e}"))
            })?,
            Parser::Ndjson(p) => p.feed(bytes, &mut self.events)?,
        }
        self.drain(out, false)
    }

    /// The body ended: flushes a last unterminated payload, and fails with
    /// `truncated_stream` if the protocol's terminator never came.
    pub fn finish(&mut self, out: &mut Vec<Emitted>) -> Result<(), ProviderError> {
        match &mut self.parser {
            Parser::Sse(p) => p.finish(&mut self.events),
            Parser::Ndjson(p) => p.finish(&mut self.events),
        }
        self.drain(out, true)?;
        if !self.norm.complete() {
            return Err(ProviderError::new(
                ErrorClass::TruncatedStream,
                format!(
                    "stream ended after {} chunks without {}",
                    self.chunks,
                    self.norm.terminator()
                ),
            ));
        }
        self.norm.end(out);
        Ok(())
    }

    /// Whether the protocol's explicit terminator has been seen, so the rest of the body
    /// can be ignored. Gemini has none: its stream ends when the server closes it.
    pub fn is_terminated(&self) -> bool {
        self.norm.explicit_terminator() && self.norm.complete()
    }

    fn drain(&mut self, out: &mut Vec<Emitted>, at_eof: bool) -> Result<(), ProviderError> {
        let before = out.len();
        let mut result = Ok(());
        for ev in self.events.drain(..) {
            match self.norm.event(ev, out) {
                Ok(()) => {}
                Err(EventError::Provider(e)) => {
                    result = Err(e);
                    break;
                }
                // A payload cut off by the end of the body is a truncation; garbage in the
                // middle of a live stream is the provider's fault.
                Err(EventError::Malformed) if at_eof => {
                    result = Err(ProviderError::new(
                        ErrorClass::TruncatedStream,
                        "stream ended inside a payload",
                    ));
                    break;
                }
                Err(EventError::Malformed) => {
                    result = Err(ProviderError::new(
                        ErrorClass::Server,
                        "provider sent a malformed stream payload",
                    ));
                    break;
                }
            }
        }
        self.events.clear();
        self.chunks += out.len() - before;
        result
    }
}

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
    let mut decoder = StreamDecoder::new(d.protocol, &d.model);
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
            sink.chunk(&e.chunk, e.raw.as_deref()).await;
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

/// A provider's 3xx: not followed (it would carry the prompt, and a header key, to
/// wherever it points); an attempt error naming the Location without its query string.
pub(super) fn redirect_error(status: u16, headers: &reqwest::header::HeaderMap) -> ProviderError {
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| l.split(['?', '#']).next().unwrap_or_default().to_string())
        .unwrap_or_else(|| "(no Location)".into());
    let mut e = ProviderError::new(
        ErrorClass::Server,
        format!("provider answered {status} redirecting to {location}; redirects are not followed"),
    );
    e.status = Some(status);
    e
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_split_across_reads_and_crlf() {
        let mut p = NdjsonParser::default();
        let mut out = Vec::new();
        p.feed(b"{\"a\":1}\r\n\n{\"b\"", &mut out).unwrap();
        p.feed(b":2}\n{\"c\":3}", &mut out).unwrap();
        p.finish(&mut out);
        let data: Vec<&str> = out.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
    }
}
