//! The processor's output layout: what it writes where, and how the state restore reads it
//! back. Both directions live here so they cannot drift apart.
//!
//! Input partition p is written to partition p of every output topic: that is what lets a new
//! owner of p find what was already written for it.
//! - `positions`: the enriched position, key = obu_id, timestamp = device time, headers
//!   `fleetstream.src.partition` / `fleetstream.src.offset` = the raw record it came from;
//! - `vehicle-latest` (compacted): the vehicle's latest position, duplicate window and event
//!   state;
//! - `events`: the fleet events, key = obu_id, timestamp = event time, header
//!   `fleetstream.event.type`;
//! - the DLQ: the raw bytes and key, with the dead-letter headers of [`fleetstream_core::dlq`]
//!   naming the raw record's topic, partition and offset.

use rdkafka::message::Message;

use fleetstream_core::dlq::{self, DeadLetter, Origin};
use fleetstream_core::publish::{headers, Outgoing};
use fleetstream_core::events::Event;
use fleetstream_core::reason::Rejection;
use fleetstream_core::{ProcessedPosition, VehicleLatest};

use crate::config::Config;

/// The topics of one processor and where each kind of output goes.
#[derive(Debug, Clone)]
pub struct Layout {
    input: String,
    positions: String,
    latest: String,
    dlq: String,
    events: String,
    group: String,
}

impl Layout {
    pub fn new(config: &Config) -> Layout {
        Layout {
            input: config.input_topic.clone(),
            positions: config.positions_topic.clone(),
            latest: config.latest_topic.clone(),
            dlq: config.dlq_topic.clone(),
            events: config.events_topic.clone(),
            group: config.group_id.clone(),
        }
    }

    pub fn input(&self) -> &str {
        &self.input
    }

    pub fn positions(&self) -> &str {
        &self.positions
    }

    pub fn latest(&self) -> &str {
        &self.latest
    }

    pub fn dlq(&self) -> &str {
        &self.dlq
    }



    // --- writing -------------------------------------------------------------------------

    /// A valid position, from input `partition` at `offset`.
    pub fn position<'a>(&'a self, partition: i32, offset: i64, position: &ProcessedPosition, payload: Vec<u8>) -> Outgoing<'a> {
        Outgoing::for_vehicle(&self.positions, position.obu_id, payload)
            .partition(partition)
            .timestamp(position.ts)
            .header(headers::SRC_PARTITION, &partition.to_string())
            .header(headers::SRC_OFFSET, &offset.to_string())
    }

    /// A vehicle's latest state, for input `partition`.
    pub fn latest_state<'a>(&'a self, partition: i32, latest: &VehicleLatest, payload: Vec<u8>) -> Outgoing<'a> {
        Outgoing::for_vehicle(&self.latest, latest.position.obu_id, payload)
            .partition(partition)
            .timestamp(latest.position.ts)
    }

    /// A fleet event of a vehicle of input `partition`.
    pub fn event<'a>(&'a self, partition: i32, event: &Event) -> Outgoing<'a> {
        Outgoing::for_vehicle(&self.events, event.obu_id, event.to_json())
            .partition(partition)
            .timestamp(event.ts)
            .header(headers::EVENT_TYPE, event.type_name())
    }

    /// An invalid raw record, dead-lettered with why.
    pub fn dead_letter<'a, M: Message>(&'a self, raw: &'a M, rejection: &Rejection, attempts: u32, now: i64) -> Outgoing<'a> {
        let letter = DeadLetter {
            origin: Origin::Processor {
                group: &self.group,
                partition: raw.partition(),
                offset: raw.offset(),
                timestamp: raw.timestamp().to_millis(),
            },
            source_topic: &self.input,
            rejection,
            attempts,
            failed_at: now,
            obu_id: None,
            seq: None,
        };
        letter.record(&self.dlq, raw.key(), raw.payload().unwrap_or_default()).partition(raw.partition())
    }

    // --- reading back --------------------------------------------------------------------

    /// The input offset a `positions` record was written for.
    pub fn written_offset<M: Message>(record: &M) -> Option<i64> {
        headers::int(record.headers(), headers::SRC_OFFSET)
    }

    /// The input offset a DLQ record was written for, if this processor's layout wrote it for
    /// input `partition` (the receiver's dead letters and other inputs' share the topic).
    pub fn dead_lettered_offset<M: Message>(&self, record: &M, partition: i32) -> Option<i64> {
        match dlq::processor_source(record.headers()) {
            Some((topic, p, offset)) if topic == self.input && p == i64::from(partition) => Some(offset),
            _ => None,
        }
    }

    /// A `vehicle-latest` record's state.
    pub fn latest_of<M: Message>(record: &M) -> Option<VehicleLatest> {
        record.payload().and_then(|b| serde_json::from_slice(b).ok())
    }

    /// A `positions` record's position.
    pub fn position_of<M: Message>(record: &M) -> Option<ProcessedPosition> {
        record.payload().and_then(|b| serde_json::from_slice(b).ok())
    }
}
