//! Stream parsing + normalisation per provider: chunks per second on one core and heap
//! allocations per chunk. Run with `cargo bench -p sluice-worker --bench stream_decode`.
//!
//! Each stream is a realistic body (one text delta per event, plus the protocol's opening
//! and closing events) fed to [`StreamDecoder`] one event per read, as a live stream
//! arrives. Figures are printed, never asserted.
//!
//! This bench counts allocations with a wrapping global allocator, which needs
//! `unsafe impl GlobalAlloc`; the library crates keep `#![forbid(unsafe_code)]`, this bench
//! target is not one of them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sluice_core::config::Protocol;
use sluice_worker::providers::accumulate::Accumulator;
use sluice_worker::providers::chunk::Emitted;
use sluice_worker::providers::StreamDecoder;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WORDS: &[&str] = &[" the", " river", " carries", " light", " through", " quiet"];
const CHUNKS: usize = 2_000;

/// (name, protocol, events): each event is one read.
fn streams() -> Vec<(&'static str, Protocol, Vec<String>)> {
    let word = |i: usize| WORDS[i % WORDS.len()];
    let openai = {
        let mut v = vec![r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}"#.to_string() + "\n\n"];
        for i in 0..CHUNKS {
            v.push(format!(r#"data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[{{"index":0,"delta":{{"content":"{}"}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#, word(i)) + "\n\n");
        }
        v.push(r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#.to_string() + "\n\n");
        v.push(r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2000,"total_tokens":2009}}"#.to_string() + "\n\n");
        v.push("data: [DONE]\n\n".into());
        v
    };
    let anthropic = {
        let mut v = vec![
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":849,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n".to_string(),
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
        ];
        for i in 0..CHUNKS {
            v.push(format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n", word(i)));
        }
        v.push(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
                .into(),
        );
        v.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2000}}\n\n".into());
        v.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into());
        v
    };
    let gemini = (0..CHUNKS)
        .map(|i| {
            let finish = if i + 1 == CHUNKS { ",\"finishReason\":\"STOP\"" } else { "" };
            format!("data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{}\"}}],\"role\":\"model\"}}{finish},\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":4,\"candidatesTokenCount\":{},\"totalTokenCount\":{}}},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"IZI2abc\"}}\n\n", word(i), i + 1, i + 5)
        })
        .collect();
    let ollama = {
        let mut v: Vec<String> = (0..CHUNKS)
            .map(|i| format!("{{\"model\":\"llama3.2\",\"created_at\":\"2025-07-07T20:32:53.8Z\",\"message\":{{\"role\":\"assistant\",\"content\":\"{}\"}},\"done\":false}}\n", word(i)))
            .collect();
        v.push("{\"model\":\"llama3.2\",\"created_at\":\"2025-07-07T20:32:53.8Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":26,\"eval_count\":2000,\"total_duration\":4883583458,\"load_duration\":1334875,\"prompt_eval_duration\":342546000,\"eval_duration\":4535599000}\n".into());
        v
    };
    vec![
        ("openai", Protocol::OpenAi, openai),
        ("anthropic", Protocol::Anthropic, anthropic),
        ("gemini", Protocol::Gemini, gemini),
        ("ollama", Protocol::Ollama, ollama),
    ]
}

/// Decodes one stream; returns the chunks emitted.
fn decode(protocol: Protocol, events: &[String], out: &mut Vec<Emitted>, fold: bool) -> usize {
    let mut d = StreamDecoder::new(protocol, "bench-model");
    let mut acc = Accumulator::new();
    let mut n = 0;
    for e in events {
        d.feed(e.as_bytes(), out).expect("valid stream");
        n += out.len();
        if fold {
            for c in out.iter() {
                acc.push(&c.chunk);
            }
        }
        out.clear();
    }
    d.finish(out).expect("complete stream");
    n += out.len();
    out.clear();
    if fold {
        std::hint::black_box(acc.finish());
    }
    n
}

fn main() {
    println!(
        "stream parsing + normalisation, {CHUNKS} text chunks per stream, one event per read, one core"
    );
    println!(
        "{:<10} {:>14} {:>12} {:>14} | {:>12} {:>14}",
        "provider", "chunks/s", "ns/chunk", "allocs/chunk", "+accumulate", "allocs/chunk"
    );
    for (name, protocol, events) in streams() {
        let mut out = Vec::with_capacity(8);
        let bytes: usize = events.iter().map(String::len).sum();
        // Warm up, then time enough passes for a stable figure.
        for _ in 0..3 {
            decode(protocol, &events, &mut out, false);
        }
        let mut row = Vec::new();
        for fold in [false, true] {
            let passes = 40;
            let a0 = ALLOCS.load(Ordering::Relaxed);
            let t0 = Instant::now();
            let mut chunks = 0;
            for _ in 0..passes {
                chunks += decode(protocol, &events, &mut out, fold);
            }
            let elapsed = t0.elapsed();
            let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
            let per_chunk_ns = elapsed.as_nanos() as f64 / chunks as f64;
            row.push((
                chunks as f64 / elapsed.as_secs_f64(),
                per_chunk_ns,
                allocs as f64 / chunks as f64,
            ));
        }
        println!(
            "{name:<10} {:>14.0} {:>12.0} {:>14.2} | {:>9.0} ns {:>14.2}   ({} KiB/stream)",
            row[0].0,
            row[0].1,
            row[0].2,
            row[1].1,
            row[1].2,
            bytes / 1024
        );
    }
}
