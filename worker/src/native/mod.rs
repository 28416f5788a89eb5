//! The providers' batch APIs ([`Backend`], the worker crate's side of
//! `sluice_core::native_batches::NativeBackend`): OpenAI Files + Batches, Azure OpenAI's v1
//! batch paths, Anthropic Message Batches and Gemini batch mode (`wire.rs`).
//!
//! A line's upstream request is exactly the body a live call of the same deployment would
//! send: the protocol adapter (`crate::providers`) builds it, and reads each result the
//! way it reads a live answer. Costs are at batch prices (`pricing.rs`).

mod pricing;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use sluice_core::config::{Config, Deployment, Protocol, RouterSettings};
use sluice_core::native_batches::{
    LostCreate, NativeBackend, NativeError, NativeLine, NativeResult, NativeSuccess, Placement,
    Submitted, UpstreamPoll,
};
use sluice_schemas::openai::{ChatCompletion, ChatRequest};
use sluice_schemas::ErrorClass;

use crate::job::eligible::by_tags;
use crate::pricing::{Price, PricingError};
use crate::providers::{self, Params};
use crate::router::Router;
use crate::tokens;

pub use pricing::batch_price;

/// One protocol's batch API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    OpenAi,
    Azure,
    Anthropic,
    Gemini,
}

impl Api {
    /// The batch API of a deployment, if its provider has one Sluice speaks. The
    /// OpenAI-compatible family (DeepSeek, Groq, vLLM…) has none.
    fn of(d: &Deployment) -> Option<Api> {
        if d.is_wildcard() {
            return None;
        }
        match d.protocol {
            Protocol::OpenAi if d.provider == "openai" => Some(Api::OpenAi),
            Protocol::Azure => Some(Api::Azure),
            Protocol::Anthropic => Some(Api::Anthropic),
            Protocol::Gemini => Some(Api::Gemini),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Api::OpenAi => "openai",
            Api::Azure => "azure",
            Api::Anthropic => "anthropic",
            Api::Gemini => "gemini",
        }
    }

    /// Requests and bytes per upstream batch, as each provider publishes them (Gemini:
    /// inline requests, 20 MB).
    fn limits(self) -> (u32, u64) {
        const MB: u64 = 1024 * 1024;
        match self {
            Api::OpenAi => (50_000, 200 * MB),
            Api::Azure => (100_000, 200 * MB),
            Api::Anthropic => (100_000, 256 * MB),
            Api::Gemini => (50_000, 20 * MB),
        }
    }
}

/// The batch APIs of every deployment in the config.
pub struct Backend {
    router: Router,
    router_settings: RouterSettings,
    deployments: HashMap<String, Arc<Deployment>>,
    prices: HashMap<String, Option<Price>>,
    http: reqwest::Client,
    max_lines: Option<u32>,
    max_bytes: Option<u64>,
    /// `sluice.batches.native_enqueued_tokens`: the enqueued-token limit of deployments
    /// without their own.
    enqueued_tokens: Option<u64>,
}

impl Backend {
    pub fn new(config: &Config) -> Result<Backend, PricingError> {
        let file = match &config.pricing_file {
            Some(path) => pricing::load(path)?,
            None => pricing::PriceFile::default(),
        };
        let prices = config
            .deployments
            .iter()
            .map(|d| (d.id.clone(), batch_price(d, &file)))
            .collect();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap_or_default();
        Ok(Backend {
            router: Router::new(config),
            router_settings: config.router.clone(),
            deployments: config
                .deployments
                .iter()
                .map(|d| (d.id.clone(), Arc::new(d.clone())))
                .collect(),
            prices,
            http,
            max_lines: config.batches.native_max_lines,
            max_bytes: config.batches.native_max_bytes,
            enqueued_tokens: config.batches.native_enqueued_tokens,
        })
    }

    fn deployment(&self, id: &str) -> Result<(&Deployment, Api), NativeError> {
        let d = self.deployments.get(id).ok_or_else(|| {
            NativeError::new(
                ErrorClass::NotFound,
                format!("deployment {id:?} is no longer configured"),
            )
        })?;
        let api = Api::of(d).ok_or_else(|| {
            NativeError::new(
                ErrorClass::BadRequest,
                format!("deployment {id:?} has no batch API"),
            )
        })?;
        Ok((d, api))
    }

    /// The body a live call of `d` would send for `line`, as JSON.
    fn body(&self, d: &Deployment, line: &NativeLine) -> Result<Value, (ErrorClass, String)> {
        let mut request = line.request.clone();
        request.model.clone_from(&d.model);
        request.stream = None;
        request.stream_options = None;
        // Routing read them; providers do not take them (as on a live call).
        request.extra.remove("tags");
        let mut params = Params::new(d);
        let builder = providers::wire(d.protocol)
            .request(&self.http, d, &request, false, &mut params)
            .map_err(|e| (e.class, e.message))?;
        let built = builder
            .build()
            .map_err(|e| (ErrorClass::BadRequest, e.to_string()))?;
        let bytes = built
            .body()
            .and_then(|b| b.as_bytes())
            .ok_or_else(|| (ErrorClass::Internal, "request body is not in memory".into()))?;
        serde_json::from_slice(bytes).map_err(|e| (ErrorClass::Internal, e.to_string()))
    }

