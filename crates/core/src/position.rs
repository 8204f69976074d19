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
    /// Rises by one per position of this OBU; `(obu_id, seq)` identifies a position.
    pub seq: u64,
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

impl Position {
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

/// The value of a `vehicle-latest` record: the latest valid position of a vehicle, and the
/// duplicate window the processor rebuilds its state from after a restart or rebalance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleLatest {
    #[serde(flatten)]
    pub position: ProcessedPosition,
    /// Seqs below `position.seq` never processed, as inclusive `[from, to]` ranges in
    /// ascending order: a seq in one is a late position, any other one at or below the latest
    /// a duplicate. Lets a restarted processor tell late positions from resends.
    #[serde(default)]
    pub gaps: Vec<(u64, u64)>,
    /// Seqs below this are no longer tracked (too old to tell).
    #[serde(default)]
    pub horizon: u64,
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
    fn optional_fields_are_omitted() {
        let p = Position { obu_id: 1, seq: 2, ts: 3, lat: 4.5, lon: 5.5, speed: None, heading: None, attributes: None };
        assert_eq!(
            String::from_utf8(p.to_json()).unwrap_or_default(),
            r#"{"obu_id":1,"seq":2,"ts":3,"lat":4.5,"lon":5.5}"#
        );
    }
}
