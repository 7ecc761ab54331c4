//! Trace context and telemetry set-up: what lets one id find an order's whole
//! path (request → order → cafe's `stock` → production → order → mypage) in
//! the logs, and one OTLP trace show it.
//!
//! A request's id (`x-request-id`) travels with the unit of work: into the
//! invocation, through linked calls, onto every event the unit publishes
//! (stored with the event by the backend), and from a delivered event onto
//! the events its handler publishes. Beside it travels a W3C `traceparent`
//! naming the span that published the event — only when spans are exported
//! (OTLP); the dispatcher makes the event's span a child of it, so the
//! exported trace of one request spans its events too.
//!
//! [`init`] installs the process's subscriber: logs on stderr (text, or JSON
//! with `SKTARBUCKS_LOG_FORMAT=json`) and, when an endpoint is configured,
//! span export over OTLP/HTTP (protobuf) in batches on the tokio runtime.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::TracingConfig;

/// Set once the subscriber exports spans (see [`exporting`]).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports spans over OTLP: then every span counts,
/// even one no log line would show.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Microseconds since `started`, for log lines.
pub fn micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// One log event at `info` when `info` is true, else at `debug` (tracing
/// levels are fixed per call site): for lines that only matter when
/// something went wrong, or that are routine for one kind of request.
macro_rules! info_or_debug {
    ($info:expr, $($event:tt)+) => {
        if $info {
            tracing::info!($($event)+)
        } else {
            tracing::debug!($($event)+)
        }
    };
}
pub(crate) use info_or_debug;

/// Where a unit of work's effects came from, carried by the events it
/// publishes: the originating request's id and, when spans are exported,
/// the publishing span as a W3C `traceparent`. Both are absent on events
/// logged before this existed (or appended by tools).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// The `x-request-id` of the request the chain started with.
    pub request_id: Option<String>,
    /// `00-<trace id>-<span id>-<flags>` of the span that published.
    pub traceparent: Option<String>,
}

impl TraceContext {
    /// The context of a request's own work.
    pub fn request(id: &str) -> Self {
        Self {
            request_id: Some(id.to_owned()),
            traceparent: None,
        }
    }

    /// The context work done under `span` hands on (to linked calls and to
    /// the events it publishes): the same request id, with `span` as the
    /// parent when it is exported. Otherwise the inherited parent is kept,
    /// so a host that stopped exporting does not cut the stored chain.
    pub fn under(&self, span: &tracing::Span) -> Self {
        Self {
            request_id: self.request_id.clone(),
            traceparent: traceparent_of(span).or_else(|| self.traceparent.clone()),
        }
    }

    /// The request id as the `request_id` field of a line logged in `span`
    /// when `span` is none: its request or delivery has no span to carry it
    /// (see [`crate::invoke::own_spans`]). Nothing when the span says it.
    pub fn request_id_field(
        &self,
        span: &tracing::Span,
    ) -> Option<tracing::field::DisplayValue<&str>> {
        if !span.is_none() {
            return None;
        }
        self.request_id.as_deref().map(tracing::field::display)
    }

    /// Make `span` a child of the stored publishing span (no-op when there is
    /// none or spans are not exported). Call before `span` is first entered.
    pub fn adopt(&self, span: &tracing::Span) {
        if let Some(parent) = self.traceparent.as_deref().and_then(parse_traceparent) {
            // Fails only when spans are not exported or it already started.
            let _ = span.set_parent(parent);
        }
    }
}

/// One header (`traceparent`) for the W3C propagator.
struct Traceparent<'a>(Option<&'a str>);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// Collects what the W3C propagator writes.
#[derive(Default)]
struct Written(Option<String>);

impl Injector for Written {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// `span` as a W3C `traceparent`, when it is exported (has a valid context).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Written::default();
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.0
}

/// The remote parent a `traceparent` names; `None` when it is malformed.
pub fn parse_traceparent(value: &str) -> Option<opentelemetry::Context> {
    let cx = TraceContextPropagator::new().extract(&Traceparent(Some(value)));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Make a request's span continue the client's trace when it sent a valid
/// `traceparent` (and spans are exported).
pub fn continue_client_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(parse_traceparent) {
        let _ = span.set_parent(parent);
    }
}

/// The OTLP/HTTP traces URL to export to: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
/// as given, else `OTEL_EXPORTER_OTLP_ENDPOINT` or the manifest's
/// `otlp_endpoint` with `/v1/traces` appended (the OTLP convention for a
/// base URL). `None`: nothing configured, no export.
pub fn otlp_traces_endpoint(config: &TracingConfig) -> Result<Option<String>> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let url = if let Some(full) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        full
    } else if let Some(base) = env("OTEL_EXPORTER_OTLP_ENDPOINT").or(config.otlp_endpoint.clone()) {
        let base = base.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        }
    } else {
        return Ok(None);
    };
    if !url.starts_with("http://") {
        bail!(
            "OTLP endpoint {url:?} must be an http:// URL (the exporter has no TLS: point it at a local collector or agent)"
        );
    }
    Ok(Some(url))
}

/// The installed subscriber's exporter, if any; shut it down last.
#[must_use = "spans still buffered are lost unless `shutdown` is awaited"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Flushes and stops the log writer thread when dropped (at exit).
    _log_guard: tracing_appender::non_blocking::WorkerGuard,
}

/// How long `shutdown` waits for the last batch to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