    /// A result body read the way a live answer is read, priced at batch prices.
    fn success(&self, d: &Deployment, body: &[u8]) -> Result<NativeSuccess, (ErrorClass, String)> {
        let completion: ChatCompletion = providers::wire(d.protocol)
            .completion(body, &d.model)
            .map_err(|e| (e.class, e.message))?;
        let usage = completion.usage;
        let cost = match (&usage, self.prices.get(&d.id).and_then(Option::as_ref)) {
            (Some(u), Some(p)) => Some(p.cost(u)),
            _ => None,
        };
        let model = if completion.model.is_empty() {
            d.model.clone()
        } else {
            completion.model.clone()
        };
        let completion =
            serde_json::to_value(&completion).map_err(|e| (ErrorClass::Internal, e.to_string()))?;
        Ok(NativeSuccess {
            completion,
            usage,
            cost,
            model,
        })
    }

    /// A per-line HTTP error in the protocol's own terms.
    fn line_error(&self, d: &Deployment, status: u16, body: &str) -> (ErrorClass, String) {
        let e = providers::classify(d, status, &reqwest::header::HeaderMap::new(), body);
        (e.class, e.message)
    }
}

impl NativeBackend for Backend {
    fn place(&self, model_group: &str, tags: &[String]) -> Option<Placement> {
        // The deployments the line's tags allow, as a live job's (batch lines send no
        // header lines for `tag_regex`), then routing's pick among them.
        let allowed = by_tags(
            self.router.deployments(model_group).to_vec(),
            tags,
            &[],
            &self.router_settings,
        )?;
        let d = self.router.order(&allowed, &[]).into_iter().next()?;
        let api = Api::of(&d);
        let (lines, bytes) = api.map(Api::limits).unwrap_or((u32::MAX, u64::MAX));
        Some(Placement {
            deployment: d.id.clone(),
            provider: d.provider.clone(),
            protocol: api.map(Api::name),
            max_lines: self.max_lines.map_or(lines, |m| m.min(lines)),
            max_bytes: self.max_bytes.map_or(bytes, |m| m.min(bytes)),
            enqueued_tokens: self.enqueued_limit(&d.id),
        })
    }

    fn prompt_tokens(&self, deployment: &str, request: &ChatRequest) -> u64 {
        match self.deployments.get(deployment) {
            Some(d) => tokens::prompt_with(tokens::Tokenizer::for_deployment(d), request),
            None => tokens::prompt(request),
        }
    }

    fn enqueued_limit(&self, deployment: &str) -> Option<u64> {
        let d = self.deployments.get(deployment)?;
        Api::of(d)?;
        d.batch_enqueued_tokens.or(self.enqueued_tokens)
    }

    fn prepare(&self, deployment: &str, line: &NativeLine) -> Result<Value, (ErrorClass, String)> {
        let (d, api) = self
            .deployment(deployment)
            .map_err(|e| (e.class, e.message))?;
        let body = self.body(d, line)?;
        Ok(wire::line(api, d, &line.custom_id, body))
    }

    fn submit<'a>(
        &'a self,
        deployment: &'a str,
        marker: &'a str,
        lines: &'a [Value],
    ) -> BoxFuture<'a, Result<Submitted, NativeError>> {
        Box::pin(async move {
            let (d, api) = self.deployment(deployment)?;
            wire::submit(&self.http, api, d, marker, lines).await
        })
    }

    fn find<'a>(
        &'a self,
        deployment: &'a str,
        lost: &'a LostCreate,
    ) -> BoxFuture<'a, Result<Vec<Submitted>, NativeError>> {
        Box::pin(async move {
            let (d, api) = self.deployment(deployment)?;
            wire::find(&self.http, api, d, lost).await
        })
    }

    fn poll<'a>(
        &'a self,
        deployment: &'a str,
        upstream_id: &'a str,
    ) -> BoxFuture<'a, Result<UpstreamPoll, NativeError>> {
        Box::pin(async move {
            let (d, api) = self.deployment(deployment)?;
            wire::poll(&self.http, api, d, upstream_id).await
        })
    }

    fn results<'a>(
        &'a self,
        deployment: &'a str,
        upstream_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<NativeResult>, NativeError>> {
        Box::pin(async move {
            let (d, api) = self.deployment(deployment)?;
            let raw = wire::results(&self.http, api, d, upstream_id).await?;
            Ok(raw
                .into_iter()
                .map(|r| NativeResult {
                    outcome: match r.outcome {
                        wire::RawOutcome::Body(body) => self.success(d, &body),
                        wire::RawOutcome::Http(status, body) => {
                            Err(self.line_error(d, status, &body))
                        }
                        wire::RawOutcome::Error(class, message) => Err((class, message)),
                    },
                    custom_id: r.custom_id,
                })
                .collect())
        })
    }

    fn cancel<'a>(
        &'a self,
        deployment: &'a str,
        upstream_id: &'a str,
    ) -> BoxFuture<'a, Result<(), NativeError>> {
        Box::pin(async move {
            let (d, api) = self.deployment(deployment)?;
            wire::cancel(&self.http, api, d, upstream_id).await
        })
    }
}
