//! Traces of sampled positions: OpenTelemetry spans exported over OTLP/HTTP, off by default.
//!
//! A position's trace starts at the receiver (the sampling decision: `--trace-sample-ratio`
//! there), travels in the W3C `traceparent` header of each Kafka record written on its behalf
//! ([`crate::publish::headers::TRACEPARENT`]), and the processor and tracker continue it as
//! children of the span in that header. Only sampled positions carry the header: an unsampled
//! one costs the receiver one random number and nothing downstream.
//!
//! Spans are built from the times a service already notes (a batch's poll, its commit), so a
//! batch-processing service adds no work to its hot path for unsampled records. The SDK's batch
//! exporter sends them from its own thread; if the collector is unreachable they are dropped
//! (after its queue of 2,048 fills) and the SDK says so in the log, never holding a position.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// How long spans wait in the exporter before a send: short enough that a trace is in the
/// backend about a second after the position, long enough to batch at high sample rates.
const EXPORT_DELAY: Duration = Duration::from_millis(500);
/// One export request's limit; the exporter's thread gives up on a silent collector then.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Tracing flags shared by every service.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// OTLP/HTTP endpoint of a trace collector (OpenTelemetry Collector, Jaeger, Tempo), e.g.
    /// `http://otel-collector:4318`; spans go to its `/v1/traces`. Unset: tracing off.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of this service's spans (default: `fleetstream-<service>`, e.g. `fleetstream-receiver`).
    #[arg(long, env = "OTEL_SERVICE_NAME", value_name = "NAME")]
    pub otel_service_name: Option<String>,
}

/// A sampling ratio flag's parser: a number from 0 to 1.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{text}` is not a ratio from 0 to 1 (e.g. 0.01 traces one position in a hundred)")),
    }
}

/// A service's tracer, or none when tracing is off. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tracing {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Share of the positions entering here that start a trace.
    sample_ratio: f64,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").field("on", &self.is_on()).finish()
    }
}

impl Tracing {
    /// Tracing off: no spans, no headers.
    pub fn off() -> Tracing {
        Tracing { inner: None }
    }

    /// The tracer `args` ask for. `sample_ratio` decides for positions that enter the pipeline
    /// here (the receiver); a span continuing a trace follows its parent's decision.
    pub fn start(args: &TraceArgs, service: &str, sample_ratio: f64) -> anyhow::Result<Tracing> {
        let Some(endpoint) = args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
            return Ok(Tracing::off());
        };
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .with_context(|| format!("cannot set up the OTLP trace exporter to {url}"))?;
        let batch = BatchConfigBuilder::default().with_scheduled_delay(EXPORT_DELAY).build();
        let name = args.otel_service_name.clone().unwrap_or_else(|| service.to_string());
        let resource = Resource::builder()
            .with_service_name(name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build())
            // Roots are decided in `root` (before any span exists); spans with a parent follow it.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(resource)
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "fleetstream");
        tracing::info!(endpoint = %url, service = %name, sample_ratio, "tracing on: spans of sampled positions go over OTLP/HTTP");
        Ok(Tracing { inner: Some(Arc::new(Inner { provider, tracer, sample_ratio })) })
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// A new trace for a position entering the pipeline, started at `start()`: None when
    /// tracing is off or the position is not sampled. An unsampled position costs one random
    /// number: no span, no clock reading, no trace id.
    pub fn root(&self, name: &'static str, start: impl FnOnce() -> SystemTime) -> Option<PositionSpan> {
        let inner = self.inner.as_ref()?;
        if !(inner.sample_ratio > 0.0 && rand::random::<f64>() < inner.sample_ratio) {
            return None;
        }
        let span = inner.tracer.span_builder(name).with_kind(SpanKind::Producer).with_start_time(start()).start(&inner.tracer);
        Some(PositionSpan(span))
    }

    /// A span continuing the trace of a record's `traceparent` header, started at `start`:
    /// None when tracing is off, the record has no (valid) header or its trace is not sampled.
    pub fn child(&self, name: &'static str, traceparent: Option<&str>, start: SystemTime) -> Option<PositionSpan> {
        let inner = self.inner.as_ref()?;
        let parent = parent_context(traceparent?)?;
        let span = inner
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Consumer)
            .with_start_time(start)
            .start_with_context(&inner.tracer, &parent);
        span.span_context().is_sampled().then_some(PositionSpan(span))
    }

    /// Sends what is buffered and stops the exporter: the last step of a service's shutdown.
    /// Blocks for up to the export timeout.
    pub fn shutdown(&self) {
        if let Some(inner) = &self.inner {
            if let Err(error) = inner.provider.shutdown() {
                tracing::warn!(%error, "could not send the last spans to the trace collector");
            }
        }
    }
}

