//! Logs and traces: the process's `tracing` subscriber, the OpenTelemetry exporter behind
//! it, and W3C trace-context propagation over HTTP headers and NATS headers.
//!
//! Traces are on only when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`
//! or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); otherwise no exporter exists and the spans
//! Sluice adds for traces (target [`TARGET`]) are disabled at their call sites, so the
//! hot path pays a cached "never" check for each. The exporter and the SDK read the
//! standard variables themselves: `OTEL_EXPORTER_OTLP_*` (headers, timeout, compression),
//! `OTEL_TRACES_SAMPLER` (+`_ARG`), `OTEL_BSP_*`, `OTEL_RESOURCE_ATTRIBUTES`.
//! `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf` (the default) or `grpc`.
//! Over HTTP, an export that fails for a reason that may pass (no connection, a 5xx, a
//! 429) is tried again after 0.5, 1 and 2 s ([`Retrying`]), on the SDK's batch thread:
//! nothing a request or a job waits for.
//!
//! JSON log lines (`--log-json`) carry `trace_id` and `span_id` when the line was written
//! inside a traced span.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The target of spans that exist only for traces (disabled when tracing is off).
pub const TARGET: &str = "sluice::otel";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported by this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The wire protocol of the OTLP exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// What the environment asks of traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub service_name: String,
    pub protocol: Protocol,
}

impl Settings {
    /// `None` when traces are off: no endpoint, `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`. `get` reads a variable (the process environment in
    /// production). An unsupported protocol is an error naming the variable.
    pub fn from_env(
        default_service: &str,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Settings>, String> {
        let set = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        {
            return Ok(None);
        }
        let protocol = match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported; use http/protobuf or grpc"
            ))
            }
        };
        Ok(Some(Settings {
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_string()),
            protocol,
        }))
    }
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("warning: flushing traces at exit: {e}");
            }
        }
    }
}

/// Installs the process's subscriber: logs to stderr (JSON lines when `json`), filtered by
/// `RUST_LOG` (default `info`), and, when [`Settings::from_env`] finds an endpoint, the
/// OpenTelemetry layer exporting as `default_service` (unless `OTEL_SERVICE_NAME` says
/// otherwise). Call inside the Tokio runtime (the gRPC exporter's channel lives on it).
pub fn init(default_service: &str, json: bool) -> Guard {
    let env = |k: &str| std::env::var(k).ok();
    let (settings, problem) = match Settings::from_env(default_service, &env) {
        Ok(s) => (s, None),
        Err(e) => (None, Some(e)),
    };
    let (provider, problem) = match settings.map(|s| build(&s)).transpose() {
        Ok(p) => (p, problem),
        Err(e) => (None, Some(e)),
    };
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let own = if provider.is_some() {
        format!("{TARGET}=info")
    } else {
        format!("{TARGET}=off")
    };
    if let Ok(d) = own.parse() {
        filter = filter.add_directive(d);
    }
    // Only Sluice's own spans become trace spans (not every crate's, and no events).
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("sluice"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.target().starts_with("sluice")
            }))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let installed = if json {
        registry
            .with(
                fmt.json()
                    .event_format(WithTraceIds(Format::default().json())),
            )
            .try_init()
    } else {
        registry.with(fmt).try_init()
    };
    if installed.is_err() {
        // Another subscriber came first (tests that run several services in one
        // process): keep it, export nothing from here.
        return Guard { provider: None };
    }
    if let Some(problem) = problem {
        tracing::error!(%problem, "traces are off");
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        if let Some(p) = &provider {
            opentelemetry::global::set_tracer_provider(p.clone());
        }
        ENABLED.store(true, Ordering::Relaxed);
        tracing::info!(service = default_service, "exporting traces over OTLP");
    }
    Guard { provider }
}

fn build(settings: &Settings) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
    let exporter = match settings.protocol {
        Protocol::HttpProtobuf => {
            use opentelemetry_otlp::WithHttpConfig as _;
            SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(Retrying::new()?)
                .build()
        }
        Protocol::Grpc => SpanExporter::builder().with_tonic().build(),
    }
    .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Tries of one OTLP/HTTP export before the SDK counts it as failed.
const EXPORT_TRIES: u32 = 4;
/// The wait after the first failed try; each later one doubles.
const FIRST_EXPORT_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
/// How long one try may take unless `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or
/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds) says (the exporter's own default).
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The timeout of one export try, read as the exporter reads it.
fn export_timeout(env: &dyn Fn(&str) -> Option<String>) -> std::time::Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|k| env(k).and_then(|v| v.trim().parse::<u64>().ok()))
    .map_or(EXPORT_TIMEOUT, std::time::Duration::from_millis)
}

/// The OTLP/HTTP exporter's client (blocking reqwest, as the exporter's own), trying an
/// export again when it failed for a reason that may pass. It runs on the SDK's batch
/// thread, so its waits hold back only the next export.
#[derive(Debug)]
struct Retrying {
    inner: reqwest::blocking::Client,
}

