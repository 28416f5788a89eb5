//! OpenAI Embeddings shapes: the request an embeddings job carries (`POST /v1/embeddings`,
//! `POST /v1/jobs`, batch lines with `url: /v1/embeddings`) and the `list` of embeddings
//! every provider's answer is normalised to.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most inputs one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// An embeddings request as OpenAI defines it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EmbeddingsRequest {
    /// The model group.
    pub model: String,
    pub input: EmbeddingInput,
    /// Output dimensions (models that can shorten their vectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// `float` (the default) or `base64` (little-endian float32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Parameters not named above, passed through to OpenAI-compatible providers as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What to embed: one text, several texts, or pre-tokenised input.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// One input of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputItem<'a> {
    Text(&'a str),
    Tokens(&'a [u32]),
}

impl EmbeddingInput {
    /// The inputs one by one (a single text or token list is one input).
    pub fn items(&self) -> Vec<InputItem<'_>> {
        match self {
            EmbeddingInput::Text(t) => vec![InputItem::Text(t)],
            EmbeddingInput::Texts(ts) => ts.iter().map(|t| InputItem::Text(t)).collect(),
            EmbeddingInput::Tokens(t) => vec![InputItem::Tokens(t)],
            EmbeddingInput::TokenLists(ls) => ls.iter().map(|t| InputItem::Tokens(t)).collect(),
        }
    }

    /// The input made of `items` (texts, or token lists).
    pub fn from_items(items: &[InputItem<'_>]) -> EmbeddingInput {
        if items.iter().all(|i| matches!(i, InputItem::Text(_))) {
            EmbeddingInput::Texts(
                items
                    .iter()
                    .filter_map(|i| match i {
                        InputItem::Text(t) => Some(t.to_string()),
                        InputItem::Tokens(_) => None,
                    })
                    .collect(),
            )
        } else {
            EmbeddingInput::TokenLists(
                items
                    .iter()
                    .map(|i| match i {
                        InputItem::Tokens(t) => t.to_vec(),
                        InputItem::Text(_) => Vec::new(),
                    })
                    .collect(),
            )
        }
    }

    /// Why this input cannot be embedded, if it cannot (OpenAI's rules: at least one and at
    /// most [`MAX_INPUTS`] inputs, none empty).
    pub fn invalid(&self) -> Option<String> {
        let items = self.items();
        if items.is_empty() {
            return Some("`input` must not be empty".into());
        }
        if items.len() > MAX_INPUTS {
            return Some(format!(
                "`input` has {} items; at most {MAX_INPUTS} are allowed",
                items.len()
            ));
        }
        items.iter().enumerate().find_map(|(i, item)| {
            let empty = match item {
                InputItem::Text(t) => t.is_empty(),
                InputItem::Tokens(t) => t.is_empty(),
            };
            empty.then(|| format!("`input[{i}]` must not be empty"))
        })
    }
}

/// How the vectors of the answer are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// The answer: `{"object":"list","data":[{"object":"embedding","index","embedding"}],...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmbeddingsResponse {
    #[serde(default)]
    pub object: String,
    pub data: Vec<Embedding>,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub usage: EmbeddingsUsage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Embedding {
    #[serde(default)]
    pub object: String,
    pub index: u32,
    pub embedding: Vector,
}

/// A vector as floats, or as base64 of its little-endian float32 bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

impl EmbeddingsResponse {
    /// The answer for `vectors` (in input order), as `model` produced them.
    pub fn new(model: &str, vectors: Vec<Vector>, prompt_tokens: u64) -> Self {
        EmbeddingsResponse {
            object: "list".into(),
            data: vectors
                .into_iter()
                .enumerate()
                .map(|(i, v)| Embedding {
                    object: "embedding".into(),
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    embedding: v,
                })
                .collect(),
            model: model.to_string(),
            usage: EmbeddingsUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_form_parses_and_empty_inputs_are_named() {
        let r: EmbeddingsRequest =
            serde_json::from_str(r#"{"model":"e","input":"hi","dimensions":8}"#).unwrap();
        assert_eq!(r.input.items(), vec![InputItem::Text("hi")]);
        assert_eq!(r.dimensions, Some(8));
        let r: EmbeddingsRequest =
            serde_json::from_str(r#"{"model":"e","input":[[1,2],[3]],"encoding_format":"base64"}"#)
                .unwrap();
        assert_eq!(r.input.items().len(), 2);
        assert_eq!(r.encoding_format, Some(EncodingFormat::Base64));
        let r: EmbeddingsRequest =
            serde_json::from_str(r#"{"model":"e","input":["a",""]}"#).unwrap();
        assert_eq!(
            r.input.invalid().as_deref(),
            Some("`input[1]` must not be empty")
        );
        let r: EmbeddingsRequest = serde_json::from_str(r#"{"model":"e","input":[]}"#).unwrap();
        assert!(r.input.invalid().is_some());
        assert!(serde_json::from_str::<EmbeddingsRequest>(
            r#"{"model":"e","input":"x","encoding_format":"int8"}"#
        )
        .is_err());
    }
}
