//! Incremental Server-Sent Events parser (the event-stream rules every provider's stream follows).
//!
//! Feeds on arbitrary byte slices as they come off the socket: events split across reads,
//! `\n`, `\r\n` and `\r` line ends, `:` comments (keep-alives), multi-line `data:` and a
//! last event without its blank line are all handled. Does not allocate per line; an
//! event's data is one `String`.

/// One event: the `event:` name (if any) and the joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Where the next unparsed line starts in `buf`.
    pos: usize,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// The previous chunk ended in `\r`: a leading `\n` belongs to it.
    pending_cr: bool,
}

/// An SSE stream may not grow a single line past this (protects the worker's memory).
pub const MAX_LINE: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("SSE line longer than {MAX_LINE} bytes")]
pub struct LineTooLong;

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), LineTooLong> {
        let mut bytes = bytes;
        if self.pending_cr {
            self.pending_cr = false;
            if bytes.first() == Some(&b'\n') {
                bytes = &bytes[1..];
            }
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let rest = &self.buf[self.pos..];
            let Some(end) = memchr::memchr2(b'\n', b'\r', rest) else {
                break;
            };
            let line_end = self.pos + end;
            let mut next = line_end + 1;
            if self.buf[line_end] == b'\r' {
                match self.buf.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            let (start, stop) = (self.pos, line_end);
            self.pos = next;
            self.line(start, stop, out);
        }
        // Compact once the consumed prefix dominates.
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.len() - self.pos > MAX_LINE {
            return Err(LineTooLong);
        }
        Ok(())
    }

    /// The stream ended: a last event without its blank line still counts.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if self.pos < self.buf.len() {
            let (start, stop) = (self.pos, self.buf.len());
            self.pos = stop;
            self.line(start, stop, out);
        }
        self.dispatch(out);
        self.buf.clear();
        self.pos = 0;
    }

    fn line(&mut self, start: usize, stop: usize, out: &mut Vec<SseEvent>) {
        let line = &self.buf[start..stop];
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                // Checked as UTF-8 first (fast on the ASCII providers send); only a
                // payload that is not gets the slow replacing conversion.
                match std::str::from_utf8(value) {
                    Ok(text) => self.data.push_str(text),
                    Err(_) => self.data.push_str(&String::from_utf8_lossy(value)),
                }
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {} // id, retry and unknown fields carry nothing we use
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
            });
        }
        self.event = None;
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in input.chunks(piece) {
            p.feed(c, &mut out).unwrap();
        }
        p.finish(&mut out);
        out
    }

    #[test]
    fn crlf_comments_and_split_reads_give_the_same_events() {
        let input = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: message_stop\r\ndata: {\"b\":2}\r\n\r\ndata: [DONE]";
        let want = vec![
            SseEvent {
                event: None,
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                event: Some("message_stop".into()),
                data: "{\"b\":2}".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        for piece in 1..input.len() {
            assert_eq!(parse_in_pieces(input, piece), want, "piece size {piece}");
        }
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let got = parse_in_pieces(b"data: a\ndata: b\n\n", 64);
        assert_eq!(got[0].data, "a\nb");
    }

    #[test]
    fn bare_cr_line_ends_work() {
        let got = parse_in_pieces(b"data: x\r\rdata: y\r\r", 3);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].data, "y");
    }
}
