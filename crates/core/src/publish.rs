//! The one publishing layer: how a record goes to Kafka.
//!
//! [`Outgoing`] is a record to write (topic, partition, key, payload or none, headers,
//! timestamp);
//! [`Publisher`] is the one place that hands records to the producer: when librdkafka's local
//! queue is full it waits (Kafka is slower than the input) up to a deadline, and gives up at
//! once when the service shuts down; errors are sorted into final ones (the record can never be
//! written: too large, unknown topic, not authorised) and transient ones. The key rule and the
//! shared header names live here too, with their readers.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

/// The Kafka key of every record about a vehicle: its decimal obu_id, so that all of them share
/// a partition and keep their order.
pub fn vehicle_key(obu_id: u64) -> String {
    obu_id.to_string()
}

/// Header names fleetstream puts on records, and their readers. The DLQ's own headers are in
/// [`crate::dlq`].
pub mod headers {
    use rdkafka::message::Headers;

    /// On `gpscoords`: when the receiver got the position, Unix ms.
    pub const RECEIVED_AT: &str = "fleetstream.received_at";
    /// On `gpscoords`: the receiver instance that wrote it.
    pub const RECEIVER: &str = "fleetstream.receiver";
    /// On `gpscoords`: `legacy` when the device spoke the old format.
    pub const FORMAT: &str = "fleetstream.format";
    /// On `positions`: the input partition the position came from.
    pub const SRC_PARTITION: &str = "fleetstream.src.partition";
    /// On `positions`: the input offset the position came from.
    pub const SRC_OFFSET: &str = "fleetstream.src.offset";
    /// On a record written on behalf of a sampled position: its trace, as W3C Trace Context
    /// (`00-<trace id>-<span id>-01`), naming the span of the service that wrote it. Absent
    /// when tracing is off or the position was not sampled.
    pub const TRACEPARENT: &str = "traceparent";
    /// On `events`: the event's type, so a consumer can filter without parsing the value.
    pub const EVENT_TYPE: &str = "fleetstream.event.type";
    /// On a `vehicle-latest` tombstone (a decommissioned vehicle): its latest position then, as
    /// `vehicle-latest` writes an order (the seq, or `BOOT:SEQ`). Positions up to it were sent
    /// before the decommission and do not bring the vehicle back.
    pub const DECOMMISSIONED_AFTER: &str = "fleetstream.decommissioned.after";

    /// The value of header `key` as text (the last one, if repeated).
    pub fn text<'a, H: Headers>(headers: Option<&'a H>, key: &str) -> Option<&'a str> {
        let headers = headers?;
        headers.iter().filter(|h| h.key == key).last().and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value of header `key` as an integer.
    pub fn int<H: Headers>(headers: Option<&H>, key: &str) -> Option<i64> {
        text(headers, key)?.parse().ok()
    }
}

/// A record to write.
#[derive(Debug)]
pub struct Outgoing<'a> {
    topic: &'a str,
    partition: Option<i32>,
    key: Option<Cow<'a, [u8]>>,
    /// `None`: a tombstone.
    payload: Option<Cow<'a, [u8]>>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
}

impl<'a> Outgoing<'a> {
    pub fn new(topic: &'a str, payload: impl Into<Cow<'a, [u8]>>) -> Self {
        Outgoing { topic, partition: None, key: None, payload: Some(payload.into()), headers: None, timestamp: None }
    }

    /// A record with no value at all (not an empty one): in a compacted topic it deletes its key,
    /// once compaction reaches it, from the partition it is written to.
    pub fn tombstone(topic: &'a str) -> Self {
        Outgoing { topic, partition: None, key: None, payload: None, headers: None, timestamp: None }
    }

    /// A record about a vehicle: keyed by [`vehicle_key`].
    pub fn for_vehicle(topic: &'a str, obu_id: u64, payload: impl Into<Cow<'a, [u8]>>) -> Self {
        Outgoing::new(topic, payload).key(vehicle_key(obu_id).into_bytes())
    }

    pub fn key(mut self, key: impl Into<Cow<'a, [u8]>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// A partition chosen by the writer instead of the key's hash.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The record's timestamp, Unix ms (default: now).
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }

    /// Adds a header with a text value.
    pub fn header(mut self, key: &str, value: &str) -> Self {
        let headers = self.headers.take().unwrap_or_else(|| OwnedHeaders::new_with_capacity(4));
        self.headers = Some(headers.insert(Header { key, value: Some(value.as_bytes()) }));
        self
    }

    /// Sets all headers at once.
    pub fn headers(mut self, headers: OwnedHeaders) -> Self {
        self.headers = Some(headers);
        self
    }

    pub fn topic(&self) -> &str {
        self.topic
    }

