//! End-to-end latency: reads the `positions` topic from its end and measures, for every record,
//! the time from the device timestamp (`ts`) to its arrival here. Prints percentiles as JSON.

use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "positions")]
    topic: String,
    /// Stop after this long without a record (once records have started to arrive).
    #[arg(long, default_value = "5s", value_parser = humantime_secs)]
    idle: Duration,
    /// Give up after this long in total.
    #[arg(long, default_value = "300s", value_parser = humantime_secs)]
    timeout: Duration,
    /// Stop after this many records.
    #[arg(long)]
    count: Option<u64>,
    /// Write "ready" to this file once positioned at the end (so the load can start).
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let n: f64 = s.trim_end_matches('s').parse().map_err(|e| format!("{s}: {e}"))?;
    Ok(Duration::from_secs_f64(n))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("latency-probe-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        // The probe's own fetch wait would add to every measurement.
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(&args.topic, p.id(), Offset::End)?;
        }
    }
    consumer.assign(&tpl)?;
    // Make sure the end offsets are resolved before the load starts.
    let _ = consumer.poll(Duration::from_millis(500));
    if let Some(path) = &args.ready_file {
        std::fs::write(path, "ready")?;
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let started = Instant::now();
    let (mut first, mut last) = (None::<Instant>, Instant::now());
    let mut n = 0u64;
    loop {
        if started.elapsed() > args.timeout || args.count.is_some_and(|c| n >= c) {
            break;
        }
        if first.is_some() && last.elapsed() > args.idle {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let now = fleetstream_core::now_ms();
                let ts = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .and_then(|v| v["ts"].as_i64());
                if let Some(ts) = ts {
                    let _ = latency.record(((now - ts).max(0) as u64 * 1000).max(1));
                }
                n += 1;
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
            }
            Some(Err(e)) => eprintln!("latency-probe: {e}"),
            None => {}
        }
    }
    let span = first.map(|f| last.duration_since(f).as_secs_f64()).unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({
            "records": n,
            "span_s": span,
            "per_s": if span > 0.0 { n as f64 / span } else { 0.0 },
            "latency_ms": fleetstream_bench::percentiles_ms(&latency),
        })
    );
    Ok(())
}
