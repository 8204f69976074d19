//! Logging set-up and metric constructors.
//!
//! Logs are human-readable by default and JSON with `--log-format json` (containers). Metrics
//! live in one registry per service, served at `/metrics`; names follow Prometheus conventions
//! (`fleetstream_<service>_..._total`, `_seconds`) and labels are bounded (reason codes,
//! outcomes, partitions), never a vehicle id.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tracing_subscriber::{fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Logging flags shared by every service.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: human (default) or json.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `info,fleetstream_receiver=debug`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Installs the global subscriber. Safe to call more than once (later calls are ignored), so
/// tests that start several services in one process can call it freely.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match args.log_format {
        // Logs go to stderr: stdout stays clean for what a tool prints (the simulator's --json).
        LogFormat::Json => registry.with(fmt::layer().json().flatten_event(true).with_writer(std::io::stderr)).try_init(),
        LogFormat::Human => registry.with(fmt::layer().with_writer(std::io::stderr)).try_init(),
    };
}

/// Lets a repeated log line through at most once per interval, counting the ones held back: a
/// Kafka client reports every failed connection while brokers are down, dozens a second.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl Throttle {
    pub fn new(every: std::time::Duration) -> Self {
        Throttle { every, last: None, held_back: 0 }
    }

    /// Whether to log now; if so, how many were held back since the last one.
    pub fn pass(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < self.every) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Latency buckets, in seconds, from 0.5 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

// Registering a metric only fails for a duplicate name or an invalid one: a programming error
// caught by every test that builds the service, so the constructors fall back to an
// unregistered metric rather than panicking.

pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic_free(name, e, || IntCounter::new("invalid", "invalid")));
    let _ = registry.register(Box::new(c.clone()));
    c
}

pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic_free(name, e, || IntCounterVec::new(Opts::new("invalid", "invalid"), labels)));
    let _ = registry.register(Box::new(c.clone()));
    c
}

pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic_free(name, e, || IntGauge::new("invalid", "invalid")));
    let _ = registry.register(Box::new(g.clone()));
    g
}

pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic_free(name, e, || IntGaugeVec::new(Opts::new("invalid", "invalid"), labels)));
    let _ = registry.register(Box::new(g.clone()));
    g
}

pub fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let h = Histogram::with_opts(opts)
        .unwrap_or_else(|e| panic_free(name, e, || Histogram::with_opts(HistogramOpts::new("invalid", "invalid"))));
    let _ = registry.register(Box::new(h.clone()));
    h
}

pub fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let h = HistogramVec::new(opts, labels)
        .unwrap_or_else(|e| panic_free(name, e, || HistogramVec::new(HistogramOpts::new("invalid", "invalid"), labels)));
    let _ = registry.register(Box::new(h.clone()));
    h
}

fn panic_free<T>(name: &str, error: prometheus::Error, fallback: impl FnOnce() -> prometheus::Result<T>) -> T {
    tracing::error!(metric = name, %error, "invalid metric definition");
    match fallback() {
        Ok(m) => m,
        // Both the metric and a fixed valid fallback failed: impossible for the constant above.
        Err(_) => unreachable!("fallback metric definition is valid"),
    }
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(error) = encoder.encode_utf8(&registry.gather(), &mut out) {
        tracing::error!(%error, "cannot encode metrics");
    }
    out
}
