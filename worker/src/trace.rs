//! The worker's trace spans (exported only when traces are on, see
//! `sluice_core::telemetry`): a job continues the trace its message carries, with its
//! wait in the queue, admission, each provider attempt (OpenTelemetry GenAI attributes),
//! the record and the event publish as children. Off, every function here returns at
//! once or makes a disabled span.

use std::sync::Arc;

use opentelemetry::KeyValue;
use rust_decimal::prelude::ToPrimitive;
use sluice_core::config::Deployment;
use sluice_core::store::{AttemptRecord, JobOutcome};
use sluice_core::telemetry::{enabled, TARGET};
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The job's span (its log lines carry it too). Traced, it continues the trace in the
/// message's headers and is on whatever `RUST_LOG` says.
pub(crate) fn job(
    job_id: uuid::Uuid,
    tier: sluice_schemas::Tier,
    delivery: i64,
    headers: Option<&async_nats::HeaderMap>,
) -> Span {
    if !enabled() {
        return tracing::info_span!("job", job_id = %job_id, tier = %tier, delivery);
    }
    let span = tracing::info_span!(target: TARGET, "job", job_id = %job_id, tier = %tier, delivery,
        otel.kind = "consumer");
    sluice_core::telemetry::continue_from_nats(&span, headers);
    span.set_attribute("sluice.job_id", job_id.to_string());
    span
}

/// Records the job's wait in the queue, from its publish to now, as
/// a child of the current span. Only a first delivery's wait is recorded.
pub(crate) fn queue_wait(msg: &async_nats::jetstream::Message) {
    if !enabled() {
        return;
    }
    let Ok(info) = msg.info() else { return };
    if info.delivered > 1 {
        return;
    }
    let Ok(ns) = u64::try_from(info.published.unix_timestamp_nanos()) else {
        return;
    };
    let start = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    sluice_core::telemetry::past_span(
        "queue wait",
        &sluice_core::telemetry::current_context(),
        start,
        vec![KeyValue::new("messaging.system", "nats")],
    );
}

/// The span of admission (routing and limits).
pub(crate) fn admission() -> Span {
    tracing::info_span!(target: TARGET, "admission")
}

/// The span of one provider attempt, named and attributed as the GenAI conventions ask.
pub(crate) fn attempt(
    deployment: &Arc<Deployment>,
    number: u32,
    operation: &'static str,
    stream: bool,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "provider attempt",
        otel.name = %format_args!("{operation} {}", deployment.model),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = operation,
        gen_ai.provider.name = provider_name(&deployment.provider),
        gen_ai.request.model = %deployment.model,
        gen_ai.request.stream = stream,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        error.type = Empty,
        sluice.deployment = %deployment.id,
        sluice.attempt = number,
        sluice.cost = Empty,
    )
}

/// The attempt's outcome on its span.
pub(crate) fn attempt_ended(span: &Span, record: &AttemptRecord, response_model: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    if let Some(m) = response_model {
        span.record("gen_ai.response.model", m);
    }
    if let Some(n) = record.prompt_tokens {
        span.record("gen_ai.usage.input_tokens", n);
    }
    if let Some(n) = record.completion_tokens {
        span.record("gen_ai.usage.output_tokens", n);
    }
    if let Some(c) = record.cost.and_then(|c| c.to_f64()) {
        span.record("sluice.cost", c);
    }
    if let Some(class) = record.error_class {
        span.record("error.type", class.as_str());
        span.record("otel.status_code", "error");
    }
}

/// The job's end on its span: cost and the deployment that answered.
pub(crate) fn finished(job: &JobOutcome, attempts: &[AttemptRecord]) {
    if !enabled() {
        return;
    }
    let span = Span::current();
    span.set_attribute("sluice.status", job.status.as_str());
    if let Some(c) = job.cost.and_then(|c| c.to_f64()) {
        span.set_attribute("sluice.cost", c);
    }
    if let Some(a) = attempts.last() {
        span.set_attribute("sluice.deployment", a.deployment.clone());
    }
}

/// The span of the result's durable write.
pub(crate) fn record() -> Span {
    tracing::info_span!(target: TARGET, "record")
}

/// The span of the terminal event's publish.
pub(crate) fn publish() -> Span {
    tracing::info_span!(
        target: TARGET,
        "event publish",
        otel.name = "publish events",
        otel.kind = "producer"
    )
}

/// `gen_ai.provider.name` for a LiteLLM provider prefix: the convention's well-known
/// names where there is one, the prefix itself otherwise.
fn provider_name(provider: &str) -> &str {
    match provider {
        "azure" | "azure_ai" => "azure.ai.openai",
        "gemini" => "gcp.gemini",
        "vertex_ai" => "gcp.vertex_ai",
        "bedrock" => "aws.bedrock",
        "mistral" => "mistral_ai",
        "xai" => "x_ai",
        other => other,
    }
}