impl Telemetry {
    /// Whether spans leave the process (an endpoint was configured).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Export what is still buffered and stop the exporter (at most
    /// [`FLUSH_TIMEOUT`]: an unreachable collector must not hold up exit).
    /// Call while the tokio runtime still runs: the batch task lives there.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK's shutdown blocks until the batch task answers: off the
        // async workers, on a thread of its own that exit need not wait for.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("otlp-shutdown".into())
            .spawn(move || {
                let _ = tx.send(provider.shutdown());
            });
        if let Err(e) = spawned {
            eprintln!("could not flush exported spans: {e}");
            return;
        }
        match tokio::time::timeout(FLUSH_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("flushing exported spans failed: {e}"),
            Ok(Err(_)) => eprintln!("flushing exported spans failed: the flush thread died"),
            Err(_) => eprintln!(
                "flushing exported spans took over {} s; giving up",
                FLUSH_TIMEOUT.as_secs()
            ),
        }
    }
}

/// Install the process-wide subscriber: `RUST_LOG` filter (default
/// `info,wasmtime=warn,cranelift=warn`), logs on stderr, and with `export`
/// and a configured endpoint, OTLP span export. Needs a tokio runtime when
/// exporting (the batch exporter runs on it).
pub fn init(config: &TracingConfig, export: bool) -> Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn")
    });
    let json = std::env::var("SKTARBUCKS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let endpoint = if export {
        otlp_traces_endpoint(config)?
    } else {
        None
    };
    let provider = match &endpoint {
        Some(url) => Some(provider(config, url)?),
        None => None,
    };
    // Only the host's own spans are exported: the exporter's HTTP client
    // must never trace its own requests into the next batch.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("sktarbucks"))
            .with_location(false)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("sktarbucks", tracing::Level::TRACE),
            )
    });
    // Colours only for a person at a terminal, not in files and pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (logs, log_guard) = log_writer();
    let text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_timer(crate::log_time::LogTime)
            .with_ansi(ansi)
            .with_writer(logs.clone())
    });
    let structured = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_timer(crate::log_time::LogTime)
            .with_writer(logs)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(structured)
        .with(otel)
        .try_init()
        .context("a tracing subscriber is already installed")?;
    if let Some(url) = endpoint {
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(endpoint = %url, "exporting spans over OTLP/HTTP");
    }
    Ok(Telemetry {
        provider,
        _log_guard: log_guard,
    })
}

/// Stderr behind a writer thread: a request formats its log line and queues
/// it; the thread writes whatever has queued through a 64 KiB buffer, then
/// rests [`LOG_REST`] before it looks again. A `write(2)` per line on the
/// async workers cost ~7 % of the CPU of a `GET /cafes/{id}`; a writer
/// woken for every line (the queue's default) cost ~10 % of the host's CPU
/// in a Redis backlog drain, nearly all of it context switches and the
/// queue's spinning before it parks, and every line's sender paid a
/// wake-up. Resting, it takes a load's lines in batches of a few hundred,
/// and a sender finds no sleeper to wake. Lines reach stderr within about
/// [`LOG_REST`]; if over 128,000 lines are ever waiting (stderr stalled),
/// new ones are dropped rather than stalling requests.
fn log_writer() -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .thread_name("log-writer")
        .finish(Resting(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        )))
}

/// How long the log writer rests after writing out what had queued.
const LOG_REST: Duration = Duration::from_millis(2);

/// The log writer thread's output: it flushes once it has taken everything
/// that queued, so the flush is where it rests.
struct Resting<W>(W);

impl<W: std::io::Write> std::io::Write for Resting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let flushed = self.0.flush();
        std::thread::sleep(LOG_REST);
        flushed
    }
}

/// A tracer provider exporting to `url` in batches on the tokio runtime.
fn provider(config: &TracingConfig, url: &str) -> Result<SdkTracerProvider> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("failed to build the OTLP HTTP client")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .with_context(|| format!("failed to set up OTLP export to {url}"))?;
    let batch =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            Reporting::new(exporter),
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| config.service_name.clone())
        .unwrap_or_else(|| "sktarbucks".to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(resource)
        .build())
}

/// How often a failing export is reported at most.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// An exporter that says when a batch could not be delivered (the SDK
/// drops it silently): a warning at most every [`REPORT_EVERY`].
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    /// When the last failure was reported; `None`: never.
    reported: std::sync::Mutex<Option<std::time::Instant>>,
}

impl<E> Reporting<E> {
    fn new(inner: E) -> Self {
        Self {
            inner,
            reported: std::sync::Mutex::new(None),
        }
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Reporting<E>
{
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            let mut last = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
                *last = Some(std::time::Instant::now());
                tracing::warn!(error = %e, spans, "span export failed; those spans are lost (reported at most once a minute)");
            }
        }
        result
    }

    fn shutdown_with_timeout(
        &mut self,
        timeout: Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn shutdown(&mut self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown()
    }

    fn force_flush(&mut self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_garbage_is_ignored() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse_traceparent(tp).expect("a valid traceparent parses");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        for bad in [
            "",
            "00-xyz",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn without_an_exporter_a_span_has_no_traceparent_and_the_inherited_one_stays() {
        let inherited = TraceContext {
            request_id: Some("r1".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        };
        let under = inherited.under(&tracing::Span::none());
        assert_eq!(under, inherited);
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_once() -> Result<()> {
        let mut config = TracingConfig::default();
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
            || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        {
            return Ok(()); // the environment decides; nothing to check here
        }
        assert_eq!(otlp_traces_endpoint(&config)?, None);
        config.otlp_endpoint = Some("http://127.0.0.1:4318/".into());
        assert_eq!(
            otlp_traces_endpoint(&config)?.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        config.otlp_endpoint = Some("http://c:4318/v1/traces".into());
        assert_eq!(
            otlp_traces_endpoint(&config)?.as_deref(),
            Some("http://c:4318/v1/traces")
        );
        config.otlp_endpoint = Some("https://c:4318".into());
        assert!(otlp_traces_endpoint(&config).is_err());
        Ok(())
    }
}
