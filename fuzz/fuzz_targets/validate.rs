//! Position validation as the processor runs it (`judge.rs`): each `gpscoords` value parsed
//! (`wire::parse_element`), judged by the default rules against its vehicle's state
//! (`Rules::judge`), a valid one applied to the state with its fleet events computed
//! (`EventRules::on_position`, inside the example fences), then the timer's `offline`.
//!
//! The input is a batch: a JSON array of records of one partition (or one record). Checks,
//! besides "never panics" (overflow checks are on):
//! - every rejection has one of the processor's reason codes and a message, and a position
//!   that fails the rules on its own fails the whole judgement with the same reason;
//! - what is valid is within the rules: coordinates, time, speed, heading in range, a finite
//!   distance; it serialises to a `positions` record that reads back equal;
//! - exactly once: a position just applied is a duplicate when it comes again;
//! - events are about the position that made them and read back from their record;
//! - a vehicle's state written to `vehicle-latest` restores to the same state.
#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use clap::Parser;
use fleetstream_core::events::Event;
use fleetstream_core::geofence::{parse_collection, FenceIndex};
use fleetstream_core::position::VehicleLatest;
use fleetstream_core::reason::Reason;
use fleetstream_core::wire::parse_frame;
use fleetstream_core::{Position, ProcessedPosition};
use fleetstream_processor::fleet::EventRules;
use fleetstream_processor::rules::{Rules, Verdict};
use fleetstream_processor::state::VehicleState;
use libfuzzer_sys::fuzz_target;

/// The processor's clock: fixed, so a crash replays; 10 s after the examples of
/// docs/wire-format.md, which the seed corpus uses.
const NOW: i64 = 1_763_800_010_000;
/// Most records judged per input: enough for histories with gaps, small enough to stay fast.
const MAX_RECORDS: usize = 64;

/// The processor's flags at their defaults: the rules are the ones that run.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    rules: Rules,
    #[command(flatten)]
    events: EventRules,
}

static FLAGS: LazyLock<Flags> = LazyLock::new(|| Flags::parse_from(["processor"]));
/// The demo's fences: a polygon with a hole, a multipolygon, a circle, some with speed limits.
static FENCES: LazyLock<FenceIndex> = LazyLock::new(|| {
    let text = include_str!("../../examples/geofences.geojson");
    let value = serde_json::from_str(text).expect("examples/geofences.geojson is JSON");
    FenceIndex::new(parse_collection(&value).expect("the example fences are valid"))
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(elements) = parse_frame(text, MAX_RECORDS) else { return };
    let (rules, event_rules, fences) = (&FLAGS.rules, &FLAGS.events, &*FENCES);
    let mut vehicles: HashMap<u64, VehicleState> = HashMap::new();
    for (i, element) in elements.into_iter().enumerate() {
        // As `judge::parse_record`: the processor fills in nothing.
        let Ok(wire) = element.parsed else { continue };
        let (Some(seq), Some(ts)) = (wire.seq, wire.ts) else { continue };
        let p = wire.into_position(|| seq, || ts);
        let received_at = Some(NOW - 5);
        let verdict = rules.judge(&p, vehicles.get(&p.obu_id), received_at, NOW);
        match (&verdict, rules.check_alone(&p, NOW)) {
            (Verdict::Invalid(r), Err(alone)) => assert_eq!(r, &alone, "{p:?}"),
            (_, Err(alone)) => panic!("{p:?} fails on its own ({alone:?}) but was judged {verdict:?}"),
            (_, Ok(())) => {}
        }
        match verdict {
            Verdict::Invalid(r) => {
                assert!(
                    matches!(
                        r.reason,
                        Reason::LatOutOfRange
                            | Reason::LonOutOfRange
                            | Reason::SpeedOutOfRange
                            | Reason::HeadingOutOfRange
                            | Reason::FutureTimestamp
                            | Reason::StaleTimestamp
                            | Reason::NullIsland
                            | Reason::Teleport
                            | Reason::SeqTooOld
                    ),
                    "{p:?} rejected with {r:?}"
                );
                assert!(!r.message.is_empty() && !r.reason.retryable(), "{r:?}");
            }
            Verdict::Duplicate => {
                let known = vehicles.get(&p.obu_id).map(|v| v.latest.seq);
                assert!(known.is_some_and(|latest| p.seq <= latest), "{p:?} called a duplicate of {known:?}");
            }
            Verdict::Valid(out) => {
                check_valid(rules, &p, &out);
                let events = advance(event_rules, fences, &mut vehicles, &out, i);
                for event in events {
                    assert_eq!((event.obu_id, event.seq, event.ts), (p.obu_id, p.seq, p.ts), "{event:?}");
                    let json = event.to_json();
                    let back: Event = serde_json::from_slice(&json).expect("an events record reads back");
                    assert_eq!(back, event);
                }
                let again = rules.judge(&p, vehicles.get(&p.obu_id), received_at, NOW);
                assert_eq!(again, Verdict::Duplicate, "{p:?} applied, then judged again");
            }
        }
    }
    for state in vehicles.values_mut() {
        let mut offline = state.fleet.clone();
        let later = NOW + 3_600_000;
        for event in event_rules.on_timer(&mut offline, &state.latest, NOW, later) {
            assert_eq!(event.obu_id, state.latest.obu_id);
        }
        check_restore(state);
    }
});

