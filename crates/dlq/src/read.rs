//! Reading a topic from a start (its beginning, or a time) to where it ended when the read
//! began: partitions assigned by hand (no consumer group, nothing committed), read_committed,
//! and a stall bound so that a read never hangs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use fleetstream_core::dlq;
use fleetstream_core::kafka::KafkaArgs;

/// Why a topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No broker answered within the timeout.
    #[error("cannot reach Kafka at {brokers} within {timeout:?} ({detail}); check --kafka-brokers, or raise --timeout")]
    Unreachable { brokers: String, timeout: Duration, detail: String },
    /// The topic does not exist.
    #[error("topic `{0}` does not exist (check --topic / --raw-topic and --kafka-brokers)")]
    TopicMissing(String),
    /// Records stopped arriving before every partition reached its end.
    #[error("reading `{topic}` stalled: nothing arrived for {timeout:?} with partitions {partitions:?} not read to their end")]
    Stalled { topic: String, timeout: Duration, partitions: Vec<i32> },
    /// A record asked for by position is not there.
    #[error("no record at {topic} partition {partition} offset {offset}: {why}")]
    NotFound { topic: String, partition: i32, offset: i64, why: String },
    /// Any other Kafka failure.
    #[error("{context}: {source}")]
    Kafka { context: String, source: KafkaError },
}

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> ReadError {
    let context = context.into();
    move |source| ReadError::Kafka { context, source }
}

/// A record as read back: its coordinates, bytes and headers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp, Unix ms.
    pub timestamp: Option<i64>,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    #[serde(skip)]
    pub value: Vec<u8>,
    /// Every header, in order; values as text (lossy) for display.
    #[serde(skip)]
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl RawRecord {
    fn from_message(m: &BorrowedMessage<'_>) -> RawRecord {
        RawRecord {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            headers: m.headers().map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect()).unwrap_or_default(),
        }
    }

    /// The last value of header `key` as text.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.iter().rev().find(|(k, _)| k == key).and_then(|(_, v)| v.as_deref()).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// A dead letter: the record plus what its headers say.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterRecord {
    #[serde(flatten)]
    pub record: RawRecord,
    pub stage: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub obu_id: Option<u64>,
    pub seq: Option<u64>,
    /// The raw topic the original was (or would have been) on.
    pub source_topic: Option<String>,
    /// Where the original was on the raw topic (processor dead letters only).
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
}

impl From<RawRecord> for DeadLetterRecord {
    fn from(record: RawRecord) -> Self {
        let text = |k| record.header(k).map(str::to_string);
        DeadLetterRecord {
            stage: text(dlq::STAGE),
            reason: text(dlq::REASON),
            message: text(dlq::MESSAGE),
            obu_id: record.header(dlq::OBU_ID).and_then(|v| v.parse().ok()),
            seq: record.header(dlq::SEQ).and_then(|v| v.parse().ok()),
            source_topic: text(dlq::TOPIC),
            source_partition: record.header(dlq::PARTITION).and_then(|v| v.parse().ok()),
            source_offset: record.header(dlq::OFFSET).and_then(|v| v.parse().ok()),
            record,
        }
    }
}

/// The reader's client context: librdkafka's own reports (a refused connection, dozens a second
/// while brokers are down; an end of partition) go to debug logs, since a read ends with one
/// clear error of its own instead.
#[derive(Debug, Clone, Copy)]
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, fac, "librdkafka: {log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, "librdkafka: {reason}");
    }
}

impl ConsumerContext for Quiet {}

type Consumer = BaseConsumer<Quiet>;

/// A reader of one cluster.
#[derive(Debug, Clone)]
pub struct Reader {
    pub kafka: KafkaArgs,
    /// Bound on every broker round trip and on a read that stops making progress.
    pub timeout: Duration,
}

