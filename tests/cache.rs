//! The response cache (`litellm_settings.cache` + `cache_params`, LiteLLM's semantics)
//! through the real stack: a hit makes no provider call, costs 0 and is shared by every
//! worker (in Redis); `/v1/spend` reports the cost saved; `no-cache` and `no-store` are
//! honoured; a streamed job replays a hit as chunks; embeddings are cached per input; an
//! entry over `max_entry_bytes` is not stored; the metrics count hits, misses and skips.

mod common;

use anyhow::{Context, Result};
use common::KEY;
use serde_json::{json, Value};
use sluice_testkit::servers::free_port;
use sluice_testkit::sim::embeddings::{vector, DEFAULT_DIMENSIONS};
use sluice_testkit::sim::{self, SimConfig, SimHandle};
use sluice_testkit::{eventually, Stack, TestEnv};

fn models(s: &SimHandle) -> String {
    format!(
        "{}  - model_name: embed
    litellm_params: {{model: openai/text-embedding-3-small, api_base: '{}', api_key: sk-e, input_cost_per_token: 0.000001, output_cost_per_token: 0}}
litellm_settings:
  cache: true
  cache_params: {{type: redis, ttl: 600, supported_call_types: [acompletion, aembedding]}}
",
        common::models(s).replace(&format!("general_settings:\n  master_key: {KEY}\n"), ""),
        s.api_base()
    ) + &format!("general_settings:\n  master_key: {KEY}\n")
}

async fn submit(http: &reqwest::Client, api: &str, body: Value) -> Result<Value> {
    let v: Value = http
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = v["id"].as_str().context("id")?.to_string();
    common::wait_job(http, api, &id, KEY).await
}

