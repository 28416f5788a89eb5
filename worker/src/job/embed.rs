//! What an embeddings job does differently from a chat job, for the pipeline
//! (`pipeline.rs`): its inputs are what is checked and estimated, its call is
//! [`Providers::embed`](crate::providers::Providers::embed), and its answer takes the
//! caller's `encoding_format` once the whole answer is known.

use sluice_schemas::embeddings::{EmbeddingsRequest, EncodingFormat, Vector};
use sluice_schemas::job::JobResult;

use crate::providers::embeddings::to_base64;
use crate::providers::CallOutput;
use crate::tokens::{self, Tokenizer};

/// Estimated input tokens of `request` with `tokenizer`.
pub(super) fn estimate(tokenizer: Tokenizer, request: &EmbeddingsRequest) -> u64 {
    request
        .input
        .items()
        .into_iter()
        .map(|i| tokens::embedding_input(tokenizer, i))
        .sum()
}

/// A provider that reported no usage (Gemini) is billed the estimate; the attempt row
/// flags it (`CallOutput::usage` stays `None`).
pub(super) fn fill_usage(out: &mut CallOutput, estimate: u64) {
    if out.usage.is_some() {
        return;
    }
    if let JobResult::Embeddings(e) = &mut out.result {
        e.usage.prompt_tokens = estimate;
        e.usage.total_tokens = estimate;
    }
}

/// The answer in the caller's `encoding_format`, under the model group's name.
pub(super) fn shape(result: &mut JobResult, request: &EmbeddingsRequest) {
    let JobResult::Embeddings(e) = result else {
        return;
    };
    e.model.clone_from(&request.model);
    if request.encoding_format == Some(EncodingFormat::Base64) {
        for d in &mut e.data {
            if let Vector::Float(f) = &d.embedding {
                d.embedding = Vector::Base64(to_base64(f));
            }
        }
    }
}
