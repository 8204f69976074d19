//! The positions the pipeline passes along: [`Position`] (raw, as on `gpscoords`),
//! [`ProcessedPosition`] (validated and enriched, as on `positions` and `vehicle-latest`).

use serde::{Deserialize, Serialize};

use crate::attributes::Attributes;

/// One GPS fix of one vehicle, structurally valid: the value of a `gpscoords` record.
///
/// Whether it is believable (coordinates in range, a sane timestamp, no teleport) is the
/// processor's judgement, not this type's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// On-board unit id: the vehicle. The Kafka key of every record about it.
    pub obu_id: u64,
    /// Rises by one per position of this OBU; `(obu_id, boot, seq)` identifies a position.
    pub seq: u64,
    /// Rises each time the device starts its `seq` again (a restart, a firmware update): every
    /// position of a later boot is newer than every position of an earlier one. 0 (absent on
    /// the wire) for devices that never restart their seq.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub boot: u64,
    /// Device time of the fix, Unix milliseconds.
    pub ts: i64,
    /// Latitude, degrees (WGS84).
    pub lat: f64,
    /// Longitude, degrees (WGS84).
    pub lon: f64,
    /// Ground speed reported by the device, km/h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Course over ground reported by the device, degrees clockwise from north.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// What the vehicle says besides where it is (ignition, alarm, odometer, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a position stands in its vehicle's sequence: by boot, then by seq. One number so
/// that the ranges of seqs a processor tracks span boots (a gap from the last seq heard of one
/// boot to the first of the next holds the late positions of both).
pub fn order_key(boot: u64, seq: u64) -> u128 {
    (u128::from(boot) << 64) | u128::from(seq)
}

/// An [`order_key`] in `vehicle-latest`: the seq as a plain number while the boot is 0 (what
/// records written before boots hold), `"BOOT:SEQ"` beyond. JSON numbers above 2^64 would not
/// survive readers that take every number for a double.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order(pub u128);

impl Serialize for Order {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match u64::try_from(self.0) {
            Ok(seq) => s.serialize_u64(seq),
            Err(_) => s.serialize_str(&format!("{}:{}", (self.0 >> 64) as u64, self.0 as u64)),
        }
    }
}

impl<'de> Deserialize<'de> for Order {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Seq(u64),
            BootSeq(String),
        }
        match Form::deserialize(d)? {
            Form::Seq(seq) => Ok(Order(u128::from(seq))),
            Form::BootSeq(text) => {
                let parsed = text.split_once(':').and_then(|(b, s)| Some(order_key(b.parse().ok()?, s.parse().ok()?)));
                parsed.map(Order).ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not BOOT:SEQ")))
            }
        }
    }
}

/// `seq 12` or `boot 3 seq 12`, for messages.
pub fn describe_order(key: u128) -> String {
    let (boot, seq) = ((key >> 64) as u64, key as u64);
    if boot == 0 {
        format!("seq {seq}")
    } else {
        format!("boot {boot} seq {seq}")
    }
}

impl Position {
    /// See [`order_key`].
    pub fn order(&self) -> u128 {
        order_key(self.boot, self.seq)
    }

    /// The Kafka record key: the decimal obu_id, so every record of a vehicle shares a partition.
    pub fn key(&self) -> String {
        crate::publish::vehicle_key(self.obu_id)
    }

    /// The canonical JSON encoding, as written to `gpscoords`.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of numbers cannot fail to serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A validated, enriched position: the value of a `positions` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessedPosition {
    pub obu_id: u64,
    pub seq: u64,
    /// The device's boot ([`Position::boot`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub boot: u64,
    /// Device time of the fix, Unix milliseconds.
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
    /// km/h: the device's, or computed from the previous fix when the device sent none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Degrees: the device's, or the bearing from the previous fix when the device sent none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// True when `speed` was computed by the processor.
    #[serde(default)]
    pub speed_computed: bool,
    /// True when `heading` was computed by the processor.
    #[serde(default)]
    pub heading_computed: bool,
    /// Metres from the previous valid fix of this vehicle (0 for its first).
    #[serde(default)]
    pub distance_m: f64,
    /// When the receiver got it, Unix milliseconds (absent if it came from elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<i64>,
    /// When the processor validated it, Unix milliseconds.
    pub processed_at: i64,
    /// True when a higher seq of this vehicle had already been processed: it belongs in the
    /// history, but it did not move the latest position.
    #[serde(default)]
    pub out_of_order: bool,
    /// The position's attributes, as the device sent them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
}

