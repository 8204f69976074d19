//! The baseline: a raw librdkafka producer with the receiver's settings (idempotent, acks=all,
//! same linger and compression, same payloads, key = obu_id), as fast as it can go. Also fills
//! the raw topic for the processor stage, with a share of invalid and duplicate records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use fleetstream_bench::Counting;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "gpscoords")]
    topic: String,
    /// Records to produce.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    #[arg(long, default_value_t = 1_000)]
    vehicles: u64,
    /// Share of records with an out-of-range latitude.
    #[arg(long, default_value_t = 0.0)]
    invalid_ratio: f64,
    /// Share of records that repeat the previous position of their vehicle.
    #[arg(long, default_value_t = 0.0)]
    duplicate_ratio: f64,
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,
    #[arg(long, default_value = "lz4")]
    compression: String,
}


fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let context = Counting::default();
    let producer: ThreadedProducer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", args.linger_ms.to_string())
        .set("compression.type", &args.compression)
        .set("queue.buffering.max.messages", "200000")
        .create_with_context(context)?;
    let producer = Arc::new(producer);
    let now = fleetstream_core::now_ms();
    let started = Instant::now();
    let (mut invalid, mut duplicates) = (0u64, 0u64);
    // Deterministic choices: every 1/ratio-th record.
    let every = |ratio: f64| if ratio > 0.0 { (1.0 / ratio).round() as u64 } else { u64::MAX };
    let (inv_every, dup_every) = (every(args.invalid_ratio), every(args.duplicate_ratio));
    for i in 0..args.count {
        let obu = 1 + i % args.vehicles;
        let mut seq = 1 + i / args.vehicles;
        let mut payload = fleetstream_bench::position_json(obu, seq, now - 60_000 + seq as i64, fleetstream_bench::base_point(obu));
        if i % inv_every == inv_every - 1 {
            payload = payload.replacen("\"lat\":5", "\"lat\":9", 1);
            invalid += 1;
        } else if i % dup_every == dup_every - 1 && seq > 1 {
            seq -= 1;
            payload = fleetstream_bench::position_json(obu, seq, now - 60_000 + seq as i64, fleetstream_bench::base_point(obu));
            duplicates += 1;
        }
        let key = obu.to_string();
        fleetstream_bench::send_waiting(&producer, BaseRecord::to(&args.topic).key(&key).payload(&payload));
    }
    producer.flush(Duration::from_secs(60))?;
    let elapsed = started.elapsed().as_secs_f64();
    let ctx = producer.context();
    let delivered = ctx.delivered();
    println!(
        "{}",
        serde_json::json!({
            "count": args.count,
            "delivered": delivered,
            "failed": ctx.failed(),
            "invalid": invalid,
            "duplicates": duplicates,
            "elapsed_s": elapsed,
            "per_s": delivered as f64 / elapsed,
        })
    );
    Ok(())
}
