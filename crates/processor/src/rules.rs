//! The validation rules, each configurable and each with its own reason code.
//!
//! Order matters and is documented (docs/processing.md): structure first (a record that is not
//! a position), then the position on its own (ranges, time), then the position against the
//! vehicle's history (duplicate, too old, teleport).

use std::time::Duration;

use fleetstream_core::position::{bearing_deg, describe_order, distance_m};
use fleetstream_core::reason::{Reason, Rejection};
use fleetstream_core::{Position, ProcessedPosition};

use crate::state::{SeqVerdict, VehicleState};

/// Rule settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Rules {
    /// Tolerance for device clocks ahead of ours: a `ts` further in the future is rejected
    /// (`future_timestamp`).
    #[arg(long, env = "PROCESSOR_MAX_FUTURE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_future: Duration,

    /// Oldest acceptable `ts`: older positions are rejected (`stale_timestamp`).
    #[arg(long, env = "PROCESSOR_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub max_age: Duration,

    /// Highest believable speed in km/h, reported (`speed_out_of_range`) or implied by two
    /// consecutive fixes of a vehicle (`teleport`).
    #[arg(long, env = "PROCESSOR_MAX_SPEED_KMH", default_value_t = 300.0)]
    pub max_speed_kmh: f64,

    /// Jumps shorter than this many metres never count as teleports (GPS noise between fixes
    /// taken in the same second).
    #[arg(long, env = "PROCESSOR_TELEPORT_MIN_DISTANCE_M", default_value_t = 100.0)]
    pub teleport_min_distance_m: f64,

    /// Reject the (0, 0) "null island" fix of a receiver without a GPS lock.
    #[arg(long, env = "PROCESSOR_REJECT_NULL_ISLAND", default_value_t = true, action = clap::ArgAction::Set)]
    pub reject_null_island: bool,
}

/// What the processor decides about one structurally valid position.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Valid(ProcessedPosition),
    Invalid(Rejection),
    /// Already processed: dropped and counted, not dead-lettered.
    Duplicate,
}

impl Rules {
    /// Judges a position on its own: ranges and time.
    pub fn check_alone(&self, p: &Position, now_ms: i64) -> Result<(), Rejection> {
        if !(-90.0..=90.0).contains(&p.lat) {
            return Err(Rejection::new(Reason::LatOutOfRange, format!("lat {} is outside [-90, 90]", p.lat)));
        }
        if !(-180.0..=180.0).contains(&p.lon) {
            return Err(Rejection::new(Reason::LonOutOfRange, format!("lon {} is outside [-180, 180]", p.lon)));
        }
        if let Some(speed) = p.speed {
            if !(0.0..=self.max_speed_kmh).contains(&speed) {
                return Err(Rejection::new(
                    Reason::SpeedOutOfRange,
                    format!("speed {speed} km/h is outside [0, {}]", self.max_speed_kmh),
                ));
            }
        }
        if let Some(heading) = p.heading {
            if !(0.0..360.0).contains(&heading) {
                return Err(Rejection::new(Reason::HeadingOutOfRange, format!("heading {heading} is outside [0, 360)")));
            }
        }
        if self.reject_null_island && p.lat == 0.0 && p.lon == 0.0 {
            return Err(Rejection::new(Reason::NullIsland, "the (0, 0) fix is what a device without a GPS lock reports"));
        }
        let ahead = p.ts.saturating_sub(now_ms);
        if ahead > self.max_future.as_millis() as i64 {
            return Err(Rejection::new(
                Reason::FutureTimestamp,
                format!("ts is {} ms in the future; the tolerance is {} ms", ahead, self.max_future.as_millis()),
            ));
        }
        let age = now_ms.saturating_sub(p.ts);
        if age > self.max_age.as_millis() as i64 {
            return Err(Rejection::new(
                Reason::StaleTimestamp,
                format!("ts is {} s old; the maximum age is {} s", age / 1000, self.max_age.as_secs()),
            ));
        }
        Ok(())
    }

    /// Judges a position against what is known of its vehicle and enriches a valid one.
    pub fn judge(&self, p: &Position, state: Option<&VehicleState>, received_at: Option<i64>, now_ms: i64) -> Verdict {
        if let Err(r) = self.check_alone(p, now_ms) {
            return Verdict::Invalid(r);
        }
        let previous = match state.map(|s| (s, s.verdict(p.boot, p.seq))) {
            None => None,
            Some((_, SeqVerdict::Duplicate)) => return Verdict::Duplicate,
            Some((s, SeqVerdict::TooOld)) => {
                return Verdict::Invalid(Rejection::new(
                    Reason::SeqTooOld,
                    format!(
                        "{} is below {}, the oldest still tracked for this vehicle (latest {}, more than {} gaps since); \
                         it cannot be told from a duplicate",
                        describe_order(p.order()),
                        describe_order(s.horizon()),
                        describe_order(s.latest.order()),
                        crate::state::MAX_GAPS
                    ),
                ))
            }
            // A late position goes into the history but does not move the latest one, and is
            // not compared with a fix taken after it.
            Some((_, SeqVerdict::Late)) => {
                return Verdict::Valid(self.enrich(p, None, received_at, now_ms, true));
            }
            Some((s, SeqVerdict::Next)) => Some(&s.latest),
        };
        if let Some(prev) = previous {
            let d = distance_m(prev.lat, prev.lon, p.lat, p.lon);
            let dt = (p.ts - prev.ts) as f64 / 1000.0;
            if d > self.teleport_min_distance_m {
                let implied = if dt > 0.0 { d / dt * 3.6 } else { f64::INFINITY };
                if implied > self.max_speed_kmh {
                    return Verdict::Invalid(Rejection::new(
                        Reason::Teleport,
                        format!(
                            "{:.0} m from the previous fix (seq {}) in {:.3} s implies {:.0} km/h; the maximum is {} km/h",
                            d, prev.seq, dt, implied, self.max_speed_kmh
                        ),
                    ));
                }
            }
        }
        Verdict::Valid(self.enrich(p, previous, received_at, now_ms, false))
    }

