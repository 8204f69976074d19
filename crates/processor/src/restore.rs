//! Rebuilding a partition's state from what the processor already wrote (see
//! docs/processing.md, "Guarantees"). With Kafka transactions this is the per-vehicle state
//! (latest position, duplicate window) as of the last committed batch; without them it also
//! tells which input records of an unfinished batch were already written.
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
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use fleetstream_core::telemetry::Throttle;

use crate::judge::{self, Judge};
use crate::outputs::Layout;
use crate::state::VehicleState;
use crate::config::Config;

/// What is known of one input partition.
#[derive(Debug, Default)]
pub struct PartitionState {
    pub vehicles: HashMap<u64, VehicleState>,
    /// Source offsets at or after the resume point whose position is already in `positions`.
    pub written: HashSet<i64>,
    /// Source offsets at or after the resume point already in the DLQ.
    pub dead_lettered: HashSet<i64>,
    /// When this processor restored it (its clock, Unix ms): it has heard nothing of these
    /// vehicles before, so their silence counts from here at the earliest.
    pub loaded_at: i64,
}

/// How many records one step of a backward scan reads.
const CHUNK: i64 = 2_000;
/// A read that makes no progress for this long fails (and is retried by the caller).
/// Longer than the default transaction timeout: an open transaction of a crashed instance holds a
/// read up to that long.
const STALL: Duration = Duration::from_secs(45);

/// The state reader's context: end-of-partition is how every read ends, not an error worth
/// logging; other errors are logged at most every few seconds.
pub struct ReaderContext(std::sync::Mutex<Throttle>);

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF));
        if eof {
            return;
        }
        if let Some(held_back) = self.0.lock().ok().and_then(|mut t| t.pass()) {
            tracing::warn!(%error, reason, similar_since_last = held_back, "state reader: Kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

/// The state reader's consumer.
pub type Reader = BaseConsumer<ReaderContext>;

/// A consumer used only with `assign`, kept for the life of the processor so that a restore
/// costs a few round trips, not a new connection.
pub fn reader(config: &Config) -> anyhow::Result<Reader> {
    // Read committed: a transaction left open by a crashed or fenced instance is aborted, and
    // its records must not be taken for written.
    let mut client = config.kafka.reader_config(&format!("{}-restore", config.group_id));
    client
        .set("enable.partition.eof", "true")
        // Every read ends at the end of its partition: the broker should say so at once, not
        // after holding an empty fetch for librdkafka's default 500 ms.
        .set("fetch.wait.max.ms", "10");
    config.kafka.apply_overrides(&mut client);
    let context = ReaderContext(std::sync::Mutex::new(Throttle::new(Duration::from_secs(5))));
    client.create_with_context(context).context("cannot create state reader")
}

/// `judge` replays the event rules over positions written after the last commit (without
/// transactions), so the event state matches what was written: their events were written
/// before them.
pub(crate) fn restore(reader: &Reader, layout: &Layout, judge: Judge<'_>, partition: i32, resume_from: i64) -> anyhow::Result<PartitionState> {
    let mut state = PartitionState { loaded_at: fleetstream_core::now_ms(), ..PartitionState::default() };

    // Where a restore's time goes (make bench's take-over stage reads the debug line).
    let started = Instant::now();
    let (mut latest_records, mut decode) = (0u64, Duration::ZERO);
    let (low, high) = stable_watermarks(reader, layout.latest(), partition)?;
    read_range(reader, layout.latest(), partition, low, high, |m| {
        let t = Instant::now();
        latest_records += 1;
        if let Some(latest) = Layout::latest_of(m) {
            state.vehicles.insert(latest.position.obu_id, VehicleState::from_latest(latest));
        }
        decode += t.elapsed();
    })?;
    let latest_done = Instant::now();

    let tail = scan_tail(reader, layout.positions(), partition, resume_from, |m| Layout::written_offset(m), |m| Layout::position_of(m))?;
    for (src_offset, position) in tail {
        state.written.insert(src_offset);
        if let Some(p) = position {
            judge::advance(judge, &mut state.vehicles, &p, p.processed_at);
        }
    }
    let positions_done = Instant::now();

    let dead = scan_tail(reader, layout.dlq(), partition, resume_from, |m| layout.dead_lettered_offset(m, partition), |_| ())?;
    state.dead_lettered = dead.into_iter().map(|(offset, ())| offset).collect();
    tracing::debug!(
        partition,
        latest_records,
        latest_secs = latest_done.duration_since(started).as_secs_f64(),
        latest_decode_secs = decode.as_secs_f64(),
        positions_tail_secs = positions_done.duration_since(latest_done).as_secs_f64(),
        dlq_tail_secs = positions_done.elapsed().as_secs_f64(),
        "partition state restore phases"
    );
    Ok(state)
}

/// Reads `[from, to)` of a partition, calling `each` per record.
fn read_range(reader: &Reader, topic: &str, partition: i32, from: i64, to: i64, mut each: impl FnMut(&BorrowedMessage<'_>)) -> anyhow::Result<()> {
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
            // The end as a read_committed reader sees it (`stable_watermarks` waited until
            // that is the high watermark); a partition may end with a transaction marker, which
            // is never delivered as a record.
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

/// A partition's low and high watermarks once no transaction is open in it: the last stable
/// offset (the end a read_committed reader sees) has reached the high watermark. A transaction
/// left open by a crashed or frozen instance holds it back until Kafka aborts it (at the
/// instance's transaction timeout, or at once when the same transactional id starts again);
/// reading before that would miss what was committed after it.
fn stable_watermarks(reader: &Reader, topic: &str, partition: i32) -> anyhow::Result<(i64, i64)> {
    let started = Instant::now();
    loop {
        let (low, high) = reader
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("cannot read the watermarks of {topic}[{partition}]"))?;
        let mut latest = TopicPartitionList::new();
        latest.add_partition_offset(topic, partition, Offset::End)?;
        // ListOffsets(latest) under read_committed answers the last stable offset.
        let stable = reader
            .offsets_for_times(latest, Duration::from_secs(10))
            .with_context(|| format!("cannot read the last stable offset of {topic}[{partition}]"))?
            .find_partition(topic, partition)
            .and_then(|e| e.offset().to_raw());
        if stable.is_some_and(|lso| lso >= high) {
            return Ok((low, high));
        }
        if started.elapsed() > STALL {
            bail!("{topic}[{partition}] has had a transaction open for {STALL:?} (last stable offset {stable:?}, high watermark {high})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads a partition backwards in chunks, keeping `value` of each record whose source offset
/// (as given by `src`) is at least `resume_from`, until one below it is found. Output in offset
/// order.
fn scan_tail<T>(
    reader: &Reader,
    topic: &str,
    partition: i32,
    resume_from: i64,
    src: impl Fn(&BorrowedMessage<'_>) -> Option<i64>,
    value: impl Fn(&BorrowedMessage<'_>) -> T,
) -> anyhow::Result<Vec<(i64, T)>> {
    let (low, high) = stable_watermarks(reader, topic, partition)?;
    let mut found = Vec::new();
    let mut end = high;
    while end > low {
        let start = (end - CHUNK).max(low);
        let mut chunk = Vec::new();
        let mut reached = false;
        read_range(reader, topic, partition, start, end, |m| match src(m) {
            Some(o) if o >= resume_from => chunk.push((o, value(m))),
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