impl Retrying {
    fn new() -> Result<Retrying, String> {
        let timeout = export_timeout(&|k| std::env::var(k).ok());
        // The blocking client must not be built on a Tokio worker thread.
        let inner = std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
        })
        .join()
        .map_err(|_| "cannot build the OTLP HTTP client".to_string())?
        .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))?;
        Ok(Retrying { inner })
    }
}

/// Whether a failed export may succeed if tried again: no answer, a server error, or
/// "too many requests" (the client turns every non-2xx answer into an error).
fn export_worth_retrying(e: &opentelemetry_http::HttpError) -> bool {
    match e
        .downcast_ref::<reqwest::Error>()
        .and_then(reqwest::Error::status)
    {
        Some(status) => status.is_server_error() || status.as_u16() == 429,
        None => true,
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Retrying {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let (parts, body) = request.into_parts();
        let mut wait = FIRST_EXPORT_RETRY;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut again = opentelemetry_http::Request::new(body.clone());
            *again.method_mut() = parts.method.clone();
            *again.uri_mut() = parts.uri.clone();
            *again.headers_mut() = parts.headers.clone();
            match self.inner.send_bytes(again).await {
                Err(e) if tries < EXPORT_TRIES && export_worth_retrying(&e) => {
                    // The batch thread has nothing else to do meanwhile.
                    std::thread::sleep(wait);
                    wait *= 2;
                }
                done => return done,
            }
        }
    }
}

/// The JSON event format plus `trace_id` and `span_id` of the innermost traced span.
struct WithTraceIds(Format<Json>);

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let ids = if enabled() {
            ctx.event_scope().and_then(|scope| {
                scope.into_iter().find_map(|span| {
                    let ext = span.extensions();
                    let data = ext.get::<tracing_opentelemetry::OtelData>()?;
                    Some((data.trace_id()?, data.span_id()?))
                })
            })
        } else {
            None
        };
        let Some((trace, span)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The line is one JSON object and a newline: the ids go in before its `}`.
        match line.trim_end().strip_suffix('}') {
            Some(head) => writeln!(
                writer,
                "{head},\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// Reads a carrier through a closure (HTTP headers, NATS headers).
struct Reader<'a>(&'a dyn Fn(&str) -> Option<&'a str>);

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Makes `span` a child of the remote context in `get`'s `traceparent` (and
/// `tracestate`), when traces are on and the header is valid. Call before the span is
/// first entered.
pub fn continue_from<'a>(span: &tracing::Span, get: &'a dyn Fn(&str) -> Option<&'a str>) {
    if !enabled() || span.is_disabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Reader(get));
    if opentelemetry::trace::TraceContextExt::span(&cx)
        .span_context()
        .is_valid()
    {
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` a child of the trace context in NATS `headers`.
pub fn continue_from_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(h) = headers {
        continue_from(span, &|k| h.get(k).map(|v| v.as_str()));
    }
}

struct NatsWriter<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Writes the current span's context (`traceparent`, `tracestate`) into NATS `headers`,
/// when traces are on.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut NatsWriter(headers));
}

/// The current span's context as a `traceparent` value (for batch lines and callbacks),
/// when traces are on and a span is current.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let mut out = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut out);
    out.remove("traceparent")
}

/// The current span's context, for spans built directly with the OpenTelemetry API
/// (those with a start time in the past, such as a job's wait in the queue).
pub fn current_context() -> Context {
    tracing::Span::current().context()
}

/// Records a span that already ended: `name`, child of `parent`, from `start` to now.
pub fn past_span(
    name: &'static str,
    parent: &Context,
    start: std::time::SystemTime,
    attributes: Vec<opentelemetry::KeyValue>,
) {
    use opentelemetry::trace::{Span as _, Tracer as _};
    if !enabled() {
        return;
    }
    let tracer = opentelemetry::global::tracer("sluice");
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, parent);
    span.end();
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_export_try_times_out_as_the_otlp_variables_say() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(export_timeout(&env(&[])), EXPORT_TIMEOUT);
        assert_eq!(
            export_timeout(&env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")])),
            std::time::Duration::from_millis(2500)
        );
        assert_eq!(
            export_timeout(&env(&[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700")
            ])),
            std::time::Duration::from_millis(700)
        );
    }
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn traces_are_off_without_an_endpoint() {
        assert_eq!(Settings::from_env("sluice-api", &env(&[])), Ok(None));
        assert_eq!(
            Settings::from_env(
                "sluice-api",
                &env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_SDK_DISABLED", "true")
                ])
            ),
            Ok(None)
        );
    }

    #[test]
    fn settings_follow_the_standard_variables() {
        let s = Settings::from_env(
            "sluice-worker",
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.service_name, "sluice-worker");
        let s = Settings::from_env(
            "sluice-worker",
            &env(&[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_SERVICE_NAME", "jobs-eu"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.service_name, "jobs-eu");
        let e = Settings::from_env(
            "x",
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/xml"),
            ]),
        )
        .unwrap_err();
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
    }

    #[tokio::test]
    async fn both_exporters_build() {
        for protocol in [Protocol::HttpProtobuf, Protocol::Grpc] {
            let provider = build(&Settings {
                service_name: "t".into(),
                protocol,
            })
            .unwrap();
            provider.shutdown().unwrap();
        }
    }
}