    /// The value; empty for a tombstone (see [`Outgoing::is_tombstone`]).
    pub fn payload(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or_default()
    }

    pub fn is_tombstone(&self) -> bool {
        self.payload.is_none()
    }

    pub fn key_bytes(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    pub fn header_value(&self, key: &str) -> Option<&str> {
        headers::text(self.headers.as_ref(), key)
    }

    fn future_record(&self) -> FutureRecord<'_, [u8], [u8]> {
        let mut r = FutureRecord::to(self.topic);
        if let Some(p) = &self.payload {
            r = r.payload(p.as_ref());
        }
        if let Some(k) = &self.key {
            r = r.key(k.as_ref());
        }
        if let Some(p) = self.partition {
            r = r.partition(p);
        }
        if let Some(ts) = self.timestamp {
            r = r.timestamp(ts);
        }
        if let Some(h) = &self.headers {
            r = r.headers(h.clone());
        }
        r
    }
}

/// Why a record could not be handed to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The service is stopping; the record was not handed over.
    #[error("shutting down")]
    ShuttingDown,
    /// librdkafka's local queue stayed full until the deadline.
    #[error("the producer's local queue stayed full for {0:?}: Kafka is not keeping up")]
    QueueFull(Duration),
    /// Kafka (or librdkafka) refused the record.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

impl PublishError {
    /// Whether writing the same record again can never succeed.
    pub fn is_final(&self) -> bool {
        match self {
            PublishError::Kafka(e) => is_final(e),
            _ => false,
        }
    }
}

/// Whether a Kafka error is final for a record: retrying it cannot succeed.
pub fn is_final(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::UnknownTopic
                | C::UnknownTopicOrPartition
                | C::UnknownPartition
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
                | C::InvalidRecord
                | C::InvalidTopic
        )
    )
}

/// Hands records to a producer.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

/// How long to wait before offering a record to a full queue again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

impl Publisher {
    /// A publisher that stops waiting on a full queue when `shutdown` is cancelled.
    pub fn new(producer: FutureProducer, shutdown: CancellationToken) -> Self {
        Publisher { producer, shutdown }
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Hands `record` to the producer and returns its delivery report's future. On a full
    /// local queue, waits until `deadline` (or shutdown).
    pub async fn enqueue(&self, record: &Outgoing<'_>, deadline: Instant) -> Result<DeliveryFuture, PublishError> {
        let started = Instant::now();
        loop {
            match self.producer.send_result(record.future_record()) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if Instant::now() >= deadline {
                        return Err(PublishError::QueueFull(started.elapsed()));
                    }
                    tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => return Err(PublishError::ShuttingDown),
                        () = tokio::time::sleep(QUEUE_FULL_PAUSE) => {}
                    }
                }
                Err((error, _)) => return Err(PublishError::Kafka(error)),
            }
        }
    }
}

/// Waits for a delivery report: the (partition, offset) the record got, or why it failed.
pub async fn delivered(delivery: DeliveryFuture) -> Result<(i32, i64), KafkaError> {
    match delivery.await {
        Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
        Ok(Err((error, _))) => Err(error),
        // The producer was dropped with the record still queued.
        Err(_) => Err(KafkaError::Canceled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_key_partition_timestamp_and_headers() {
        let r = Outgoing::for_vehicle("positions", 42, b"{}".as_slice())
            .partition(3)
            .timestamp(1_700_000_000_000)
            .header(headers::SRC_OFFSET, "17");
        assert_eq!(r.key_bytes(), Some(b"42".as_slice()));
        assert_eq!(r.header_value(headers::SRC_OFFSET), Some("17"));
        let f = r.future_record();
        assert_eq!(f.partition, Some(3));
        assert_eq!(f.timestamp, Some(1_700_000_000_000));
        assert_eq!(headers::int(f.headers.as_ref(), headers::SRC_OFFSET), Some(17));
        assert_eq!(headers::int(f.headers.as_ref(), headers::SRC_PARTITION), None);
        assert_eq!(f.payload, Some(b"{}".as_slice()));
    }

    #[test]
    fn a_tombstone_has_no_value_at_all() {
        let t = Outgoing::tombstone("vehicle-latest").key(vehicle_key(7).into_bytes()).partition(2);
        assert!(t.is_tombstone() && t.payload().is_empty());
        let f = t.future_record();
        assert_eq!((f.payload, f.key, f.partition), (None, Some(b"7".as_slice()), Some(2)), "null, not empty");
        assert!(!Outgoing::new("positions", Vec::new()).is_tombstone(), "an empty value is a value");
    }

    #[test]
    fn oversized_and_unauthorised_records_are_final() {
        assert!(is_final(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(is_final(&KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(!is_final(&KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas)));
        assert!(!is_final(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
    }
}
