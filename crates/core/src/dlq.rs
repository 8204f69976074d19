//! Dead-letter records: the original bytes plus headers in the Kafka Connect convention
//! (`__connect.errors.*`), extended with the fields Connect lacks. Every value is UTF-8 text.
//! The list is documented in docs/wire-format.md.

use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::publish::headers::{int, text};
use crate::publish::{vehicle_key, Outgoing};
use crate::reason::Rejection;

/// Topic the record was read from (processor), or the receiver's raw topic (receiver).
pub const TOPIC: &str = "__connect.errors.topic";
/// Partition of the original record (processor only).
pub const PARTITION: &str = "__connect.errors.partition";
/// Offset of the original record (processor only).
pub const OFFSET: &str = "__connect.errors.offset";
/// Timestamp of the original record, Unix ms (processor) or receipt time (receiver).
pub const TIMESTAMP: &str = "__connect.errors.timestamp";
/// Consumer group (processor) or receiver instance id (receiver).
pub const GROUP: &str = "__connect.errors.connector.name";
/// `receiver` or `processor`.
pub const STAGE: &str = "__connect.errors.stage";
/// The rejection's reason code (see `Reason`).
pub const REASON: &str = "__connect.errors.reason";
/// The rejection's human message.
pub const MESSAGE: &str = "__connect.errors.exception.message";
/// How many times the record was tried (1 unless a transient failure was retried).
pub const ATTEMPTS: &str = "__connect.errors.attempts";
/// When the record was rejected, Unix ms.
pub const FAILED_AT: &str = "__connect.errors.failed.at";
/// Peer address of the device connection (receiver only).
pub const PEER: &str = "__connect.errors.peer";
/// Connection id inside the receiver instance (receiver only).
pub const CONNECTION: &str = "__connect.errors.connection.id";
/// obu_id, where it could be read.
pub const OBU_ID: &str = "fleetstream.obu_id";
/// seq, where it could be read.
pub const SEQ: &str = "fleetstream.seq";

/// On the raw topic: a record the `dlq redrive` command wrote back, naming the dead letter it
/// came from as `<dlq topic>/<partition>/<offset>`; `redrive` reads it to never redrive one twice.
pub const REDRIVEN_FROM: &str = "fleetstream.redriven_from";

/// Where a rejected record was rejected.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// Refused by a receiver before it reached the raw topic.
    Receiver {
        /// The receiver instance.
        instance: &'a str,
        /// The device's address.
        peer: &'a str,
        /// The connection's id inside the instance.
        connection: u64,
    },
    /// Judged invalid by a processor: the raw record's coordinates.
    Processor {
        /// The consumer group.
        group: &'a str,
        partition: i32,
        offset: i64,
        /// The raw record's timestamp, Unix ms.
        timestamp: Option<i64>,
    },
}

/// A dead letter: the original bytes, where they were refused and why.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub origin: Origin<'a>,
    /// The raw topic the record was (or would have been) on.
    pub source_topic: &'a str,
    pub rejection: &'a Rejection,
    /// How many times the record was tried.
    pub attempts: u32,
    /// When it was rejected, Unix ms.
    pub failed_at: i64,
    /// The vehicle and seq, where they could be read.
    pub obu_id: Option<u64>,
    pub seq: Option<u64>,
}

impl DeadLetter<'_> {
    /// The record headers.
    pub fn headers(&self) -> OwnedHeaders {
        let (stage, group) = match self.origin {
            Origin::Receiver { instance, .. } => ("receiver", instance),
            Origin::Processor { group, .. } => ("processor", group),
        };
        let mut pairs: Vec<(&str, String)> = vec![
            (TOPIC, self.source_topic.to_string()),
            (STAGE, stage.to_string()),
            (GROUP, group.to_string()),
            (REASON, self.rejection.reason.as_str().to_string()),
            (MESSAGE, self.rejection.message.clone()),
            (ATTEMPTS, self.attempts.to_string()),
            (FAILED_AT, self.failed_at.to_string()),
        ];
        match self.origin {
            Origin::Receiver { peer, connection, .. } => {
                pairs.push((TIMESTAMP, self.failed_at.to_string()));
                pairs.push((PEER, peer.to_string()));
                pairs.push((CONNECTION, connection.to_string()));
            }
            Origin::Processor { partition, offset, timestamp, .. } => {
                pairs.push((PARTITION, partition.to_string()));
                pairs.push((OFFSET, offset.to_string()));
                if let Some(ts) = timestamp {
                    pairs.push((TIMESTAMP, ts.to_string()));
                }
            }
        }
        pairs.extend(self.obu_id.map(|v| (OBU_ID, v.to_string())));
        pairs.extend(self.seq.map(|v| (SEQ, v.to_string())));
        pairs.into_iter().fold(OwnedHeaders::new_with_capacity(14), |h, (key, value)| {
            h.insert(Header { key, value: Some(value.as_bytes()) })
        })
    }

    /// The record for the dead-letter topic `dlq_topic`: the original bytes, keyed as the
    /// original was (or by obu_id when the receiver could read one), with the headers above.
    pub fn record<'b>(&self, dlq_topic: &'b str, original_key: Option<&'b [u8]>, payload: &'b [u8]) -> Outgoing<'b> {
        let mut record = Outgoing::new(dlq_topic, payload).headers(self.headers()).timestamp(self.failed_at);
        match (original_key, self.obu_id) {
            (Some(key), _) => record = record.key(key),
            (None, Some(obu_id)) => record = record.key(vehicle_key(obu_id).into_bytes()),
            (None, None) => {}
        }
        record
    }
}

/// Where a dead letter written by a processor came from: (source topic, partition, offset).
pub fn processor_source<H: Headers>(headers: Option<&H>) -> Option<(&str, i64, i64)> {
    if text(headers, STAGE) != Some("processor") {
        return None;
    }
    Some((text(headers, TOPIC)?, int(headers, PARTITION)?, int(headers, OFFSET)?))
}
