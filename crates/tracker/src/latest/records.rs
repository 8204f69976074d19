//! What the records of `vehicle-latest` say, as the tracker reads them: a vehicle's state at an
//! order, or a tombstone (a decommission, with the order it came after). Pure: the seed and the
//! follower in `latest.rs` feed it records, in offset order.

use std::collections::HashMap;

use rdkafka::message::Message;
use rdkafka::Offset;
use serde::Deserialize;

use fleetstream_core::position::order_key;
use fleetstream_core::publish::headers;
use fleetstream_core::{ProcessedPosition, VehicleLatest};

use crate::store::storable;

/// Where to read each partition from.
pub(crate) type Resume = Vec<(i32, Offset)>;

/// What `vehicle-latest` says of one vehicle, from its records read in offset order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Known {
    /// The partition its records are in: the last one read from (a vehicle moves only when the
    /// pipeline's topics get more partitions).
    pub partition: i32,
    /// Its latest order read ([`ProcessedPosition::order`]), from a record or a tombstone's
    /// header; `None` if only a tombstone without one was read.
    pub order: Option<u128>,
    /// A tombstone was read and no later position since.
    pub decommissioned: bool,
}

/// Every vehicle `vehicle-latest` has a record of.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    vehicles: HashMap<u64, Known>,
}

impl Directory {
    /// A record of the vehicle's state at `order`, read from `partition`. Whether it is the
    /// vehicle's latest now: after everything read of it before (a decommission included).
    pub(crate) fn position(&mut self, obu_id: u64, partition: i32, order: u128) -> bool {
        let known = self.vehicles.entry(obu_id).or_insert(Known { partition, order: None, decommissioned: false });
        known.partition = partition;
        // A processor restarted after a decommission has no state of the vehicle and takes an
        // old resend as new: that record is not after the decommission, and changes nothing.
        if known.order.is_some_and(|o| order <= o) {
            return false;
        }
        known.order = Some(order);
        known.decommissioned = false;
        true
    }

    /// A tombstone read from `partition`, saying (if it has the header) the vehicle was
    /// decommissioned after `after`. Returns the order it was decommissioned after: the later of
    /// that and the latest read before (`None`: nothing known).
    pub(crate) fn tombstone(&mut self, obu_id: u64, partition: i32, after: Option<u128>) -> Option<u128> {
        let known = self.vehicles.entry(obu_id).or_insert(Known { partition, order: None, decommissioned: true });
        known.partition = partition;
        known.order = known.order.max(after);
        known.decommissioned = true;
        known.order
    }

    pub(crate) fn get(&self, obu_id: u64) -> Option<Known> {
        self.vehicles.get(&obu_id).copied()
    }
}

/// A record of `vehicle-latest` as the tracker reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    /// A vehicle's latest state, at this order.
    Latest { obu_id: u64, order: u128 },
    /// A tombstone, and the order of its header if it has one.
    Tombstone { obu_id: u64, after: Option<u128> },
}

/// The part of a value that orders it (serde skips the rest without building it).
#[derive(Deserialize)]
struct Head {
    seq: u64,
    #[serde(default)]
    boot: u64,
}

/// The record, or `None` if it is not one of the topic's (a key that is no obu_id, a value that
/// is no vehicle state): such records are skipped, as the seed always did.
pub(crate) fn decode(m: &impl Message) -> Option<Record> {
    let obu_id: u64 = std::str::from_utf8(m.key()?).ok()?.parse().ok()?;
    match m.payload() {
        None => {
            let after = headers::text(m.headers(), headers::DECOMMISSIONED_AFTER).and_then(parse_order);
            Some(Record::Tombstone { obu_id, after })
        }
        Some(payload) => {
            let head: Head = serde_json::from_slice(payload).ok()?;
            Some(Record::Latest { obu_id, order: order_key(head.boot, head.seq) })
        }
    }
}

/// An order as `vehicle-latest` writes its bounds: the seq alone for boot 0, else `BOOT:SEQ`.
pub(crate) fn order_text(order: u128) -> String {
    let (boot, seq) = ((order >> 64) as u64, order as u64);
    if boot == 0 {
        seq.to_string()
    } else {
        format!("{boot}:{seq}")
    }
}

fn parse_order(text: &str) -> Option<u128> {
    match text.split_once(':') {
        Some((boot, seq)) => Some(order_key(boot.parse().ok()?, seq.parse().ok()?)),
        None => Some(u128::from(text.parse::<u64>().ok()?)),
    }
}

/// What the start-up read of the whole topic found.
#[derive(Debug, Default)]
pub(crate) struct Seed {
    /// Records read.
    pub records: u64,
    directory: Directory,
    /// Each vehicle's latest position, unless it is decommissioned.
    newest: HashMap<u64, ProcessedPosition>,
    /// Where to follow each partition from.
    pub resume: Resume,
}

impl Seed {
    /// One record, in offset order (of its partition: a vehicle's records share one).
    pub(crate) fn take(&mut self, m: &impl Message) {
        self.records += 1;
        match decode(m) {
            Some(Record::Latest { obu_id, order }) => {
                if !self.directory.position(obu_id, m.partition(), order) {
                    return;
                }
                match m.payload().map(serde_json::from_slice::<VehicleLatest>) {
                    Some(Ok(latest)) if latest.position.obu_id == obu_id && storable(&latest.position) => {
                        self.newest.insert(obu_id, latest.position);
                    }
                    // Not a position the database can hold: the previous one is not the latest.
                    _ => {
                        self.newest.remove(&obu_id);
                    }
                }
            }
            Some(Record::Tombstone { obu_id, after }) => {
                self.directory.tombstone(obu_id, m.partition(), after);
                self.newest.remove(&obu_id);
            }
            None => {}
        }
    }

