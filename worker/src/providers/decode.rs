//! [`StreamDecoder`]: frames a streamed response body (SSE or NDJSON) and hands each
//! payload to its protocol's normaliser ([`Normalise`]), which emits OpenAI
//! `chat.completion.chunk`s.
//!
//! Owns framing and truncation (a stream is complete only after its protocol's
//! terminator). A leaf: it knows protocols only through the [`Wire`] trait, so the
//! adapters' tests can decode with it without importing the driver (`stream.rs`).

use sluice_schemas::sse::{SseEvent, SseParser, MAX_LINE};
use sluice_schemas::ErrorClass;

use super::chunk::{Emitted, EventError};
use super::error::ProviderError;
use super::wire::{Framing, Normalise, Wire};

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
    /// A decoder for `wire`'s streams; `model` names the chunks of protocols whose
    /// payloads do not carry it.
    pub(crate) fn for_wire(wire: &dyn Wire, model: &str) -> Self {
        let (framing, norm) = wire.stream(model);
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
