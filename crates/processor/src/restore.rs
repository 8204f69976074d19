//! Rebuilding a partition's state from what the processor already wrote, so that exactly-once
//! holds without Kafka transactions (see docs/processing.md, "Guarantees").
//!
//! Input partition p maps to partition p of every output topic (the processor writes there
//! explicitly). When p is assigned, with C the offset processing resumes from:
//! 1. `vehicle-latest` partition p, read whole, gives every vehicle's latest position and
//!    duplicate window as of the last committed batch (it is written before each commit);
//! 2. the tail of `positions` partition p, read backwards until a record whose source offset is
//!    below C, gives what was written after that commit and before a crash: those source offsets
//!    are skipped when reprocessed, and their positions are applied to the state;
//! 3. the tail of the DLQ partition p likewise gives the source offsets already dead-lettered.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use fleetstream_core::dlq;
use fleetstream_core::position::VehicleLatest;
use fleetstream_core::ProcessedPosition;

use crate::state::VehicleState;
use crate::{Config, HEADER_SRC_OFFSET};

/// What is known of one input partition.
#[derive(Debug, Default)]
pub struct PartitionState {
    pub vehicles: HashMap<u64, VehicleState>,
    /// Source offsets at or after the resume point whose position is already in `positions`.
    pub written: HashSet<i64>,
    /// Source offsets at or after the resume point already in the DLQ.
    pub dead_lettered: HashSet<i64>,
}

/// How many records one step of a backward scan reads.
const CHUNK: i64 = 2_000;
/// A read that makes no progress for this long fails (and is retried by the caller).
const STALL: Duration = Duration::from_secs(15);

/// A consumer used only with `assign`, kept for the life of the processor so that a restore
/// costs a few round trips, not a new connection.
pub fn reader(config: &Config) -> anyhow::Result<BaseConsumer> {
    let mut client = config.kafka.client_config();
    client
        .set("group.id", format!("{}-restore", config.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    config.kafka.apply_overrides(&mut client);
    client.create().context("cannot create state reader")
}

pub fn restore(reader: &BaseConsumer, config: &Config, partition: i32, resume_from: i64) -> anyhow::Result<PartitionState> {
    let mut state = PartitionState::default();

    let (low, high) = reader.fetch_watermarks(&config.latest_topic, partition, Duration::from_secs(10))?;
    read_range(reader, &config.latest_topic, partition, low, high, |m| {
        if let Some(latest) = m.payload().and_then(|b| serde_json::from_slice::<VehicleLatest>(b).ok()) {
            state.vehicles.insert(latest.position.obu_id, VehicleState::from_latest(latest));
        }
    })?;

    let tail = scan_tail(reader, &config.positions_topic, partition, resume_from, |m| header_i64(m, HEADER_SRC_OFFSET))?;
    for (src_offset, payload) in tail {
        state.written.insert(src_offset);
        if let Ok(p) = serde_json::from_slice::<ProcessedPosition>(&payload) {
            match state.vehicles.get_mut(&p.obu_id) {
                Some(v) => v.apply(p),
                None => {
                    state.vehicles.insert(p.obu_id, VehicleState::new(p));
                }
            }
        }
    }

    let input = config.input_topic.as_str();
    let dlq_tail = scan_tail(reader, &config.dlq_topic, partition, resume_from, |m| {
        let ours = header_str(m, dlq::STAGE) == Some("processor")
            && header_str(m, dlq::TOPIC) == Some(input)
            && header_i64(m, dlq::PARTITION) == Some(partition as i64);
        if ours { header_i64(m, dlq::OFFSET) } else { None }
    })?;
    state.dead_lettered = dlq_tail.into_iter().map(|(o, _)| o).collect();
    Ok(state)
}

/// Reads `[from, to)` of a partition, calling `each` per record.
fn read_range(reader: &BaseConsumer, topic: &str, partition: i32, from: i64, to: i64, mut each: impl FnMut(&BorrowedMessage<'_>)) -> anyhow::Result<()> {
    if from >= to {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    reader.assign(&tpl)?;
    let mut progress = Instant::now();
    loop {
        match reader.poll(Duration::from_millis(500)) {
            // A record of an earlier assignment still in the queue is not part of this read.
            Some(Ok(m)) if m.topic() != topic || m.partition() != partition => {}
            Some(Ok(m)) => {
                progress = Instant::now();
                if m.offset() >= to {
                    break;
                }
                each(&m);
                if m.offset() >= to - 1 {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => break,
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            // Client-wide errors (all brokers down, a transport failure) can be left in the
            // long-lived reader's queue from an outage; they say nothing about this read,
            // which the stall timeout bounds anyway.
            Some(Err(e)) => tracing::debug!(topic, partition, error = %e, "state reader error"),
            None if progress.elapsed() > STALL => bail!("reading {topic}[{partition}] made no progress for {STALL:?}"),
            None => {}
        }
    }
    reader.unassign()?;
    Ok(())
}

/// Reads a partition backwards in chunks, collecting records whose source offset (as given by
/// `src`) is at least `resume_from`, until one below it is found. Output in offset order.
fn scan_tail(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    resume_from: i64,
    src: impl Fn(&BorrowedMessage<'_>) -> Option<i64>,
) -> anyhow::Result<Vec<(i64, Vec<u8>)>> {
    let (low, high) = reader.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    let mut found = Vec::new();
    let mut end = high;
    while end > low {
        let start = (end - CHUNK).max(low);
        let mut chunk = Vec::new();
        let mut reached = false;
        read_range(reader, topic, partition, start, end, |m| match src(m) {
            Some(o) if o >= resume_from => chunk.push((o, m.payload().unwrap_or_default().to_vec())),
            Some(_) => reached = true,
            None => {}
        })?;
        chunk.extend(found);
        found = chunk;
        if reached {
            break;
        }
        end = start;
    }
    Ok(found)
}

fn header_str<'a>(m: &'a BorrowedMessage<'_>, key: &str) -> Option<&'a str> {
    m.headers()?.iter().find(|h| h.key == key).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
}

fn header_i64(m: &BorrowedMessage<'_>, key: &str) -> Option<i64> {
    header_str(m, key)?.parse().ok()
}
