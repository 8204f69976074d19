//! A real OpenTelemetry Collector for the tracing tests: OTLP in (HTTP and gRPC on free ports of
//! 127.0.0.1), every span out as OTLP/JSON lines in a file of its own, which [`Collector::spans`]
//! reads back as [`Span`]s.
//!
//! The collector is built from its published Go modules (`tools/otelcol`, pinned by go.mod and
//! go.sum) by `scripts/go-tools otelcol`, once per change, into the cache beside Apache Kafka; the
//! first test to start one after a change pays the build (a few minutes), the others wait on its
//! lock. Go 1.24+ must be on PATH (`scripts/test-deps` says so). Set `OTELCOL_LOG=1` to see the
//! collector's own log on stderr; it is in the error whenever the collector fails to start.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::{free_port, unique};

/// How long the exporter holds spans before they reach the file.
const FLUSH_INTERVAL: &str = "50ms";

/// A running collector of a test's own; killed, and its directory deleted, when dropped.
#[derive(Debug)]
pub struct Collector {
    child: Option<Child>,
    dir: PathBuf,
    http_port: u16,
    grpc_port: u16,
}

/// One span as the collector received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id; "" for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// The `service.name` of the span's resource ("" if it has none).
    pub service: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Values as text: strings as they are, numbers and booleans printed, arrays and maps as
    /// their OTLP/JSON.
    pub attributes: BTreeMap<String, String>,
    pub events: Vec<SpanEvent>,
    /// Whether the span's status is Error.
    pub status_error: bool,
}

/// An event recorded on a span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanEvent {
    pub name: String,
    pub time_ns: u64,
}