impl ProcessedPosition {
    /// See [`order_key`].
    pub fn order(&self) -> u128 {
        order_key(self.boot, self.seq)
    }
}

/// The value of a `vehicle-latest` record: the latest valid position of a vehicle, and the
/// duplicate window the processor rebuilds its state from after a restart or rebalance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleLatest {
    #[serde(flatten)]
    pub position: ProcessedPosition,
    /// Positions below the latest never processed, as inclusive `[from, to]` ranges of
    /// [`order_key`]s (the seq itself for devices without a boot) in ascending order: one in a
    /// range is a late position, any other one at or below the latest a duplicate. Lets a
    /// restarted processor tell late positions from resends.
    #[serde(default)]
    pub gaps: Vec<(Order, Order)>,
    /// Order keys below this are no longer tracked (too old to tell).
    #[serde(default)]
    pub horizon: Order,
    /// The earlier form of the window (bit i set: seq `position.seq - 1 - i` was processed),
    /// read from records written before `gaps`; never written.
    #[serde(default, skip_serializing)]
    pub seen_below: Option<u64>,
    /// What the event rules remember of the vehicle (absent in records written before them).
    #[serde(default)]
    pub fleet: crate::events::FleetState,
}

/// Great-circle distance in metres (haversine, mean Earth radius).
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const R: f64 = 6_371_008.8;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * a.sqrt().min(1.0).asin()
}

/// Initial bearing from the first point to the second, degrees in [0, 360).
pub fn bearing_deg(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dl = (lon2 - lon1).to_radians();
    let y = dl.sin() * p2.cos();
    let x = p1.cos() * p2.sin() - p1.sin() * p2.cos() * dl.cos();
    (y.atan2(x).to_degrees() + 360.0) % 360.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_and_bearing_are_sane() {
        // One degree of latitude is about 111.2 km; due north is bearing 0.
        let d = distance_m(52.0, 13.0, 53.0, 13.0);
        assert!((d - 111_195.0).abs() < 100.0, "{d}");
        assert!(bearing_deg(52.0, 13.0, 53.0, 13.0).abs() < 1e-9);
        let east = bearing_deg(0.0, 0.0, 0.0, 1.0);
        assert!((east - 90.0).abs() < 1e-9, "{east}");
        assert_eq!(distance_m(10.0, 10.0, 10.0, 10.0), 0.0);
    }

    #[test]
    fn order_keys_put_every_later_boot_after_every_earlier_seq_and_survive_json() {
        assert!(order_key(1, 0) > order_key(0, u64::MAX));
        assert!(order_key(2, 5) > order_key(2, 4));
        assert_eq!(order_key(0, 42), 42, "no boot: the key is the seq");
        for key in [Order(7), Order(order_key(3, 12)), Order(order_key(u64::MAX, u64::MAX))] {
            let json = serde_json::to_string(&key).unwrap_or_default();
            assert_eq!(serde_json::from_str::<Order>(&json).ok(), Some(key), "{json}");
        }
        assert_eq!(serde_json::to_string(&Order(order_key(3, 12))).unwrap_or_default(), r#""3:12""#);
        assert!(serde_json::from_str::<Order>(r#""3""#).is_err());
        assert_eq!(describe_order(order_key(3, 12)), "boot 3 seq 12");
        assert_eq!(describe_order(12), "seq 12");
    }

    #[test]
    fn optional_fields_are_omitted() {
        let p = Position { obu_id: 1, seq: 2, boot: 0, ts: 3, lat: 4.5, lon: 5.5, speed: None, heading: None, attributes: None };
        assert_eq!(
            String::from_utf8(p.to_json()).unwrap_or_default(),
            r#"{"obu_id":1,"seq":2,"ts":3,"lat":4.5,"lon":5.5}"#
        );
    }
}
