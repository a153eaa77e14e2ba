//! Logging and tracing setup.
//!
//! Logs: `RUST_LOG`-style filter and `text` or `json` lines on stderr (text is coloured only on a
//! terminal: a file or a log collector gets plain lines).
//!
//! Traces (OpenTelemetry): on only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, exported over OTLP/HTTP (`http/protobuf` by
//! default, `http/json` with `OTEL_EXPORTER_OTLP_PROTOCOL`) by the SDK's batch processor, which
//! reads the standard `OTEL_*` variables itself (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, …). Only this workspace's
//! spans (targets `webhook…`) become OpenTelemetry spans, whatever `RUST_LOG` says; warnings
//! and errors logged inside them become span events. Off, no OpenTelemetry layer is installed:
//! the `tracing` spans cost what they cost the log layer, and nothing is propagated.
//!
//! With tracing on, every JSON log line emitted inside a traced span starts with the
//! `trace_id` and `span_id` of that span, so a log search and a trace lead to each other.
//!
//! The W3C trace context (`traceparent`, `tracestate`) crosses process boundaries through
//! [`inject`] and [`extract`]: the AMQP headers (see `webhook_amqp::trace_context`) and the
//! HTTP requests to Keycloak and Lago.

use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry, filter};

use crate::settings::LogFormat;

/// The tracer provider, when traces are exported (flushed by [`shutdown`]).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// The installed subscriber, for the log formatter to read the OpenTelemetry ids of a span.
static DISPATCH: OnceLock<tracing::dispatcher::WeakDispatch> = OnceLock::new();

/// Installs the global subscriber (logs only). Safe to call more than once (later calls do nothing).
pub fn init(level: &str, format: LogFormat) {
    install(level, format, None);
}

/// Installs the global subscriber of a service: logs, and traces when the standard OpenTelemetry
/// variables ask for them (see the module docs); `service` is the default `service.name`.
/// `Err` names the variable that is malformed. Call [`shutdown`] before the process exits.
pub fn init_service(level: &str, format: LogFormat, service: &str) -> Result<(), String> {
    let provider = if export_configured() {
        Some(provider(service)?)
    } else {
        None
    };
    install(level, format, provider);
    Ok(())
}

/// Exports the spans still buffered and stops the exporter (a graceful exit; bounded by
/// `OTEL_EXPORTER_OTLP_TIMEOUT`). Does nothing when traces are off.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        eprintln!("OpenTelemetry: the last spans could not be exported: {e}");
    }
}

/// Whether spans are exported (and trace context propagated).
pub fn tracing_enabled() -> bool {
    PROVIDER.get().is_some()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The OpenTelemetry rules: an endpoint turns export on; `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none` turn it off.
fn export_configured() -> bool {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    if env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none")) {
        return false;
    }
    env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

fn provider(service: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let protocol_var = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|name| env(name).map(|v| (name, v)));
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    match &protocol_var {
        None => exporter = exporter.with_protocol(Protocol::HttpBinary),
        Some((_, p)) if ["http/protobuf", "http/json"].contains(&p.to_ascii_lowercase().as_str()) => {}
        Some((name, p)) => {
            return Err(format!(
                "{name}={p} is not supported: use http/protobuf (the default, port 4318) or http/json"
            ));
        }
    }
    let exporter = exporter.build().map_err(|e| {
        format!("OTEL_EXPORTER_OTLP_ENDPOINT (or another OTEL_EXPORTER_OTLP_* variable): {e}")
    })?;
    let detected = opentelemetry_sdk::Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|n| !n.as_str().starts_with("unknown_service"));
    let resource = if named {
        detected
    } else {
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_owned())
            .build()
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

fn install(level: &str, format: LogFormat, provider: Option<SdkTracerProvider>) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let logs: Boxed = if format == LogFormat::Json {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            ))
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed()
    };
    let mut layers = vec![logs];
    if let Some(provider) = &provider {
        // Our spans at INFO and above, and the warnings and errors inside them as span events;
        // nothing from the libraries (their spans would flood the traces).
        let ours = filter::filter_fn(|m| {
            m.target().starts_with("webhook")
                && if m.is_span() {
                    *m.level() <= Level::INFO
                } else {
                    *m.level() <= Level::WARN
                }
        });
        let traces = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("webhook"))
            .with_threads(false)
            .with_filter(ours)
            .boxed();
        layers.push(traces);
    }
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layers));
    let weak = dispatch.downgrade();
    if tracing::dispatcher::set_global_default(dispatch).is_err() {
        return;
    }
    let _ = DISPATCH.set(weak);
    if let Some(provider) = provider {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let _ = PROVIDER.set(provider);
    }
}

/// The JSON formatter, with `trace_id` and `span_id` first on the lines emitted inside a
/// traced span.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = trace_ids(ctx, event) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// The OpenTelemetry ids of the span an event is emitted in (the current span, whatever the
/// log filter lets through), if tracing is on and that span is traced.
fn trace_ids<S, N>(
    ctx: &FmtContext<'_, S, N>,
    event: &tracing::Event<'_>,
) -> Option<(opentelemetry::TraceId, opentelemetry::SpanId)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    PROVIDER.get()?;
    let id = if event.is_root() {
        return None;
    } else if let Some(parent) = event.parent() {
        parent.clone()
    } else {
        ctx.current_span().id()?.clone()
    };
    let dispatch = DISPATCH.get()?.upgrade()?;
    let cx = tracing_opentelemetry::get_otel_context(&id, &dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
}

/// Writes the W3C trace context of `span` (`traceparent`, and `tracestate` when there is one)
/// through `set`. Does nothing when tracing is off or the span is not traced.
pub fn inject(span: &tracing::Span, mut set: impl FnMut(&str, String)) {
    if !tracing_enabled() {
        return;
    }
    struct Setter<'a>(&'a mut dyn FnMut(&str, String));
    impl Injector for Setter<'_> {
        fn set(&mut self, key: &str, value: String) {
            (self.0)(key, value)
        }
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut Setter(&mut set));
}

/// Makes the W3C trace context read through `get` (`traceparent`, `tracestate`) the parent of
/// `span`, which must not have been entered yet. Without a valid `traceparent` (or with tracing
/// off) the span stays as it is: the root of a new trace, or the child of the current span.
pub fn set_remote_parent(span: &tracing::Span, get: impl Fn(&str) -> Option<String>) {
    if !tracing_enabled() {
        return;
    }
    struct Getter([Option<String>; 2]);
    impl Extractor for Getter {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.0[0].as_deref(),
                "tracestate" => self.0[1].as_deref(),
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    let getter = Getter([get("traceparent"), get("tracestate")]);
    let cx = TraceContextPropagator::new().extract(&getter);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
