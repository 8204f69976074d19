//! What the API and the live feed show of a vehicle: its latest stored position, and in the API
//! also how old it is and whether the vehicle counts as online.
//!
//! A leaf: it imports no other module of the crate, so the API (`api.rs`) and the live feed
//! (`live.rs`, fed by `ingest.rs`) share these types without depending on each other.

use std::time::Duration;

use serde::Serialize;

use fleetstream_core::ProcessedPosition;

/// A vehicle's latest position as clients see it: the stored position, plus its age and online
/// status where the time of the answer is known (the API; not the live feed).
#[derive(Debug, Clone, Serialize)]
pub struct VehicleView<'a> {
    #[serde(flatten)]
    position: &'a ProcessedPosition,
    /// Milliseconds since the position's device time (never negative).
    #[serde(skip_serializing_if = "Option::is_none")]
    age_ms: Option<i64>,
    /// Heard from within the online timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<bool>,
}

impl<'a> VehicleView<'a> {
    /// As the API shows it at `now` (Unix ms): with its age, and online if that age is within
    /// `online_timeout`.
    pub fn at(position: &'a ProcessedPosition, now: i64, online_timeout: Duration) -> Self {
        let age_ms = (now - position.ts).max(0);
        VehicleView { position, age_ms: Some(age_ms), online: Some(age_ms <= millis(online_timeout)) }
    }

    /// As the live feed shows it: the position alone (a client knows when it received it).
    pub fn live(position: &'a ProcessedPosition) -> Self {
        VehicleView { position, age_ms: None, online: None }
    }

    /// Whether the vehicle counts as online; `None` in the live feed's form.
    pub fn online(&self) -> Option<bool> {
        self.online
    }
}

/// A duration in whole milliseconds, as the API reports them.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_800_000_000;

    #[test]
    fn views_carry_age_and_online_status() {
        let p = ProcessedPosition {
            obu_id: 1,
            seq: 2,
            boot: 0,
            ts: NOW - 5_000,
            lat: 52.5,
            lon: 13.4,
            speed: Some(30.0),
            heading: None,
            speed_computed: false,
            heading_computed: false,
            distance_m: 0.0,
            received_at: None,
            processed_at: NOW,
            out_of_order: false,
            attributes: None,
        };
        let json = |v: VehicleView<'_>| serde_json::to_value(v).expect("a view serializes");
        let v = json(VehicleView::at(&p, NOW, Duration::from_secs(60)));
        assert_eq!((v["age_ms"].as_i64(), v["online"].as_bool(), v["speed"].as_f64()), (Some(5_000), Some(true), Some(30.0)));
        assert!(v.get("heading").is_none());
        let v = json(VehicleView::at(&p, NOW, Duration::from_secs(1)));
        assert_eq!(v["online"].as_bool(), Some(false));
        let v = json(VehicleView::live(&p));
        assert!(v.get("age_ms").is_none() && v.get("online").is_none());
        assert_eq!((v["obu_id"].as_u64(), v["seq"].as_u64()), (Some(1), Some(2)));
    }
}
