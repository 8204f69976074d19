//! Fleet events: the value of an `events` record (key = obu_id), as the processor computes
//! them and the tracker stores them. docs/wire-format.md documents each type with an example.
//!
//! An event is identified by what triggered it, so the same event computed again (after a
//! crash, from the same positions) has the same [`Event::event_id`]: `<obu_id>-<seq>-<type>`,
//! with `-<fence id>` for geofence events and overspeed inside a fence; a device that sends a
//! boot ([`crate::Position::boot`]) has `<obu_id>-<boot>:<seq>-<type>...`, since its seqs repeat.

use serde::{Deserialize, Serialize};

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One fleet event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Deterministic id: see the module documentation.
    pub event_id: String,
    pub obu_id: u64,
    /// Event time: the device time of the triggering position (for `offline`, of the last
    /// position heard), Unix milliseconds.
    pub ts: i64,
    /// Seq of the triggering position (for `offline`, of the last position heard).
    pub seq: u64,
    /// Boot of the triggering position (0, and absent, for devices without one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub boot: u64,
    pub lat: f64,
    pub lon: f64,
    /// When the processor computed it, Unix milliseconds (processor clock).
    pub detected_at: i64,
    /// The type and its fields.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The event types and their type-specific fields. Serialised as `"type": "<snake_case>"`
/// beside the fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The vehicle has been inside the fence for the minimum dwell.
    GeofenceEnter {
        fence_id: String,
        fence_name: String,
        /// Device time of the first position inside (the crossing).
        since: i64,
    },
    /// The vehicle has been outside the fence for the minimum dwell.
    GeofenceExit {
        fence_id: String,
        fence_name: String,
        /// Device time of the first position outside (the crossing).
        since: i64,
    },
    /// Speed has stayed above the limit for the minimum duration.
    Overspeed {
        limit_kmh: f64,
        /// Highest speed of the episode so far.
        peak_kmh: f64,
        /// The fence whose limit applies, if any (else the global limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence_id: Option<String>,
        /// Device time the speed first went above the limit.
        since: i64,
    },
    /// The end of an overspeed episode: the first position at or below the limit.
    OverspeedEnd {
        limit_kmh: f64,
        peak_kmh: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence_id: Option<String>,
        since: i64,
        duration_s: f64,
    },
    /// Speed has stayed at or above the motion threshold for the minimum duration.
    Moving { speed_kmh: f64, since: i64 },
    /// Speed has stayed below the motion threshold for the minimum duration.
    Stopped { since: i64 },
    /// The first position after `offline` (or the first ever of the vehicle).
    Online {
        /// Device time of the last position heard before, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_ts: Option<i64>,
    },
    /// Nothing heard for the offline timeout, by the processor's clock.
    Offline {
        /// Processor time the last position was processed.
        last_heard_at: i64,
        timeout_s: f64,
    },
    IgnitionOn {},
    IgnitionOff {},
    /// The position carried an alarm (a new one, or the same again after it was cleared).
    Alarm { alarm: String },
    /// A trip ended: the vehicle has stopped for longer than the minimum stop.
    Trip(Trip),
}

/// A finished trip: from the first moving position to where the vehicle stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    pub start_ts: i64,
    pub start_seq: u64,
    pub start_lat: f64,
    pub start_lon: f64,
    pub end_ts: i64,
    pub end_seq: u64,
    pub end_lat: f64,
    pub end_lon: f64,
    pub distance_m: f64,
    pub duration_s: f64,
    pub max_speed_kmh: f64,
    /// Distance over duration.
    pub avg_speed_kmh: f64,
}

impl EventKind {
    /// The stable type name, as in `"type"`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::GeofenceEnter { .. } => "geofence_enter",
            EventKind::GeofenceExit { .. } => "geofence_exit",
            EventKind::Overspeed { .. } => "overspeed",
            EventKind::OverspeedEnd { .. } => "overspeed_end",
            EventKind::Moving { .. } => "moving",
            EventKind::Stopped { .. } => "stopped",
            EventKind::Online { .. } => "online",
            EventKind::Offline { .. } => "offline",
            EventKind::IgnitionOn {} => "ignition_on",
            EventKind::IgnitionOff {} => "ignition_off",
            EventKind::Alarm { .. } => "alarm",
            EventKind::Trip(_) => "trip",
        }
    }

    /// The fence it is about, for the id.
    fn fence(&self) -> Option<&str> {
        match self {
            EventKind::GeofenceEnter { fence_id, .. } | EventKind::GeofenceExit { fence_id, .. } => Some(fence_id),
            EventKind::Overspeed { fence_id, .. } | EventKind::OverspeedEnd { fence_id, .. } => fence_id.as_deref(),
            _ => None,
        }
    }
}

/// Every type name, for documentation, metrics and API validation.
pub const TYPES: [&str; 12] = [
    "geofence_enter",
    "geofence_exit",
    "overspeed",
    "overspeed_end",
    "moving",
    "stopped",
    "online",
    "offline",
    "ignition_on",
    "ignition_off",
    "alarm",
    "trip",
];

impl Event {
    /// An event of `kind` triggered by the position `(obu_id, seq)` at `ts`, `lat`, `lon`.
    pub fn new(obu_id: u64, seq: u64, ts: i64, lat: f64, lon: f64, detected_at: i64, kind: EventKind) -> Event {
        let mut event = Event { event_id: String::new(), obu_id, ts, seq, boot: 0, lat, lon, detected_at, kind };
        event.event_id = event.id();
        event
    }

    /// The same event, triggered by a position of `boot`.
    pub fn in_boot(mut self, boot: u64) -> Event {
        self.boot = boot;
        self.event_id = self.id();
        self
    }

