//! The floors the pipeline is measured against: Kafka alone, with the services' client settings
//! (core's producer and consumer configs: idempotent, acks=all, linger, lz4, read_committed,
//! the same fetch wait), on the same broker in the same run.
//!
//! - `latency --hops 1`: a paced producer writes positions stamped with their send time to
//!   topic A; a probe (the same reader the end-to-end stage uses) reads A and measures
//!   send -> visible. Floor 1.
//! - `latency --hops 2`: the same, but a plain copy loop (a group consumer and a producer with
//!   the processor's settings, no validation, no transactions) copies A to B and the probe
//!   reads B: produce -> consume -> produce -> consume. Floor 2.
//! - `copy`: the copy loop alone over a filled topic, as fast as it goes: the processor's
//!   throughput floor.
//!
//! Prints one JSON object.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use fleetstream_bench::Counting;
use fleetstream_core::kafka::{KafkaArgs, ProducerArgs};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The producers' linger.ms (the services' default).
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Paced records, send -> visible to a read_committed reader after one or two hops.
    Latency {
        /// The topic written to.
        #[arg(long)]
        from: String,
        /// The topic the copy loop writes to (two hops).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 1)]
        hops: u8,
        /// Records per second.
        #[arg(long)]
        rate: u64,
        /// How long to send, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1_000)]
        vehicles: u64,
    },
    /// The copy loop over `count` records already in `from`, as fast as it goes.
    Copy {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        count: u64,
    },
}


struct Clients {
    kafka: KafkaArgs,
    producer: ProducerArgs,
}

impl Clients {
    fn producer(&self) -> anyhow::Result<ThreadedProducer<Counting>> {
        let mut config = self.kafka.producer_config(&self.producer);
        // The receiver's queue (lib.rs): room for a burst.
        config.set("queue.buffering.max.messages", "200000");
        Ok(config.create_with_context(Counting::default())?)
    }

    /// A group member with the processor's settings, from the start of the topic.
    fn consumer(&self, topic: &str) -> anyhow::Result<BaseConsumer> {
        let group = format!("hop-bench-{}-{topic}", std::process::id());
        let consumer: BaseConsumer = self.kafka.consumer_config(&group).create()?;
        consumer.subscribe(&[topic])?;
        Ok(consumer)
    }

    /// The end-to-end stage's probe (latency-probe): assigned at the end of every partition.
    fn probe(&self, topic: &str) -> anyhow::Result<BaseConsumer> {
        let mut config = self.kafka.reader_config(&format!("hop-probe-{}", std::process::id()));
        config.set("fetch.wait.max.ms", "5");
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::End)?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(consumer)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let clients = Clients {
        kafka: KafkaArgs::plaintext(args.brokers.clone()),
        producer: ProducerArgs { linger_ms: args.linger_ms, compression: "lz4".into(), delivery_timeout: Duration::from_secs(30) },
    };
    let out = match args.command {
        Command::Latency { from, to, hops, rate, seconds, vehicles } => {
            let read = match (hops, &to) {
                (1, _) => from.clone(),
                (2, Some(to)) => to.clone(),
                _ => anyhow::bail!("--hops 1, or --hops 2 with --to"),
            };
            latency(&clients, &from, to.as_deref().filter(|_| hops == 2), &read, rate, seconds, vehicles)?
        }
        Command::Copy { from, to, count } => copy(&clients, &from, &to, count)?,
    };
    println!("{out}");
    Ok(())
}

/// Copies records from `from` to `to` (same key and payload) until `stop`; commits the
/// consumer's position now and then, as a plain at-least-once loop does. Returns how many.
fn copy_loop(clients: &Clients, from: &str, to: &str, stop: &AtomicBool, until: Option<u64>) -> anyhow::Result<(u64, ThreadedProducer<Counting>, Option<Instant>)> {
    let consumer = clients.consumer(from)?;
    let producer = clients.producer()?;
    let mut n = 0u64;
    let mut first = None;
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Relaxed) && until.is_none_or(|u| n < u) {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                let mut record = BaseRecord::to(to).payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                fleetstream_bench::send_waiting(&producer, record);
                n += 1;
            }
            Some(Err(e)) => eprintln!("hop-bench: consumer: {e}"),
            None => {}
        }
        if last_commit.elapsed() > Duration::from_secs(1) {
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    Ok((n, producer, first))
}