/// One position's span in one service. Ended when dropped, if not before.
#[derive(Debug)]
pub struct PositionSpan(opentelemetry_sdk::trace::Span);

impl PositionSpan {
    /// Something that happened to the position now.
    pub fn event(&mut self, name: &'static str) {
        self.0.add_event(name, Vec::new());
    }

    /// Something that happened to the position at `at`.
    pub fn event_at(&mut self, name: &'static str, at: SystemTime) {
        self.0.add_event_with_timestamp(name, at, Vec::new());
    }

    pub fn attribute(&mut self, key: &'static str, value: impl Into<Value>) {
        self.0.set_attribute(KeyValue::new(key, value));
    }

    /// Marks the span failed, saying why.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.0.set_status(Status::error(why.into()));
    }

    /// The W3C `traceparent` naming this span, for the records written on its behalf.
    pub fn traceparent(&self) -> String {
        let cx = Context::new().with_remote_span_context(self.0.span_context().clone());
        let mut carrier = std::collections::HashMap::with_capacity(1);
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.remove(TRACEPARENT).unwrap_or_default()
    }

    pub fn span_context(&self) -> &SpanContext {
        self.0.span_context()
    }

    pub fn end(mut self) {
        self.0.end();
    }

    pub fn end_at(mut self, at: SystemTime) {
        self.0.end_with_timestamp(at);
    }
}

const TRACEPARENT: &str = crate::publish::headers::TRACEPARENT;

/// The context of a `traceparent` value, if it is a valid one (W3C Trace Context).
fn parent_context(traceparent: &str) -> Option<Context> {
    struct One<'a>(&'a str);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == TRACEPARENT).then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT]
        }
    }
    let cx = TraceContextPropagator::new().extract(&One(traceparent));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The URL spans are posted to: `endpoint` as given if it names `/v1/traces`, else with it
/// appended (what OTEL_EXPORTER_OTLP_ENDPOINT means in every OpenTelemetry SDK).
fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let trimmed = endpoint.trim_end_matches('/');
    if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
        anyhow::bail!("the OTLP endpoint `{endpoint}` is not an http:// or https:// URL (e.g. http://otel-collector:4318)");
    }
    if trimmed.starts_with("https://") {
        anyhow::bail!("the OTLP endpoint `{endpoint}` uses https, which this build does not speak: send to a collector on http:// (an agent beside the service, which can forward over TLS)");
    }
    Ok(if trimmed.ends_with("/v1/traces") { trimmed.to_string() } else { format!("{trimmed}/v1/traces") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_gets_the_traces_path_once() {
        assert_eq!(traces_url("http://c:4318").ok().as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!(traces_url("http://c:4318/").ok().as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!(traces_url("http://c:4318/v1/traces").ok().as_deref(), Some("http://c:4318/v1/traces"));
        let err = traces_url("c:4318").map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("not an http:// or https:// URL"), "{err}");
    }

    #[test]
    fn ratio_is_checked() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert!(parse_ratio("1.5").unwrap_err().contains("not a ratio from 0 to 1"));
        assert!(parse_ratio("x").is_err());
    }

    #[test]
    fn traceparent_round_trips_and_only_sampled_traces_continue() {
        // No exporter: spans are sampled and dropped at the end; parent-based, as in start().
        let provider = SdkTracerProvider::builder().with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))).build();
        let never = Tracing {
            inner: Some(Arc::new(Inner { provider: provider.clone(), tracer: opentelemetry::trace::TracerProvider::tracer(&provider, "test"), sample_ratio: 0.0 })),
        };
        assert!(never.root("root", || unreachable!("no clock read for an unsampled position")).is_none());
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
        let tracing = Tracing { inner: Some(Arc::new(Inner { provider, tracer, sample_ratio: 1.0 })) };
        let root = tracing.root("root", SystemTime::now).unwrap();
        let header = root.traceparent();
        assert!(header.starts_with("00-") && header.ends_with("-01"), "{header}");
        let child = tracing.child("child", Some(&header), SystemTime::now()).unwrap();
        assert_eq!(child.span_context().trace_id(), root.span_context().trace_id());
        assert_ne!(child.span_context().span_id(), root.span_context().span_id());
        let unsampled = header.replace("-01", "-00");
        assert!(tracing.child("child", Some(&unsampled), SystemTime::now()).is_none());
        assert!(tracing.child("child", Some("garbage"), SystemTime::now()).is_none());
        assert!(tracing.child("child", None, SystemTime::now()).is_none());
        assert!(Tracing::off().root("root", SystemTime::now).is_none());
    }
}
