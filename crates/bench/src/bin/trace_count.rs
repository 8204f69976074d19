//! What tracing left behind after a bench run: reads a topic whole (every partition up to its
//! high watermark) and counts its records and those carrying a `traceparent` header; with
//! `--spans`, reads an OpenTelemetry Collector's file exporter output (OTLP/JSON, one request
//! per line) and counts its spans, by name, and the headers that name one of them.
//!
//! Prints one JSON object: `records`, `traceparent`, and with `--spans` also `spans`,
//! `spans_by_name` and `headers_with_span`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use fleetstream_bench::otlp::read_spans;
use fleetstream_core::publish::headers;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The topic to read whole (the receiver's `gpscoords`).
    #[arg(long)]
    topic: String,
    /// The collector's file exporter output (OTLP/JSON lines).
    #[arg(long)]
    spans: Option<PathBuf>,
    /// Give up reading the topic after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (records, span_ids) = read_topic(&args)?;
    let mut out = serde_json::json!({"records": records, "traceparent": span_ids.len()});
    if let Some(path) = &args.spans {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let spans = read_spans(&text)?;
        let by_name = spans.iter().fold(BTreeMap::<&str, u64>::new(), |mut m, s| {
            *m.entry(s.name.as_str()).or_default() += 1;
            m
        });
        let known: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        out["spans"] = spans.len().into();
        out["spans_by_name"] = serde_json::to_value(by_name)?;
        out["headers_with_span"] = span_ids.iter().filter(|id| known.contains(id.as_str())).count().into();
    }
    println!("{out}");
    Ok(())
}

/// The number of records in the topic and the span id of every `traceparent` header.
fn read_topic(args: &Args) -> anyhow::Result<(u64, Vec<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("trace-count-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(&args.topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(&args.topic, p.id(), Offset::Offset(low))?;
            remaining.insert(p.id(), high);
        }
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let (mut records, mut span_ids) = (0u64, Vec::new());
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            bail!("{} not read to its end within {} s ({records} records read)", args.topic, args.timeout_s);
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.with_context(|| format!("cannot read {}", args.topic))?;
        records += 1;
        if let Some(value) = headers::text(m.headers(), headers::TRACEPARENT) {
            // 00-<trace id>-<span id>-<flags>
            span_ids.push(value.split('-').nth(2).unwrap_or_default().to_string());
        }
        if remaining.get(&m.partition()).is_some_and(|high| m.offset() + 1 >= *high) {
            remaining.remove(&m.partition());
        }
    }
    Ok((records, span_ids))
}