    fn id(&self) -> String {
        let (obu_id, name) = (self.obu_id, self.kind.name());
        let position = if self.boot == 0 { self.seq.to_string() } else { format!("{}:{}", self.boot, self.seq) };
        match self.kind.fence() {
            Some(fence) => format!("{obu_id}-{position}-{name}-{fence}"),
            None => format!("{obu_id}-{position}-{name}"),
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.kind.name()
    }

    /// The JSON value of its `events` record.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings and numbers only: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Where and when a position was: the start or end of something.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub ts: i64,
    pub seq: u64,
    pub lat: f64,
    pub lon: f64,
}

/// What the processor remembers of a vehicle to compute its events: kept in its
/// `vehicle-latest` record (field `fleet`) with the rest of its state, so it is recovered
/// exactly as of the last committed batch. The rules that move it are the processor's
/// (`fleet` module); this is only its shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetState {
    /// Online: heard from since the last `offline` (false before its first position).
    #[serde(default)]
    pub online: bool,
    /// Processor time its latest in-order position was processed.
    #[serde(default)]
    pub heard_at: i64,
    /// Confirmed motion: true moving, false stopped, absent not yet known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<bool>,
    /// Where the speed first crossed the motion threshold the other way, not yet confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub motion_change: Option<Mark>,
    /// Distance and top speed since `motion_change`: a trip confirmed later starts there.
    #[serde(default)]
    pub change_distance_m: f64,
    #[serde(default)]
    pub change_max_kmh: f64,
    /// Fences the vehicle is confirmed inside: id -> (name, device time of the crossing).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fences: std::collections::BTreeMap<String, (String, i64)>,
    /// Fences whose side the vehicle changed, not yet for the minimum dwell: id -> (name,
    /// entering, device time of the crossing).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fence_changes: std::collections::BTreeMap<String, (String, bool, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overspeed: Option<OverspeedEpisode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignition: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trip: Option<TripInProgress>,
}

/// Speed above a limit since `since`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverspeedEpisode {
    pub limit_kmh: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_id: Option<String>,
    pub since: i64,
    pub peak_kmh: f64,
    /// `overspeed` was emitted (the minimum duration passed).
    pub reported: bool,
}

/// A trip since its first moving position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripInProgress {
    pub start: Mark,
    pub distance_m: f64,
    pub max_speed_kmh: f64,
    /// Where a stop began, and the trip's distance there; cleared when it moves again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<(Mark, f64)>,
    /// The trip's distance at the pending motion change (the first slow position), so a stop
    /// confirmed later starts where the vehicle really stopped.
    #[serde(default)]
    pub distance_at_change: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_the_type_is_a_field() {
        let kind = EventKind::GeofenceEnter { fence_id: "depot".into(), fence_name: "Depot".into(), since: 5 };
        let e = Event::new(7, 42, 1_000, 52.5, 13.4, 2_000, kind.clone());
        assert_eq!(e.event_id, "7-42-geofence_enter-depot");
        assert_eq!(Event::new(7, 42, 1_000, 52.5, 13.4, 9_999, kind).event_id, e.event_id, "detection time is not part of the id");
        let json: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap_or_default();
        assert_eq!(json["type"], "geofence_enter");
        assert_eq!(json["fence_name"], "Depot");
        assert_eq!(serde_json::from_value::<Event>(json).ok(), Some(e));
        let off = Event::new(7, 43, 1, 0.0, 0.0, 2, EventKind::IgnitionOff {});
        assert_eq!(off.clone().in_boot(3).event_id, "7-3:43-ignition_off", "seqs repeat across boots: the boot is in the id");
        assert_eq!(off.event_id, "7-43-ignition_off");
        let text = String::from_utf8(off.to_json()).unwrap_or_default();
        assert!(text.contains(r#""type":"ignition_off""#), "{text}");
        assert!(TYPES.contains(&off.type_name()));
    }

    #[test]
    fn the_documented_examples_are_what_the_code_writes() {
        let doc = include_str!("../../../docs/wire-format.md");
        let block = doc.split("One example of each type").nth(1).and_then(|rest| rest.split("```json\n").nth(1)).and_then(|b| b.split("```").next());
        let lines: Vec<&str> = block.unwrap_or_default().lines().filter(|l| !l.trim().is_empty()).collect();
        let mut types: Vec<&str> = Vec::new();
        for line in &lines {
            let e: Event = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
            assert_eq!(String::from_utf8(e.to_json()).unwrap_or_default(), *line, "written exactly so");
            let again = Event::new(e.obu_id, e.seq, e.ts, e.lat, e.lon, e.detected_at, e.kind.clone());
            assert_eq!(again.event_id, e.event_id, "the documented id is the computed one");
            types.push(e.type_name());
        }
        types.sort_unstable();
        let mut all = TYPES.to_vec();
        all.sort_unstable();
        assert_eq!(types, all, "one example of every type");
    }

    #[test]
    fn a_trip_flattens_its_fields() {
        let trip = Trip {
            start_ts: 1,
            start_seq: 1,
            start_lat: 1.0,
            start_lon: 1.0,
            end_ts: 2,
            end_seq: 9,
            end_lat: 2.0,
            end_lon: 2.0,
            distance_m: 1_000.0,
            duration_s: 60.0,
            max_speed_kmh: 80.0,
            avg_speed_kmh: 60.0,
        };
        let e = Event::new(1, 20, 3, 2.0, 2.0, 4, EventKind::Trip(trip));
        let json: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap_or_default();
        assert_eq!((json["type"].as_str(), json["distance_m"].as_f64()), (Some("trip"), Some(1_000.0)));
        assert_eq!(serde_json::from_value::<Event>(json).ok(), Some(e));
    }
}