impl Reader {
    fn consumer(&self) -> Result<Consumer, ReadError> {
        let mut config = self.kafka.reader_config("fleetstream-dlq-reader");
        config
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "100")
            .set("allow.auto.create.topics", "false");
        self.kafka.apply_overrides(&mut config);
        config.create_with_context(Quiet).map_err(kafka("cannot create a Kafka consumer"))
    }

    /// The partition count of `topic`, telling an unreachable broker from a missing topic.
    fn partitions(&self, consumer: &Consumer, topic: &str) -> Result<i32, ReadError> {
        let metadata = consumer.fetch_metadata(Some(topic), self.timeout).map_err(|e| ReadError::Unreachable {
            brokers: self.kafka.brokers.clone(),
            timeout: self.timeout,
            detail: e.rdkafka_error_code().map_or_else(|| e.to_string(), |code| code.to_string()),
        })?;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
            .ok_or_else(|| ReadError::TopicMissing(topic.to_string()))
    }

    /// Reads `topic` from `from` (Unix ms; `None`: its beginning) to where each partition ended
    /// when the read began, handing every record to `visit`; `visit` returns `false` to stop.
    /// Blocking.
    pub fn scan(&self, topic: &str, from: Option<i64>, mut visit: impl FnMut(RawRecord) -> bool) -> Result<(), ReadError> {
        let consumer = self.consumer()?;
        let partitions = self.partitions(&consumer, topic)?;
        let mut ends = HashMap::new();
        let mut starts = HashMap::new();
        for p in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(topic, p, self.timeout).map_err(kafka(format!("cannot read the offsets of {topic}[{p}]")))?;
            if high > low {
                ends.insert(p, high);
                starts.insert(p, low);
            }
        }
        if ends.is_empty() {
            return Ok(());
        }
        if let Some(from) = from {
            let mut query = TopicPartitionList::new();
            for p in ends.keys() {
                query.add_partition_offset(topic, *p, Offset::Offset(from)).map_err(kafka("offsets_for_times"))?;
            }
            let found = consumer.offsets_for_times(query, self.timeout).map_err(kafka(format!("cannot find offsets of {topic} by time")))?;
            for e in found.elements() {
                match e.offset() {
                    Offset::Offset(o) => {
                        starts.insert(e.partition(), o);
                    }
                    // No record at or after the time: nothing to read there.
                    _ => {
                        ends.remove(&e.partition());
                    }
                }
            }
        }
        ends.retain(|p, end| starts.get(p).is_some_and(|s| s < end));
        if ends.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in ends.keys() {
            let start = starts.get(p).copied().unwrap_or(0);
            tpl.add_partition_offset(topic, *p, Offset::Offset(start)).map_err(kafka("assign"))?;
        }
        consumer.assign(&tpl).map_err(kafka(format!("cannot assign the partitions of {topic}")))?;
        let mut last_progress = Instant::now();
        while !ends.is_empty() {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    let p = m.partition();
                    let Some(end) = ends.get(&p).copied() else { continue };
                    if m.offset() >= end {
                        // Written after the read began.
                        ends.remove(&p);
                        continue;
                    }
                    if m.offset() + 1 >= end {
                        ends.remove(&p);
                    }
                    if !visit(RawRecord::from_message(&m)) {
                        return Ok(());
                    }
                }
                // read_committed ends at the last stable offset, and transaction markers take
                // offsets: the partition's end is where librdkafka says it is.
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    last_progress = Instant::now();
                    ends.remove(&p);
                }
                Some(Err(e)) if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)) => {
                    return Err(ReadError::TopicMissing(topic.to_string()));
                }
                Some(Err(e)) => return Err(ReadError::Kafka { context: format!("cannot read {topic}"), source: e }),
                None => {}
            }
            if last_progress.elapsed() >= self.timeout {
                let mut partitions: Vec<i32> = ends.keys().copied().collect();
                partitions.sort_unstable();
                return Err(ReadError::Stalled { topic: topic.to_string(), timeout: self.timeout, partitions });
            }
        }
        Ok(())
    }

    /// The one record at `partition`:`offset` of `topic`. Blocking.
    pub fn one(&self, topic: &str, partition: i32, offset: i64) -> Result<RawRecord, ReadError> {
        let consumer = self.consumer()?;
        let partitions = self.partitions(&consumer, topic)?;
        let not_found = |why: String| ReadError::NotFound { topic: topic.to_string(), partition, offset, why };
        if partition < 0 || partition >= partitions {
            return Err(not_found(format!("the topic has partitions 0..{}", partitions - 1)));
        }
        let (low, high) = consumer.fetch_watermarks(topic, partition, self.timeout).map_err(kafka(format!("cannot read the offsets of {topic}[{partition}]")))?;
        if offset < low || offset >= high {
            return Err(not_found(format!("the partition holds offsets {low}..{}", high - 1)));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).map_err(kafka("assign"))?;
        consumer.assign(&tpl).map_err(kafka(format!("cannot assign {topic}[{partition}]")))?;
        let deadline = Instant::now() + self.timeout;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.offset() == offset => return Ok(RawRecord::from_message(&m)),
                // A transaction marker or an aborted record sits at `offset`: the next one read
                // is past it.
                Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => {
                    return Err(not_found("it is a transaction marker or an aborted record".into()));
                }
                Some(Err(e)) => return Err(ReadError::Kafka { context: format!("cannot read {topic}"), source: e }),
                None => {}
            }
        }
        Err(ReadError::Stalled { topic: topic.to_string(), timeout: self.timeout, partitions: vec![partition] })
    }
}
