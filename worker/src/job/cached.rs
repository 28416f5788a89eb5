//! The response cache's part in one job (`worker/src/cache.rs` is the cache): the lookup
//! before admission, the job a hit ends with (no call, cost 0, streamed jobs replayed as
//! chunks), and the write after a successful call. An embeddings job looks up each input:
//! a full hit makes no call, a partial one sends only the missing inputs upstream and
//! merges the answer back in input order.

use bytes::Bytes;
use chrono::Utc;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::Decimal;
use sluice_core::store::{AttemptRecord, JobOutcome};
use sluice_schemas::embeddings::{EmbeddingsRequest, EmbeddingsResponse, Vector};
use sluice_schemas::job::JobResult;
use sluice_schemas::openai::{
    ChatCompletion, ChatCompletionChunk, ChatRequest, ChunkChoice, Content, Delta,
    FunctionCallDelta, Role, ToolCall, ToolCallDelta, Usage,
};
use sluice_schemas::{DoneEvent, JobStatus};

use super::outcome::Finished;
use crate::cache::{Cache, ChatEntry, Controls, Plan, VectorEntry};
use crate::events::EventPublisher;
use crate::providers::embeddings::narrowed;
use crate::providers::CallOutput;
use crate::Ctx;

/// What the cache does for one job.
pub(super) struct JobCache {
    plan: Plan,
    kind: Kind,
}

enum Kind {
    Chat {
        key: String,
    },
    Embeddings {
        keys: Vec<String>,
        /// Per input of `full`: the entry the cache had.
        hits: Vec<Option<VectorEntry>>,
        /// The request as submitted (the job's may be narrowed to the misses).
        full: Box<EmbeddingsRequest>,
    },
}

/// An answer the cache had.
pub(super) struct Hit {
    pub(super) result: JobResult,
    usage: Usage,
    saved: Option<Decimal>,
}

/// Takes the request's `cache` controls out (no provider takes them) and, when the cache
/// is on and serves this request, plans its part.
pub(super) fn plan(
    ctx: &Ctx,
    group: &str,
    request: &mut ChatRequest,
    embeddings: Option<&mut EmbeddingsRequest>,
) -> Option<JobCache> {
    let controls = match embeddings {
        Some(e) => {
            let c = Controls::take(&mut e.extra);
            let cache = ctx.cache.as_ref()?;
            let plan = cache.plan(&c, false)?;
            let keys = Cache::embedding_keys(&plan, group, e);
            return Some(JobCache {
                plan,
                kind: Kind::Embeddings {
                    hits: Vec::new(),
                    keys,
                    full: Box::new(e.clone()),
                },
            });
        }
        None => Controls::take(&mut request.extra),
    };
    let cache = ctx.cache.as_ref()?;
    let plan = cache.plan(&controls, true)?;
    let key = Cache::chat_key(&plan, group, request);
    Some(JobCache {
        plan,
        kind: Kind::Chat { key },
    })
}

/// Looks the job up: a whole answer, or `None` (for an embeddings job whose inputs were
/// partly cached, `embeddings` is narrowed to the others).
pub(super) async fn look_up(
    ctx: &Ctx,
    jc: &mut JobCache,
    embeddings: &mut Option<Box<EmbeddingsRequest>>,
) -> Option<Hit> {
    let cache = ctx.cache.as_ref()?;
    if !jc.plan.lookup {
        return None;
    }
    match &mut jc.kind {
        Kind::Chat { key } => look_up_chat(cache, &jc.plan, std::slice::from_ref(key)).await,
        Kind::Embeddings { keys, hits, full } => {
            *hits = cache.get::<VectorEntry>(keys).await;
            // Entries older than the request's `s-maxage` are misses.
            for h in hits.iter_mut() {
                if h.as_ref().is_some_and(|e| !jc.plan.fresh(e.stored_at_ms)) {
                    *h = None;
                }
            }
            vectors_hit(hits, full, embeddings)
        }
    }
}

/// A chat job's lookup (of its one key): the cached completion, if any (and young
/// enough for the request's `s-maxage`).
async fn look_up_chat(cache: &Cache, plan: &Plan, key: &[String]) -> Option<Hit> {
    let entry: Option<ChatEntry> = cache
        .get(key)
        .await
        .into_iter()
        .next()
        .flatten()
        .filter(|e: &ChatEntry| plan.fresh(e.stored_at_ms));
    crate::metrics::cache_lookup(
        "chat",
        u64::from(entry.is_some()),
        u64::from(entry.is_none()),
    );
    let entry = entry?;
    let usage = entry.usage.unwrap_or_default();
    Some(Hit {
        result: entry.result,
        usage,
        saved: entry.cost.and_then(Decimal::from_f64),
    })
}

