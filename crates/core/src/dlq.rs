//! Dead-letter records: the original bytes plus headers in the Kafka Connect convention
//! (`__connect.errors.*`), extended with the fields Connect lacks. Every value is UTF-8 text.
//! The list is documented in docs/wire-format.md.

use rdkafka::message::{Header, OwnedHeaders};

use crate::reason::Reason;

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

/// Where a rejected record came from and why it was rejected.
#[derive(Debug, Clone)]
pub struct DlqContext<'a> {
    pub stage: &'static str,
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub timestamp: Option<i64>,
    pub group: &'a str,
    pub reason: Reason,
    pub message: &'a str,
    pub attempts: u32,
    pub failed_at: i64,
    pub peer: Option<&'a str>,
    pub connection: Option<u64>,
    pub obu_id: Option<u64>,
    pub seq: Option<u64>,
}

impl DlqContext<'_> {
    /// The record headers.
    pub fn headers(&self) -> OwnedHeaders {
        let mut pairs: Vec<(&str, String)> = vec![
            (TOPIC, self.topic.to_string()),
            (STAGE, self.stage.to_string()),
            (GROUP, self.group.to_string()),
            (REASON, self.reason.as_str().to_string()),
            (MESSAGE, self.message.to_string()),
            (ATTEMPTS, self.attempts.to_string()),
            (FAILED_AT, self.failed_at.to_string()),
        ];
        let optional = [
            (PARTITION, self.partition.map(|v| v.to_string())),
            (OFFSET, self.offset.map(|v| v.to_string())),
            (TIMESTAMP, self.timestamp.map(|v| v.to_string())),
            (PEER, self.peer.map(str::to_string)),
            (CONNECTION, self.connection.map(|v| v.to_string())),
            (OBU_ID, self.obu_id.map(|v| v.to_string())),
            (SEQ, self.seq.map(|v| v.to_string())),
        ];
        pairs.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        pairs.into_iter().fold(OwnedHeaders::new_with_capacity(14), |h, (key, value)| {
            h.insert(Header { key, value: Some(value.as_bytes()) })
        })
    }
}
