//! Property tests: arbitrary bytes never panic the parsers that read what others send —
//! the job envelope (anyone who can publish to NATS), the provider stream decoders (SSE
//! and NDJSON, whatever the provider sends, split anywhere), the chunk accumulator, and
//! the config loader.

use proptest::prelude::*;
use sluice_core::config::Protocol;
use sluice_core::Config;
use sluice_schemas::JobEnvelope;
use sluice_worker::providers::accumulate::Accumulator;
use sluice_worker::providers::chunk::Emitted;
use sluice_worker::providers::StreamDecoder;

const PROTOCOLS: [Protocol; 5] = [
    Protocol::OpenAi,
    Protocol::Azure,
    Protocol::Anthropic,
    Protocol::Gemini,
    Protocol::Ollama,
];

/// Bytes that look enough like provider streams to reach deep into the decoders: SSE
/// fields, NDJSON lines and JSON fragments of every protocol, mixed with noise.
fn streamish() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"event: message_start\n".to_vec()),
        Just(b"event: content_block_delta\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"data: [DONE]\n\n".to_vec()),
        Just(br#"{"choices":[{"index":4294967295,"delta":{"content":"x\u0000"}}]}"#.to_vec()),
        Just(br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":99999999,"function":{"arguments":"{"}}]}}]}"#.to_vec()),
        Just(br#"{"type":"content_block_delta","index":18446744073709551615,"delta":{"type":"text_delta","text":"hi"}}"#.to_vec()),
        Just(br#"{"candidates":[{"index":4294967295,"content":{"parts":[{"text":"a"}]},"finishReason":"STOP"}]}"#.to_vec()),
        Just(br#"{"message":{"role":"assistant","content":"a"},"done":false}"#.to_vec()),
        Just(br#"{"done":true,"prompt_eval_count":-1,"eval_count":1e999}"#.to_vec()),
        Just(br#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1}}"#.to_vec()),
        Just(b"\n".to_vec()),
        Just(vec![0xff, 0xfe, 0x00]),
        proptest::collection::vec(any::<u8>(), 0..32),
    ];
    proptest::collection::vec(pieces, 0..24).prop_map(|v| v.concat())
}

fn decode_all(protocol: Protocol, bytes: &[u8], split: usize) {
    let mut d = StreamDecoder::new(protocol, "m");
    let mut out: Vec<Emitted> = Vec::new();
    let mut acc = Accumulator::new();
    let step = split.max(1);
    for piece in bytes.chunks(step) {
        if d.feed(piece, &mut out).is_err() {
            break;
        }
        for e in out.drain(..) {
            acc.push(&e.chunk);
        }
    }
    let _ = d.finish(&mut out);
    for e in out.drain(..) {
        acc.push(&e.chunk);
    }
    let _ = acc.into_completion();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_envelope_parser(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<JobEnvelope>(&bytes);
    }

    #[test]
    fn envelope_like_json_never_panics_the_envelope_parser(
        id in "[0-9a-f-]{0,40}",
        model in ".{0,16}",
        tier in prop_oneof![Just("\"normal\"".to_string()), Just("7".to_string()), Just("-1".to_string()), ".{0,6}"],
        content in ".{0,32}",
    ) {
        let text = format!(
            r#"{{"id":"{id}","request":{{"model":{model:?},"messages":[{{"role":"user","content":{content:?}}}]}},"tier":{tier}}}"#
        );
        let _ = serde_json::from_str::<JobEnvelope>(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_stream_decoders(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        split in 1usize..64,
    ) {
        for p in PROTOCOLS {
            decode_all(p, &bytes, split);
        }
    }

    #[test]
    fn stream_like_bytes_never_panic_the_stream_decoders(bytes in streamish(), split in 1usize..97) {
        for p in PROTOCOLS {
            decode_all(p, &bytes, split);
        }
    }

    #[test]
    fn arbitrary_text_never_panics_the_config_loader(text in ".{0,400}") {
        let _ = Config::from_yaml(&text, None, &|_: &str| None);
    }

    #[test]
    fn config_like_yaml_never_panics_the_config_loader(
        key in prop_oneof![
            Just("max_body_bytes"), Just("events_max_age_secs"), Just("subject_prefix"),
            Just("safety"), Just("worker"), Just("batches"), Just("limits"),
        ],
        value in prop_oneof![
            Just("-1".to_string()), Just("1e999".to_string()), Just("18446744073709551616".to_string()),
            Just("{ capacity: 0 }".to_string()), Just("[1, 2]".to_string()),
            Just("{ webhook_allow_hosts: [\"*\"], reply_subject_prefixes: [\"$SYS\"] }".to_string()),
            ".{0,24}",
        ],
        model in prop_oneof![Just("openai/x"), Just("nope"), Just(""), Just("anthropic/"), Just("azure/d")],
        timeout in prop_oneof![Just("1e400"), Just("-5"), Just("NaN"), Just("0"), Just("inf")],
    ) {
        let text = format!(
            "model_list:\n  - model_name: g\n    litellm_params:\n      model: {model}\n      timeout: {timeout}\n      rpm: {timeout}\nrouter_settings:\n  num_retries: {timeout}\n  cooldown_time: {timeout}\nsluice:\n  {key}: {value}\n"
        );
        let _ = Config::from_yaml(&text, None, &|_: &str| None);
    }
}