/// An embeddings job's lookup, given the cache's entry per input: the whole answer when
/// every input was cached; with some cached, `embeddings` narrowed to the others.
fn vectors_hit(
    hits: &[Option<VectorEntry>],
    full: &EmbeddingsRequest,
    embeddings: &mut Option<Box<EmbeddingsRequest>>,
) -> Option<Hit> {
    let found = hits.iter().filter(|h| h.is_some()).count();
    crate::metrics::cache_lookup("embedding", found as u64, (hits.len() - found) as u64);
    if found == 0 {
        return None;
    }
    if found < hits.len() {
        let missing: Vec<usize> = (0..hits.len()).filter(|&i| hits[i].is_none()).collect();
        *embeddings = Some(Box::new(narrowed(full, &missing)));
        return None;
    }
    let tokens = hits.iter().flatten().map(|h| h.tokens).sum();
    let vectors = hits
        .iter()
        .flatten()
        .map(|h| Vector::Float(h.vector.clone()))
        .collect();
    Some(Hit {
        result: JobResult::Embeddings(EmbeddingsResponse::new(&full.model, vectors, tokens)),
        usage: Usage::new(tokens, 0),
        saved: saved(hits),
    })
}

fn saved(hits: &[Option<VectorEntry>]) -> Option<Decimal> {
    hits.iter()
        .flatten()
        .filter_map(|h| h.cost.and_then(Decimal::from_f64))
        .reduce(|a, b| a + b)
}

/// After a successful call: stores what the cache lacked (unless `no-store`) and, for a
/// partly cached embeddings job, merges the cached inputs into `out` in input order.
/// Returns what the cached part saved.
pub(super) fn after_call(
    ctx: &Ctx,
    jc: &JobCache,
    out: &mut CallOutput,
    last: Option<&AttemptRecord>,
) -> Option<Decimal> {
    let cache = ctx.cache.as_ref()?;
    let cost = last.and_then(|r| r.cost).and_then(|c| c.to_f64());
    match &jc.kind {
        Kind::Chat { key } => {
            let empty = out.completion().is_none_or(|c| {
                c.choices
                    .iter()
                    .all(|ch| ch.message.content.is_none() && ch.message.tool_calls.is_none())
            });
            if jc.plan.store && !empty {
                let entry = ChatEntry {
                    result: out.result.clone(),
                    usage: out.usage,
                    cost,
                    stored_at_ms: crate::cache::now_ms(),
                };
                cache.put(vec![(key.clone(), entry)], jc.plan.ttl);
            }
            None
        }
        Kind::Embeddings { keys, hits, .. } => {
            let JobResult::Embeddings(answer) = &mut out.result else {
                return None;
            };
            if jc.plan.store {
                store_vectors(cache, jc, keys, hits, answer, cost);
            }
            if hits.iter().all(Option::is_none) {
                return None;
            }
            merge(hits, answer);
            saved(hits)
        }
    }
}

/// Stores the vectors of the inputs the cache lacked (each with its share of the call's
/// tokens and cost).
fn store_vectors(
    cache: &Cache,
    jc: &JobCache,
    keys: &[String],
    hits: &[Option<VectorEntry>],
    answer: &EmbeddingsResponse,
    cost: Option<f64>,
) {
    let missing: Vec<usize> = if hits.is_empty() {
        (0..keys.len()).collect()
    } else {
        (0..hits.len()).filter(|&i| hits[i].is_none()).collect()
    };
    let tokens = answer.usage.prompt_tokens;
    let n = missing.len().max(1) as u64;
    let entries = missing
        .iter()
        .zip(&answer.data)
        .filter_map(|(&i, d)| match &d.embedding {
            Vector::Float(v) => Some((
                keys[i].clone(),
                VectorEntry {
                    vector: v.clone(),
                    tokens: tokens / n,
                    cost: cost.map(|c| c / n as f64),
                    stored_at_ms: crate::cache::now_ms(),
                },
            )),
            Vector::Base64(_) => None,
        })
        .collect();
    cache.put(entries, jc.plan.ttl);
}