impl Collector {
    /// Builds the collector if needed, starts it and returns once both receivers accept
    /// connections. Blocking (the first build takes minutes): from async code, run it in
    /// `tokio::task::spawn_blocking`.
    pub fn start() -> anyhow::Result<Collector> {
        let bin = build()?;
        let dir = std::env::temp_dir().join(unique("fleetstream-otelcol"));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut collector = Collector { child: None, dir, http_port: 0, grpc_port: 0 };
        // A free port can be taken by someone else before the collector binds it: then the
        // collector exits at once, and another pair of ports is tried.
        let mut attempt = 1;
        loop {
            match collector.spawn(&bin) {
                Ok(()) => return Ok(collector),
                Err(e) if attempt < 3 && collector.log().contains("address already in use") => {
                    eprintln!("testkit: otelcol: {e:#}; trying other ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(&mut self, bin: &Path) -> anyhow::Result<()> {
        self.http_port = free_port();
        self.grpc_port = free_port();
        let config = self.dir.join("config.yaml");
        std::fs::write(&config, self.config()).context("cannot write the collector's config")?;
        let log = std::fs::File::create(self.dir.join("collector.log")).context("cannot create the collector's log")?;
        let child = Command::new(bin)
            .arg(format!("--config={}", config.display()))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                bail!("the OpenTelemetry Collector exited at start-up ({status}):\n{}", self.log());
            }
            let up = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(self.http_port) && up(self.grpc_port) {
                if std::env::var_os("OTELCOL_LOG").is_some() {
                    eprintln!("testkit: otelcol in {}:\n{}", self.dir.display(), self.log());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                bail!("the OpenTelemetry Collector did not listen on ports {} and {} within 30 s:\n{}", self.http_port, self.grpc_port, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// OTLP receivers on 127.0.0.1 (gRPC and HTTP, which takes protobuf and JSON at /v1/traces),
    /// no processor (each request is written as it arrives), the file exporter writing one
    /// OTLP/JSON line per request and flushing every [`FLUSH_INTERVAL`]. No internal metrics:
    /// they would listen on port 8888, which parallel tests would fight over.
    fn config(&self) -> String {
        let spans = yaml_quote(&self.spans_path().display().to_string());
        format!(
            "receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{http}
      grpc:
        endpoint: 127.0.0.1:{grpc}
exporters:
  file:
    path: {spans}
    format: json
    flush_interval: {FLUSH_INTERVAL}
service:
  telemetry:
    logs:
      level: info
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
",
            http = self.http_port,
            grpc = self.grpc_port,
        )
    }

    fn spans_path(&self) -> PathBuf {
        self.dir.join("spans.jsonl")
    }

    /// What the collector logged (its stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("collector.log")).unwrap_or_default()
    }

    /// The OTLP/HTTP endpoint, `http://127.0.0.1:PORT` (traces are posted to `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The OTLP/gRPC endpoint, `http://127.0.0.1:PORT`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Every span written so far, in the order received. A request reaches the file up to
    /// 50 ms after it was answered: [`Collector::wait_for`] waits for what a test expects.
    pub fn spans(&self) -> anyhow::Result<Vec<Span>> {
        let text = match std::fs::read_to_string(self.spans_path()) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("cannot read the collector's file"),
        };
        parse_lines(&text)
    }

    /// Polls [`Collector::spans`] until `done` holds for them, and returns them; an error, with
    /// the spans there were, if it does not within `timeout`.
    pub async fn wait_for(&self, done: impl Fn(&[Span]) -> bool, timeout: Duration) -> anyhow::Result<Vec<Span>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans()?;
            if done(&spans) {
                return Ok(spans);
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = spans.iter().map(|s| format!("{}/{} ({}, parent {:?})", s.service, s.name, s.span_id, s.parent_span_id)).collect();
                bail!("the collector did not receive the spans expected within {timeout:?}; it has {}: [{}]", spans.len(), seen.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `scripts/go-tools otelcol`: the collector's binary, built on first use.
fn build() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/go-tools"))
        .arg("otelcol")
        .stdin(Stdio::null())
        .output()
        .context("cannot run scripts/go-tools")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("scripts/go-tools otelcol failed ({}):\n{stderr}", out.status);
    }
    if !stderr.trim().is_empty() {
        eprintln!("testkit: {}", stderr.trim());
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let bin = Path::new(&dir).join("otelcol");
    if !bin.is_file() {
        bail!("scripts/go-tools otelcol printed {dir:?}, which holds no otelcol binary");
    }
    Ok(bin)
}

fn yaml_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The spans of the exporter's lines, one OTLP/JSON `ExportTraceServiceRequest` each. A last
/// line without its newline is still being written, and waits for the next read.
fn parse_lines(text: &str) -> anyhow::Result<Vec<Span>> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    let mut spans = Vec::new();
    for (n, line) in complete.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let request: Value = serde_json::from_str(line).with_context(|| format!("line {} of the collector's file is not JSON", n + 1))?;
        for resource in array(&request["resourceSpans"]) {
            let service = attributes(&resource["resource"]["attributes"]).remove("service.name").unwrap_or_default();
            for scope in array(&resource["scopeSpans"]) {
                for span in array(&scope["spans"]) {
                    spans.push(Span {
                        trace_id: text_of(&span["traceId"]),
                        span_id: text_of(&span["spanId"]),
                        parent_span_id: text_of(&span["parentSpanId"]),
                        name: text_of(&span["name"]),
                        service: service.clone(),
                        start_ns: nanos(&span["startTimeUnixNano"]),
                        end_ns: nanos(&span["endTimeUnixNano"]),
                        attributes: attributes(&span["attributes"]),
                        events: array(&span["events"]).map(|e| SpanEvent { name: text_of(&e["name"]), time_ns: nanos(&e["timeUnixNano"]) }).collect(),
                        // OTLP/JSON writes enums as integers (2 = Error); their names are allowed too.
                        status_error: matches!(&span["status"]["code"], Value::Number(n) if n.as_u64() == Some(2))
                            || span["status"]["code"] == "STATUS_CODE_ERROR",
                    });
                }
            }
        }
    }
    Ok(spans)
}

fn array(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn text_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// OTLP/JSON writes 64-bit integers as strings; a number is accepted too.
fn nanos(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64()).unwrap_or(0)
}

fn attributes(list: &Value) -> BTreeMap<String, String> {
    array(list).map(|kv| (text_of(&kv["key"]), any_value(&kv["value"]))).collect()
}

/// An `AnyValue` as text: `{"stringValue": "a"}` is `a`, `{"intValue": "7"}` is `7`,
/// `{"boolValue": true}` is `true`, `{"doubleValue": 1.5}` is `1.5`; arrays and maps stay JSON.
fn any_value(v: &Value) -> String {
    let Some((_, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
        return String::new();
    };
    match inner {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_of_the_file_exporter_becomes_spans() {
        // As the file exporter of collector-contrib v0.162 wrote it (one line per request).
        let line = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc-a"}}]},"scopeSpans":[{"scope":{"name":"x"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"root","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000500000000","attributes":[{"key":"n","value":{"intValue":"42"}},{"key":"b","value":{"boolValue":true}},{"key":"d","value":{"doubleValue":1.5}},{"key":"l","value":{"arrayValue":{"values":[{"stringValue":"a"}]}}}],"events":[{"timeUnixNano":"1700000000100000000","name":"ev1"}],"status":{"message":"bad","code":2}},{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175","parentSpanId":"eee19b7ec3c1b174","name":"child","startTimeUnixNano":"1700000000100000000","endTimeUnixNano":"1700000000200000000","status":{}}]}]}]}"#;
        // The second line is still being written: not read yet.
        let spans = parse_lines(&format!("{line}\n{{\"resourceSpans\":[")).expect("parses");
        assert_eq!(spans.len(), 2);
        let (root, child) = (&spans[0], &spans[1]);
        assert_eq!((root.trace_id.as_str(), root.span_id.as_str(), root.parent_span_id.as_str()), ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", ""));
        assert_eq!((root.service.as_str(), root.name.as_str(), root.start_ns, root.end_ns), ("svc-a", "root", 1_700_000_000_000_000_000, 1_700_000_000_500_000_000));
        let attributes: Vec<(&str, &str)> = root.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(attributes, [("b", "true"), ("d", "1.5"), ("l", r#"{"values":[{"stringValue":"a"}]}"#), ("n", "42")]);
        assert_eq!(root.events, [SpanEvent { name: "ev1".into(), time_ns: 1_700_000_000_100_000_000 }]);
        assert!(root.status_error && !child.status_error);
        assert_eq!((child.parent_span_id.as_str(), child.service.as_str()), ("eee19b7ec3c1b174", "svc-a"));
    }
}