fn copy(clients: &Clients, from: &str, to: &str, count: u64) -> anyhow::Result<serde_json::Value> {
    let stop = AtomicBool::new(false);
    let (n, producer, first) = copy_loop(clients, from, to, &stop, Some(count))?;
    producer.flush(Duration::from_secs(60))?;
    let elapsed = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
    let ctx = producer.context();
    Ok(serde_json::json!({
        "copied": n,
        "delivered": ctx.delivered(),
        "failed": ctx.failed(),
        "elapsed_s": elapsed,
        "per_s": if elapsed > 0.0 { n as f64 / elapsed } else { 0.0 },
    }))
}

/// Keys of the warm-up records (not measured).
const WARM_UP: &str = "warm-up-";

/// Before measuring, as the end-to-end stage does with its warm-up positions: the producer has
/// its metadata and producer id, the copy loop its partitions, the probe its positions. Sends
/// a record to every partition until the probe has seen one of each.
fn warm_up(producer: &ThreadedProducer<Counting>, topic: &str, probe: &BaseConsumer) -> anyhow::Result<()> {
    let partitions = producer.client().fetch_metadata(Some(topic), Duration::from_secs(10))?.topics().first().map(|t| t.partitions().len()).unwrap_or(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < partitions {
        if Instant::now() > deadline {
            anyhow::bail!("warm-up records did not arrive within 60 s ({} of {partitions} partitions)", seen.len());
        }
        for p in 0..partitions as i32 {
            let key = format!("{WARM_UP}{p}");
            let _ = producer.send(BaseRecord::to(topic).key(&key).partition(p).payload("{}"));
        }
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until && seen.len() < partitions {
            if let Some(Ok(m)) = probe.poll(Duration::from_millis(50)) {
                if let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| k.strip_prefix(WARM_UP)) {
                    seen.insert(k.to_string());
                }
            }
        }
    }
    Ok(())
}

fn latency(clients: &Clients, from: &str, to: Option<&str>, read: &str, rate: u64, seconds: f64, vehicles: u64) -> anyhow::Result<serde_json::Value> {
    let probe = clients.probe(read)?;
    // The end offsets resolved before anything is sent.
    let _ = probe.poll(Duration::from_millis(500));
    let stop = Arc::new(AtomicBool::new(false));
    let copier = to.map(|to| {
        let (stop, from, to) = (stop.clone(), from.to_string(), to.to_string());
        let clients = Clients { kafka: clients.kafka.clone(), producer: clients.producer.clone() };
        std::thread::spawn(move || copy_loop(&clients, &from, &to, &stop, None).map(|(n, p, _)| (n, p.context().failed())))
    });
    let total = (rate as f64 * seconds) as u64;
    let producer = clients.producer()?;
    warm_up(&producer, from, &probe)?;
    let sender = {
        let from = from.to_string();
        std::thread::spawn(move || -> (u64, u64) {
            // Paced in 1 ms steps, vehicles in turn, each position stamped when sent.
            let started = Instant::now();
            let mut sent = 0u64;
            while sent < total {
                let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                while sent < due {
                    let obu = 1 + sent % vehicles;
                    let seq = 1 + sent / vehicles;
                    let payload = fleetstream_bench::position_json(obu, seq, fleetstream_core::now_ms(), fleetstream_bench::base_point(obu));
                    let key = obu.to_string();
                    if producer.send(BaseRecord::to(&from).key(&key).payload(&payload)).is_ok() {
                        sent += 1;
                    } else {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = producer.flush(Duration::from_secs(30));
            (sent, producer.context().failed())
        })
    };
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut seen = 0u64;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds) + Duration::from_secs(60);
    let mut last = Instant::now();
    while seen < total && Instant::now() < deadline && !(seen > 0 && last.elapsed() > Duration::from_secs(10)) {
        if let Some(Ok(m)) = probe.poll(Duration::from_millis(100)) {
            if m.key().is_some_and(|k| k.starts_with(WARM_UP.as_bytes())) {
                continue;
            }
            let now = fleetstream_core::now_ms();
            let ts = m.payload().and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok()).and_then(|v| v["ts"].as_i64());
            if let Some(ts) = ts {
                let _ = latency.record(((now - ts).max(0) as u64 * 1000).max(1));
            }
            seen += 1;
            last = Instant::now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, send_failed) = sender.join().map_err(|_| anyhow::anyhow!("the sender panicked"))?;
    let copied = match copier {
        Some(h) => Some(h.join().map_err(|_| anyhow::anyhow!("the copy loop panicked"))?.context("copy loop")?),
        None => None,
    };
    Ok(serde_json::json!({
        "hops": if to.is_some() { 2 } else { 1 },
        "rate": rate,
        "sent": sent,
        "failed": send_failed + copied.map(|c| c.1).unwrap_or(0),
        "copied": copied.map(|c| c.0),
        "arrived": seen,
        "latency_ms": fleetstream_bench::percentiles_ms(&latency),
    }))
}