    fn enrich(&self, p: &Position, prev: Option<&ProcessedPosition>, received_at: Option<i64>, now_ms: i64, out_of_order: bool) -> ProcessedPosition {
        let (mut distance, mut speed, mut heading) = (0.0, p.speed, p.heading);
        let (mut speed_computed, mut heading_computed) = (false, false);
        if let Some(prev) = prev {
            distance = distance_m(prev.lat, prev.lon, p.lat, p.lon);
            let dt = (p.ts - prev.ts) as f64 / 1000.0;
            if speed.is_none() && dt > 0.0 {
                speed = Some(distance / dt * 3.6);
                speed_computed = true;
            }
            if heading.is_none() && distance > 0.0 {
                heading = Some(bearing_deg(prev.lat, prev.lon, p.lat, p.lon));
                heading_computed = true;
            }
        }
        ProcessedPosition {
            obu_id: p.obu_id,
            seq: p.seq,
            boot: p.boot,
            ts: p.ts,
            lat: p.lat,
            lon: p.lon,
            speed,
            heading,
            speed_computed,
            heading_computed,
            distance_m: distance,
            received_at,
            processed_at: now_ms,
            out_of_order,
            attributes: p.attributes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    /// The rules with their documented defaults (the flags' defaults: one home).
    fn defaults() -> Rules {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            rules: Rules,
        }
        <Cli as clap::Parser>::parse_from(["processor"]).rules
    }

    fn pos(seq: u64, ts: i64, lat: f64, lon: f64) -> Position {
        Position { obu_id: 1, seq, boot: 0, ts, lat, lon, speed: None, heading: None, attributes: None }
    }

    fn reason(v: Verdict) -> Option<Reason> {
        match v {
            Verdict::Invalid(r) => Some(r.reason),
            _ => None,
        }
    }

    #[test]
    fn each_rule_has_its_reason() {
        let rules = defaults();
        let judge = |p: Position| reason(rules.judge(&p, None, None, NOW));
        assert_eq!(judge(pos(1, NOW, 91.0, 0.5)), Some(Reason::LatOutOfRange));
        assert_eq!(judge(pos(1, NOW, -90.5, 0.5)), Some(Reason::LatOutOfRange));
        assert_eq!(judge(pos(1, NOW, 10.0, 180.01)), Some(Reason::LonOutOfRange));
        assert_eq!(judge(pos(1, NOW, 0.0, 0.0)), Some(Reason::NullIsland));
        assert_eq!(judge(pos(1, NOW + 31_000, 1.0, 1.0)), Some(Reason::FutureTimestamp));
        assert_eq!(judge(pos(1, NOW + 29_000, 1.0, 1.0)), None);
        assert_eq!(judge(pos(1, NOW - 8 * 86_400_000, 1.0, 1.0)), Some(Reason::StaleTimestamp));
        assert_eq!(judge(Position { speed: Some(-1.0), ..pos(1, NOW, 1.0, 1.0) }), Some(Reason::SpeedOutOfRange));
        assert_eq!(judge(Position { speed: Some(301.0), ..pos(1, NOW, 1.0, 1.0) }), Some(Reason::SpeedOutOfRange));
        assert_eq!(judge(Position { heading: Some(360.0), ..pos(1, NOW, 1.0, 1.0) }), Some(Reason::HeadingOutOfRange));
        let lenient = Rules { reject_null_island: false, ..defaults() };
        assert_eq!(reason(lenient.judge(&pos(1, NOW, 0.0, 0.0), None, None, NOW)), None);
    }

    #[test]
    fn history_rules_and_enrichment() {
        let rules = defaults();
        let first = match rules.judge(&pos(10, NOW - 10_000, 52.0, 13.0), None, Some(NOW - 9_990), NOW) {
            Verdict::Valid(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(first.distance_m, 0.0);
        assert_eq!(first.received_at, Some(NOW - 9_990));
        let state = VehicleState::new(first);
        // About 111 m north in 10 s: 40 km/h, heading north.
        let next = rules.judge(&pos(11, NOW, 52.001, 13.0), Some(&state), None, NOW);
        let Verdict::Valid(next) = next else { panic!("{next:?}") };
        assert!((next.distance_m - 111.2).abs() < 1.0, "{}", next.distance_m);
        assert!(next.speed_computed && (next.speed.unwrap_or(0.0) - 40.0).abs() < 0.5);
        assert!(next.heading_computed && next.heading.unwrap_or(1.0).abs() < 1e-6);
        // 11 km in 10 s is a teleport.
        assert_eq!(reason(rules.judge(&pos(11, NOW, 52.1, 13.0), Some(&state), None, NOW)), Some(Reason::Teleport));
        assert_eq!(rules.judge(&pos(10, NOW, 52.0, 13.0), Some(&state), None, NOW), Verdict::Duplicate);
        let late = rules.judge(&pos(9, NOW - 11_000, 52.0, 13.0), Some(&state), None, NOW);
        assert!(matches!(late, Verdict::Valid(p) if p.out_of_order));
        let mut gappy = state.clone();
        for seq in (12..=12 + 2 * crate::state::MAX_GAPS as u64 + 4).step_by(2) {
            gappy.apply(crate::state::tests::p(seq));
        }
        assert_eq!(reason(rules.judge(&pos(9, NOW, 52.0, 13.0), Some(&gappy), None, NOW)), Some(Reason::SeqTooOld));
    }
}