/// A valid position as the rules promise it, and its `positions` record.
fn check_valid(rules: &Rules, p: &Position, out: &ProcessedPosition) {
    assert_eq!((out.obu_id, out.seq, out.ts, out.lat, out.lon), (p.obu_id, p.seq, p.ts, p.lat, p.lon));
    assert!((-90.0..=90.0).contains(&out.lat) && (-180.0..=180.0).contains(&out.lon), "{out:?}");
    assert!(!(rules.reject_null_island && out.lat == 0.0 && out.lon == 0.0), "{out:?}");
    let max_future = rules.max_future.as_millis() as i64;
    let max_age = rules.max_age.as_millis() as i64;
    assert!(out.ts <= NOW + max_future && out.ts >= NOW - max_age, "{out:?}");
    assert!(out.distance_m.is_finite() && out.distance_m >= 0.0, "{out:?}");
    if let Some(speed) = out.speed {
        // A computed speed is not bounded by the rules (short jumps are never teleports).
        assert!(speed.is_finite() && speed >= 0.0, "{out:?}");
        assert!(out.speed_computed || speed <= rules.max_speed_kmh, "{out:?}");
    }
    if let Some(heading) = out.heading {
        assert!((0.0..360.0).contains(&heading), "{out:?}");
    }
    assert_eq!(out.speed_computed, p.speed.is_none() && out.speed.is_some());
    assert_eq!(out.heading_computed, p.heading.is_none() && out.heading.is_some());
    let json = serde_json::to_vec(out).expect("a processed position serialises");
    let back: ProcessedPosition = serde_json::from_slice(&json).expect("a positions record reads back");
    assert_eq!(&back, out, "{}", String::from_utf8_lossy(&json));
}

/// As `judge::advance`: the seq window always, the event rules for a position in order.
fn advance(
    event_rules: &EventRules,
    fences: &FenceIndex,
    vehicles: &mut HashMap<u64, VehicleState>,
    p: &ProcessedPosition,
    index: usize,
) -> Vec<fleetstream_core::events::Event> {
    // The batch's records arrive a second apart on the processor's clock.
    let now = NOW + index as i64 * 1_000;
    let inside = fences.containing(p.lat, p.lon);
    match vehicles.get_mut(&p.obu_id) {
        Some(v) => {
            let events = if p.out_of_order || p.seq <= v.latest.seq {
                Vec::new()
            } else {
                let previous_ts = Some(v.latest.ts);
                event_rules.on_position(fences, &inside, &mut v.fleet, previous_ts, p, now)
            };
            v.apply(p.clone());
            events
        }
        None => {
            let mut v = VehicleState::new(p.clone());
            let events = event_rules.on_position(fences, &inside, &mut v.fleet, None, p, now);
            vehicles.insert(p.obu_id, v);
            events
        }
    }
}

/// The state as written to `vehicle-latest` and read back after a restart or rebalance.
fn check_restore(state: &VehicleState) {
    let json = serde_json::to_vec(&state.to_latest()).expect("a vehicle-latest record serialises");
    let record: VehicleLatest = serde_json::from_slice(&json).expect("a vehicle-latest record reads back");
    let mut restored = VehicleState::from_latest(record);
    restored.dirty = state.dirty;
    assert_eq!(&restored, state, "{}", String::from_utf8_lossy(&json));
}