    /// The latest position of every vehicle on the map.
    pub(crate) fn positions(&self) -> Vec<ProcessedPosition> {
        self.newest.values().cloned().collect()
    }

    /// What the follower goes on with: the directory, and where to read each partition from.
    pub(crate) fn into_parts(self) -> (Directory, Resume) {
        (self.directory, self.resume)
    }

    /// The decommissioned vehicles, each with the order it was decommissioned after.
    pub(crate) fn decommissioned(&self) -> Vec<(u64, Option<u128>)> {
        self.directory.vehicles.iter().filter(|(_, k)| k.decommissioned).map(|(id, k)| (*id, k.order)).collect()
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    use super::*;

    const P: i32 = 3;

    fn state(obu_id: u64, boot: u64, seq: u64) -> Option<Vec<u8>> {
        let position = ProcessedPosition {
            obu_id,
            seq,
            boot,
            ts: 1_763_800_000_000 + seq as i64,
            lat: 52.5,
            lon: 13.4,
            speed: None,
            heading: None,
            speed_computed: false,
            heading_computed: false,
            distance_m: 0.0,
            received_at: None,
            processed_at: 1_763_800_000_000,
            out_of_order: false,
            attributes: None,
        };
        let latest = VehicleLatest { position, gaps: Vec::new(), horizon: Default::default(), seen_below: None, fleet: Default::default() };
        serde_json::to_vec(&latest).ok()
    }

    fn record(key: &str, offset: i64, payload: Option<Vec<u8>>, after: Option<&str>) -> OwnedMessage {
        let headers = after.map(|a| OwnedHeaders::new().insert(Header { key: headers::DECOMMISSIONED_AFTER, value: Some(a) }));
        OwnedMessage::new(payload, Some(key.as_bytes().to_vec()), "vehicle-latest".into(), Timestamp::NotAvailable, P, offset, headers)
    }

    #[test]
    fn the_seed_leaves_decommissioned_vehicles_off_the_map() {
        let mut seed = Seed::default();
        let records = [
            record("1", 0, state(1, 0, 4), None),
            record("2", 1, state(2, 0, 7), None),
            record("1", 2, state(1, 0, 5), None),
            record("1", 3, None, Some("5")),
            // A processor restarted after the decommission took a resend of seq 3 as new.
            record("1", 4, state(1, 0, 3), None),
            // Vehicle 3: a tombstone without the header, then its device restarted (boot 1).
            record("3", 5, state(3, 0, 9), None),
            record("3", 6, None, None),
            record("3", 7, state(3, 1, 1), None),
            record("not-a-vehicle", 8, state(4, 0, 1), None),
            record("5", 9, Some(b"garbage".to_vec()), None),
        ];
        for r in &records {
            seed.take(r);
        }
        assert_eq!(seed.records, 10);
        let mut on_map: Vec<(u64, u64, u64)> = seed.positions().iter().map(|p| (p.obu_id, p.boot, p.seq)).collect();
        on_map.sort_unstable();
        assert_eq!(on_map, vec![(2, 0, 7), (3, 1, 1)]);
        assert_eq!(seed.decommissioned(), vec![(1, Some(order(0, 5)))]);
        assert_eq!(seed.directory.get(3).map(|k| k.partition), Some(P));
        assert_eq!(decode(&records[8]), None, "a key that is no obu_id");
        assert_eq!(decode(&records[3]), Some(Record::Tombstone { obu_id: 1, after: Some(order(0, 5)) }));
    }

    fn order(boot: u64, seq: u64) -> u128 {
        order_key(boot, seq)
    }

    #[test]
    fn a_tombstone_holds_back_positions_up_to_it_and_a_later_one_recommissions() {
        let mut d = Directory::default();
        assert!(d.position(1, P, order(0, 5)));
        assert!(!d.position(1, P, order(0, 4)), "an older record is not the latest");
        assert_eq!(d.tombstone(1, P, Some(order(0, 3))), Some(order(0, 5)), "decommissioned after the latest read");
        assert!(!d.position(1, P, order(0, 5)), "a resend taken again by a restarted processor");
        assert!(d.get(1).is_some_and(|k| k.decommissioned));
        assert!(d.position(1, P, order(1, 1)), "the next position after the decommission");
        assert_eq!(d.get(1), Some(Known { partition: P, order: Some(order(1, 1)), decommissioned: false }));
        // A tombstone without the header, and nothing read before it: nothing held back.
        assert_eq!(d.tombstone(2, P, None), None);
        assert!(d.position(2, P, order(0, 1)));
    }

    #[test]
    fn orders_are_written_as_vehicle_latest_writes_them() {
        for (o, text) in [(order(0, 17), "17"), (order(1_763_900_000_000, 3), "1763900000000:3")] {
            assert_eq!(order_text(o), text);
            assert_eq!(parse_order(text), Some(o));
        }
        for bad in ["", "x", "1:", ":2", "1:2:3", "-1"] {
            assert_eq!(parse_order(bad), None, "{bad:?}");
        }
    }
}