/// Puts the cached inputs back in their places among the vectors the call returned.
fn merge(hits: &[Option<VectorEntry>], answer: &mut EmbeddingsResponse) {
    let mut fresh = std::mem::take(&mut answer.data).into_iter();
    let vectors: Vec<Vector> = hits
        .iter()
        .map(|h| match h {
            Some(h) => Vector::Float(h.vector.clone()),
            None => fresh
                .next()
                .map(|d| d.embedding)
                .unwrap_or(Vector::Float(Vec::new())),
        })
        .collect();
    *answer = EmbeddingsResponse::new(&answer.model, vectors, answer.usage.prompt_tokens);
}

/// The job's end for a hit: no attempt, cost 0, `cache_hit`; a streamed job gets the
/// answer as chunks first.
pub(super) async fn finish(
    mut base: JobOutcome,
    hit: Hit,
    mut publisher: EventPublisher,
    stream: bool,
    attempts: u32,
) -> Finished {
    let Hit {
        mut result,
        usage,
        saved,
    } = hit;
    if let (true, JobResult::Chat(c)) = (stream, &result) {
        for chunk in replay(c, usage) {
            if let Ok(body) = serde_json::to_vec(&chunk) {
                publisher.chunk(0, Bytes::from(body)).await;
            }
        }
    }
    if let JobResult::Chat(c) = &mut result {
        c.usage = Some(usage);
    }
    base.status = JobStatus::Succeeded;
    base.result = serde_json::value::to_raw_value(&result).ok();
    base.usage = serde_json::to_value(usage).ok();
    base.cost = Some(Decimal::ZERO);
    base.cache_hit = true;
    base.cost_saved = saved;
    base.attempts = attempts;
    base.finished_at = Utc::now();
    let done = DoneEvent {
        job_id: base.id,
        status: JobStatus::Succeeded,
        // The result is the row's (`outcome.rs`, `Finished::done`).
        result: None,
        usage: Some(usage),
        cost: Some(Decimal::ZERO),
        attempts,
        error: None,
    };
    Finished {
        outcome: base,
        attempts: Vec::new(),
        done,
        publisher,
        last_attempt: attempts,
        settling: None,
    }
}

/// A cached completion as the chunks a stream of it would have sent: the role and the
/// text word by word, tool calls whole, the finish, then the usage.
fn replay(c: &ChatCompletion, usage: Usage) -> Vec<ChatCompletionChunk> {
    let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| ChatCompletionChunk {
        id: c.id.clone(),
        object: "chat.completion.chunk".into(),
        created: c.created,
        model: c.model.clone(),
        choices,
        usage,
    };
    let mut out = Vec::new();
    for ch in &c.choices {
        for delta in text_deltas(&ch.message.content) {
            let choice = ChunkChoice {
                index: ch.index,
                delta,
                finish_reason: None,
            };
            out.push(chunk(vec![choice], None));
        }
        let last = ChunkChoice {
            index: ch.index,
            delta: Delta {
                tool_calls: ch.message.tool_calls.as_deref().map(tool_call_deltas),
                ..Delta::default()
            },
            finish_reason: ch.finish_reason.clone(),
        };
        out.push(chunk(vec![last], None));
    }
    out.push(chunk(Vec::new(), Some(usage)));
    out
}

/// A message's text as deltas, word by word, the first with the role (one empty delta
/// for no text).
fn text_deltas(content: &Option<Content>) -> Vec<Delta> {
    let text: String = content.iter().flat_map(Content::texts).collect();
    let mut pieces: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    if pieces.is_empty() {
        pieces.push(String::new());
    }
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| Delta {
            role: (i == 0).then_some(Role::Assistant),
            content: Some(piece),
            ..Delta::default()
        })
        .collect()
}

/// A message's tool calls, whole, as the deltas of one chunk.
fn tool_call_deltas(calls: &[ToolCall]) -> Vec<ToolCallDelta> {
    calls
        .iter()
        .enumerate()
        .map(|(i, t)| ToolCallDelta {
            index: i as u32,
            id: Some(t.id.clone()),
            kind: Some(t.kind.clone()),
            function: Some(FunctionCallDelta {
                name: Some(t.function.name.clone()),
                arguments: Some(t.function.arguments.clone()),
            }),
        })
        .collect()
}