fn ask(text: &str) -> Value {
    json!({"model": "fast", "messages": [{"role": "user", "content": text}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_makes_no_call_costs_nothing_and_is_shared_by_workers() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let config = env.config(&models(&s), "")?;
    let http = reqwest::Client::new();

    // The first worker (with its api) makes the call and stores the answer.
    let first = Stack::start(config.clone(), 1).await?;
    let miss = submit(&http, &first.api_url, ask("Tell me about rivers.")).await?;
    first.stop().await;
    assert_eq!(miss["status"], "succeeded", "{miss}");
    assert_eq!(miss["cache_hit"], false);
    let paid = miss["cost"].as_f64().context("a priced call")?;
    assert!(paid > 0.0);
    assert_eq!(s.requests(), 1);

    // Another worker (a new stack: nothing in memory carries over) answers from Redis.
    let second = Stack::start(config, 1).await?;
    let api = second.api_url.clone();
    let hit = submit(&http, &api, ask("Tell me about rivers.")).await?;
    assert_eq!(s.requests(), 1, "a hit makes no provider call");
    assert_eq!(hit["status"], "succeeded", "{hit}");
    assert_eq!(hit["cache_hit"], true);
    assert_eq!(hit["cost"], 0.0);
    assert_eq!(hit["cost_saved"].as_f64(), Some(paid));
    assert_eq!(hit["attempt_log"], json!([]), "no attempt");
    assert_eq!(
        hit["result"]["choices"][0]["message"]["content"],
        miss["result"]["choices"][0]["message"]["content"]
    );
    assert_eq!(hit["usage"], miss["usage"]);

    // A different prompt (or parameter) is a different entry.
    let other = submit(
        &http,
        &api,
        json!({"model": "fast", "temperature": 0.1, "messages": [{"role": "user", "content": "Tell me about rivers."}]}),
    )
    .await?;
    assert_eq!(other["cache_hit"], false);
    assert_eq!(s.requests(), 2);

    // no-cache: looked past (a call), but stored again; no-store: not written.
    let forced = submit(
        &http,
        &api,
        json!({"model": "fast", "cache": {"no-cache": true}, "messages": [{"role": "user", "content": "Tell me about rivers."}]}),
    )
    .await?;
    assert_eq!(forced["cache_hit"], false, "{forced}");
    assert_eq!(s.requests(), 3, "no-cache calls the provider");
    let (_, body) = s.last_request().context("a request")?;
    assert!(
        body.get("cache").is_none(),
        "no provider sees the cache controls"
    );
    let unstored = json!({"model": "fast", "cache": {"no-store": true}, "messages": [{"role": "user", "content": "Not kept."}]});
    submit(&http, &api, unstored.clone()).await?;
    let again = submit(&http, &api, ask("Not kept.")).await?;
    assert_eq!(again["cache_hit"], false);
    assert_eq!(s.requests(), 5, "no-store wrote nothing");

    // /v1/spend reports what the hit saved.
    let spend: Value = http
        .get(format!("{api}/v1/spend"))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(spend["cache_hits"], 1, "{spend}");
    assert_eq!(spend["cost_saved"].as_f64(), Some(paid), "{spend}");
    second.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_job_replays_a_hit_as_chunks_and_embeddings_are_cached_per_input() -> Result<()>
{
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&s), "")?, 1).await?;
    let api = stack.api_url.clone();
    let http = reqwest::Client::new();
    let whole = submit(&http, &api, ask("Say something about rivers.")).await?;
    let text = whole["result"]["choices"][0]["message"]["content"]
        .as_str()
        .context("text")?
        .to_string();
    assert_eq!(s.requests(), 1);
    let sse = http
        .post(format!("{api}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "fast", "stream": true, "messages": [{"role": "user", "content": "Say something about rivers."}]}))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(s.requests(), 1, "the stream was served from the cache");
    let chunks: Vec<Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(chunks.len() > 2, "several chunks: {sse}");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let replayed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(replayed, text);
    assert!(sse.trim_end().ends_with("data: [DONE]"));

    // Embeddings: each input is its own entry; only the unseen ones go upstream.
    let embed = |input: Value| {
        let http = http.clone();
        let api = api.clone();
        async move {
            let v: Value = http
                .post(format!("{api}/v1/embeddings"))
                .bearer_auth(KEY)
                .json(&json!({"model": "embed", "input": input, "encoding_format": "float"}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(v)
        }
    };
    embed(json!(["alpha", "beta"])).await?;
    assert_eq!(s.requests(), 2);
    let v = embed(json!(["beta", "gamma", "alpha"])).await?;
    assert_eq!(s.requests(), 3);
    let (_, body) = s.last_request().context("a request")?;
    assert_eq!(
        body["input"],
        json!(["gamma"]),
        "only the unseen input went upstream"
    );
    for (i, t) in ["beta", "gamma", "alpha"].iter().enumerate() {
        let got: Vec<f32> = v["data"][i]["embedding"]
            .as_array()
            .context("floats")?
            .iter()
            .filter_map(|x| x.as_f64().map(|f| f as f32))
            .collect();
        assert_eq!(got, vector(t, DEFAULT_DIMENSIONS), "input {i} in its place");
        assert_eq!(v["data"][i]["index"], i);
    }
    embed(json!("gamma")).await?;
    assert_eq!(s.requests(), 3, "a wholly cached request makes no call");
    stack.stop().await;
    Ok(())
}

/// The value of `name{labels...}` summed over its series in a Prometheus text page.
fn metric(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|l| rest.contains(l))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_over_the_size_cap_is_not_stored_and_metrics_count_hits_misses_and_skips(
) -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    // A cap that holds a chat answer and a 16-float vector, not a 512-float one.
    let yaml = models(&s).replace(
        "supported_call_types: [acompletion, aembedding]}",
        "supported_call_types: [acompletion, aembedding], max_entry_bytes: 2048}",
    );
    assert!(yaml.contains("max_entry_bytes: 2048"));
    let port = free_port();
    let worker_url = format!("http://127.0.0.1:{port}");
    let stack = Stack::start(
        env.config(&yaml, &format!("  metrics_addr: 127.0.0.1:{port}"))?,
        1,
    )
    .await?;
    let api = stack.api_url.clone();
    let http = reqwest::Client::new();
    let page = || {
        let http = http.clone();
        let url = format!("{worker_url}/metrics");
        async move { http.get(url).send().await.ok()?.text().await.ok() }
    };
    let before = eventually(std::time::Duration::from_secs(30), "worker metrics", page).await?;
    let embed = |body: Value| {
        let http = http.clone();
        let api = api.clone();
        async move {
            let v: Value = http
                .post(format!("{api}/v1/embeddings"))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(v)
        }
    };

    // Too large: neither call is answered from the cache.
    let wide = json!({"model": "embed", "input": "wide", "dimensions": 512});
    let first = embed(wide.clone()).await?;
    assert_eq!(
        first["data"][0]["embedding"].as_array().map(Vec::len),
        Some(512)
    );
    embed(wide).await?;
    assert_eq!(s.requests(), 2, "an entry over the cap was not stored");
    // Under the cap: stored, and the second call is a hit.
    embed(json!({"model": "embed", "input": "narrow"})).await?;
    embed(json!({"model": "embed", "input": "narrow"})).await?;
    assert_eq!(s.requests(), 3, "an entry under the cap was stored");
    let miss = submit(&http, &api, ask("Counted once.")).await?;
    let hit = submit(&http, &api, ask("Counted once.")).await?;
    assert_eq!(
        (miss["cache_hit"].clone(), hit["cache_hit"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(s.requests(), 4);

    let after = page().await.context("worker metrics")?;
    let moved =
        |name: &str, labels: &[&str]| metric(&after, name, labels) - metric(&before, name, labels);
    // Other tests of this binary share the process's recorder: hits and misses move by at
    // least ours; only this test has entries over the cap.
    assert_eq!(
        moved("sluice_cache_skipped_total", &["reason=\"too_large\""]),
        2.0,
        "{after}"
    );
    assert!(
        moved("sluice_cache_hits_total", &["kind=\"chat\""]) >= 1.0,
        "{after}"
    );
    assert!(
        moved("sluice_cache_misses_total", &["kind=\"chat\""]) >= 1.0,
        "{after}"
    );
    assert!(
        moved("sluice_cache_hits_total", &["kind=\"embedding\""]) >= 1.0,
        "{after}"
    );
    assert!(
        moved("sluice_cache_misses_total", &["kind=\"embedding\""]) >= 3.0,
        "{after}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_maxage_takes_only_entries_younger_than_it() -> Result<()> {
    let s = sim::start("127.0.0.1:0", SimConfig::default()).await?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(env.config(&models(&s), "")?, 1).await?;
    let api = stack.api_url.clone();
    let http = reqwest::Client::new();
    let aged = |cache: Value| json!({"model": "fast", "cache": cache, "messages": [{"role": "user", "content": "How old is this?"}]});
    let first = submit(&http, &api, ask("How old is this?")).await?;
    assert_eq!(first["cache_hit"], false);
    assert_eq!(s.requests(), 1);
    // No entry is younger than 0 s: a miss, and the fresh answer is stored.
    let strict = submit(&http, &api, aged(json!({"s-maxage": 0}))).await?;
    assert_eq!(strict["cache_hit"], false, "{strict}");
    assert_eq!(s.requests(), 2);
    // An hour takes it.
    let lenient = submit(&http, &api, aged(json!({"s-maxage": 3600}))).await?;
    assert_eq!(lenient["cache_hit"], true, "{lenient}");
    assert_eq!(s.requests(), 2);

    // Embeddings, per input.
    let embed = |cache: Value| {
        let (http, api) = (http.clone(), api.clone());
        async move {
            let v: Value = http
                .post(format!("{api}/v1/jobs"))
                .bearer_auth(KEY)
                .json(&json!({"model": "embed", "input": ["kept", "also kept"], "cache": cache}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let id = v["id"].as_str().context("id")?.to_string();
            common::wait_job(&http, &api, &id, KEY).await
        }
    };
    embed(json!({})).await?;
    assert_eq!(s.requests(), 3);
    let strict = embed(json!({"s-maxage": 0})).await?;
    assert_eq!(strict["cache_hit"], false, "{strict}");
    assert_eq!(s.requests(), 4);
    let lenient = embed(json!({"s-maxage": 3600})).await?;
    assert_eq!(lenient["cache_hit"], true, "{lenient}");
    assert_eq!(s.requests(), 4);
    stack.stop().await;
    Ok(())
}
