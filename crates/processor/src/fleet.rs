//! Fleet events: what a vehicle's in-order positions mean for an operator (docs/processing.md,
//! "Fleet events").
//!
//! Pure rules over a vehicle's [`FleetState`]: no clock but the one passed in, no I/O. They run
//! on a vehicle's positions in seq order only (a late position moves no state and makes no
//! event), so recomputing from the same positions and the same state gives the same events with
//! the same ids: that, and the state living in `vehicle-latest` with the rest, is what makes
//! them exactly once.
//!
//! Durations (dwell, overspeed, motion, stops) are measured on device time, so a backlog
//! uploaded late gives the same events as live positions; only `offline` is measured on the
//! processor's clock, because it is about the silence itself.
//!
//! Order of the events of one position: online, ignition, alarm, geofence exits, geofence
//! enters, overspeed end, overspeed, moving/stopped, trip.

use std::time::Duration;

use fleetstream_core::events::{Event, EventKind, FleetState, Mark, OverspeedEpisode, Trip, TripInProgress};
use fleetstream_core::geofence::{Fence, FenceIndex};
use fleetstream_core::ProcessedPosition;

/// Event thresholds: each a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct EventRules {
    /// Global speed limit, km/h: `overspeed` above it (a fence's own limit wins inside the
    /// fence). 0 disables the global limit.
    #[arg(long, env = "PROCESSOR_SPEED_LIMIT_KMH", default_value_t = 130.0)]
    pub speed_limit_kmh: f64,

    /// How long the speed must stay above the limit before `overspeed` (one per episode).
    #[arg(long, env = "PROCESSOR_OVERSPEED_MIN_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub overspeed_min_duration: Duration,

    /// Speed at or above which a vehicle counts as moving, km/h.
    #[arg(long, env = "PROCESSOR_MOVING_SPEED_KMH", default_value_t = 5.0)]
    pub moving_speed_kmh: f64,

    /// How long the speed must stay on the other side of the motion threshold before
    /// `moving` / `stopped`.
    #[arg(long, env = "PROCESSOR_MOTION_MIN_DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub motion_min_duration: Duration,

    /// How long a vehicle must stay on the other side of a fence's boundary before
    /// `geofence_enter` / `geofence_exit`: GPS jitter on a boundary makes no events.
    #[arg(long, env = "PROCESSOR_GEOFENCE_MIN_DWELL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub geofence_min_dwell: Duration,

    /// Silence after which a vehicle is `offline`, by the processor's clock.
    #[arg(long, env = "PROCESSOR_OFFLINE_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub offline_after: Duration,

    /// A stop longer than this ends a trip (shorter ones are part of it).
    #[arg(long, env = "PROCESSOR_TRIP_MIN_STOP", default_value = "5m", value_parser = humantime::parse_duration)]
    pub trip_min_stop: Duration,

    /// Trips shorter than this many metres are not reported.
    #[arg(long, env = "PROCESSOR_TRIP_MIN_DISTANCE_M", default_value_t = 200.0)]
    pub trip_min_distance_m: f64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn mark(p: &ProcessedPosition) -> Mark {
    Mark { ts: p.ts, seq: p.seq, lat: p.lat, lon: p.lon }
}

/// Ends the vehicle's overspeed episode at the emitter's position: `overspeed_end` if
/// `overspeed` was reported for it.
fn end_overspeed(state: &mut FleetState, out: &mut Emitter<'_>) {
    if let Some(e) = state.overspeed.take() {
        if e.reported {
            let duration_s = (out.p.ts - e.since) as f64 / 1000.0;
            out.emit(EventKind::OverspeedEnd { limit_kmh: e.limit_kmh, peak_kmh: e.peak_kmh, fence_id: e.fence_id, since: e.since, duration_s });
        }
    }
}

/// Collects the events of one position.
struct Emitter<'a> {
    p: &'a ProcessedPosition,
    now: i64,
    events: Vec<Event>,
}

impl Emitter<'_> {
    fn emit(&mut self, kind: EventKind) {
        self.events.push(Event::new(self.p.obu_id, self.p.seq, self.p.ts, self.p.lat, self.p.lon, self.now, kind).in_boot(self.p.boot));
    }
}

impl EventRules {
    /// The events of an in-order valid position `p`, processed at `now` (processor clock);
    /// `previous_ts` is the device time of the vehicle's latest position before it, if any.
    /// Updates the state.
    /// `inside` are the fences holding the position (the caller looks them up, and times it).
    pub fn on_position(&self, fences: &FenceIndex, inside: &[&Fence], state: &mut FleetState, previous_ts: Option<i64>, p: &ProcessedPosition, now: i64) -> Vec<Event> {
        let mut out = Emitter { p, now, events: Vec::new() };
        if !state.online {
            out.emit(EventKind::Online { last_ts: previous_ts });
            state.online = true;
        }
        state.heard_at = now;
        self.attributes(state, p, &mut out);
        self.geofences(inside, state, p, &mut out);
        // Distance counts whether or not the position has a speed.
        if let Some(trip) = &mut state.trip {
            trip.distance_m += p.distance_m;
            trip.max_speed_kmh = trip.max_speed_kmh.max(p.speed.unwrap_or(0.0));
        }
        if state.motion_change.is_some() {
            state.change_distance_m += p.distance_m;
            state.change_max_kmh = state.change_max_kmh.max(p.speed.unwrap_or(0.0));
        }
        if let Some(speed) = p.speed {
            self.overspeed(fences, state, p, speed, &mut out);
            self.motion(state, p, speed, &mut out);
        }
        out.events
    }

    /// `offline` for a vehicle silent for `--offline-after` by `now`, whose latest position is
    /// `latest`; a trip in progress ends with it (a parked vehicle often stops reporting), and
    /// so does an overspeed episode. What the vehicle does when it is heard again is learnt
    /// afresh: its motion is unknown, and a drive it comes back in is a new trip.
    /// Silence counts from `listening_since` at the earliest: a processor that just took the
    /// vehicle over (after a restart, a rebalance) has not been listening before, and the
    /// backlog it works through may hold the vehicle's positions.
    pub fn on_timer(&self, state: &mut FleetState, latest: &ProcessedPosition, listening_since: i64, now: i64) -> Vec<Event> {
        let silent_since = state.heard_at.max(listening_since);
        if !state.online || now.saturating_sub(silent_since) < ms(self.offline_after) {
            return Vec::new();
        }
        let mut out = Emitter { p: latest, now, events: Vec::new() };
        state.online = false;
        out.emit(EventKind::Offline { last_heard_at: state.heard_at, timeout_s: self.offline_after.as_secs_f64() });
        end_overspeed(state, &mut out);
        if let Some(trip) = state.trip.take() {
            let (end, distance) = trip.stop.unwrap_or((mark(latest), trip.distance_m));
            self.finish_trip(trip, end, distance, &mut out);
        }
        state.moving = None;
        state.motion_change = None;
        out.events
    }

    fn attributes(&self, state: &mut FleetState, p: &ProcessedPosition, out: &mut Emitter<'_>) {
        let attributes = p.attributes.as_ref();
        if let Some(on) = attributes.and_then(|a| a.ignition) {
            // The first report only sets what is known: an event is a change.
            match state.ignition {
                Some(was) if was != on => out.emit(if on { EventKind::IgnitionOn {} } else { EventKind::IgnitionOff {} }),
                _ => {}
            }
            state.ignition = Some(on);
        }
        let alarm = attributes.and_then(|a| a.alarm.clone());
        if let Some(a) = &alarm {
            if state.alarm.as_ref() != Some(a) {
                out.emit(EventKind::Alarm { alarm: a.clone() });
            }
        }
        // A position without the alarm clears it: the same alarm again is a new one.
        state.alarm = alarm;
    }

    fn geofences(&self, inside: &[&Fence], state: &mut FleetState, p: &ProcessedPosition, out: &mut Emitter<'_>) {
        let dwell = ms(self.geofence_min_dwell);
        let inside: Vec<(&str, &str)> = inside.iter().map(|f| (f.id.as_str(), f.name.as_str())).collect();
        let is_inside = |id: &str| inside.iter().any(|(i, _)| *i == id);

        // Exits: confirmed fences the position is outside of (a deleted fence included).
        let confirmed: Vec<String> = state.fences.keys().cloned().collect();
        for id in confirmed {
            if is_inside(&id) {
                // Back inside before the dwell: the crossing did not count.
                state.fence_changes.remove(&id);
                continue;
            }
            let name = state.fences.get(&id).map(|f| f.0.clone()).unwrap_or_default();
            let since = match state.fence_changes.get(&id) {
                Some((_, false, since)) => *since,
                _ => {
                    state.fence_changes.insert(id.clone(), (name.clone(), false, p.ts));
                    p.ts
                }
            };
            if p.ts - since >= dwell {
                state.fence_changes.remove(&id);
                state.fences.remove(&id);
                out.emit(EventKind::GeofenceExit { fence_id: id, fence_name: name, since });
            }
        }
        // Pending enters of fences the position is outside of again: forgotten.
        state.fence_changes.retain(|id, (_, entering, _)| !*entering || is_inside(id));
        // Enters.
        for (id, name) in &inside {
            if state.fences.contains_key(*id) {
                continue;
            }
            let since = match state.fence_changes.get(*id) {
                Some((_, true, since)) => *since,
                _ => {
                    state.fence_changes.insert(id.to_string(), (name.to_string(), true, p.ts));
                    p.ts
                }
            };
            if p.ts - since >= dwell {
                state.fence_changes.remove(*id);
                state.fences.insert(id.to_string(), (name.to_string(), since));
                out.emit(EventKind::GeofenceEnter { fence_id: id.to_string(), fence_name: name.to_string(), since });
            }
        }
    }

    /// The limit that applies: the lowest of the confirmed fences' own limits, else the global
    /// one (none if 0).
    fn limit(&self, fences: &FenceIndex, state: &FleetState) -> Option<(f64, Option<String>)> {
        let by_fence = state
            .fences
            .keys()
            .filter_map(|id| fences.get(id).and_then(|f| f.speed_limit_kmh.map(|l| (l, Some(id.clone())))))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        by_fence.or_else(|| (self.speed_limit_kmh > 0.0).then_some((self.speed_limit_kmh, None)))
    }

    fn overspeed(&self, fences: &FenceIndex, state: &mut FleetState, p: &ProcessedPosition, speed: f64, out: &mut Emitter<'_>) {
        let limit = self.limit(fences, state);
        // An episode under another limit (the vehicle entered or left a zone) ends here; a new
        // one starts under the new limit if the speed is above it.
        let ends = match (&state.overspeed, &limit) {
            // Into another fence with the same limit: the same episode.
            (Some(e), Some((l, _))) => e.limit_kmh != *l || speed <= *l,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if ends {
            end_overspeed(state, out);
        }
        let Some((limit_kmh, fence_id)) = limit else { return };
        if speed <= limit_kmh {
            return;
        }
        let episode = state.overspeed.get_or_insert(OverspeedEpisode { limit_kmh, fence_id, since: p.ts, peak_kmh: speed, reported: false });
        episode.peak_kmh = episode.peak_kmh.max(speed);
        if !episode.reported && p.ts - episode.since >= ms(self.overspeed_min_duration) {
            episode.reported = true;
            let kind = EventKind::Overspeed { limit_kmh: episode.limit_kmh, peak_kmh: episode.peak_kmh, fence_id: episode.fence_id.clone(), since: episode.since };
            out.emit(kind);
        }
    }

    fn motion(&self, state: &mut FleetState, p: &ProcessedPosition, speed: f64, out: &mut Emitter<'_>) {
        let moving = speed >= self.moving_speed_kmh;
        if state.moving == Some(moving) {
            state.motion_change = None;
        } else {
            let change = *state.motion_change.get_or_insert(mark(p));
            if change.seq == p.seq {
                // Counted from here (this position's own step came before).
                state.change_distance_m = 0.0;
                state.change_max_kmh = speed;
                if let Some(trip) = &mut state.trip {
                    trip.distance_at_change = trip.distance_m;
                }
            }
            if p.ts - change.ts >= ms(self.motion_min_duration) {
                let known = state.moving.is_some();
                state.moving = Some(moving);
                state.motion_change = None;
                // The first confirmation only sets what is known: an event is a change.
                if known {
                    out.emit(if moving { EventKind::Moving { speed_kmh: speed, since: change.ts } } else { EventKind::Stopped { since: change.ts } });
                }
                match (&mut state.trip, moving) {
                    (None, true) => {
                        let (distance_m, max_speed_kmh) = (state.change_distance_m, state.change_max_kmh);
                        state.trip = Some(TripInProgress { start: change, distance_m, max_speed_kmh, stop: None, distance_at_change: 0.0 });
                    }
                    // A short stop inside the trip: it goes on.
                    (Some(trip), true) => trip.stop = None,
                    (Some(trip), false) => trip.stop = Some((change, trip.distance_at_change)),
                    (None, false) => {}
                }
            }
        }
        // The stop lasts until the vehicle moves again: while a change to moving waits for its
        // confirmation, the stop ended where that change began (it may still be a short stop).
        let stopped_until = match (state.moving, state.motion_change) {
            (Some(false), Some(change)) => change.ts,
            _ => p.ts,
        };
        let ended = state.trip.as_ref().and_then(|t| t.stop).is_some_and(|(stop, _)| stopped_until - stop.ts >= ms(self.trip_min_stop));
        if ended {
            if let Some(trip) = state.trip.take() {
                if let Some((end, distance)) = trip.stop {
                    self.finish_trip(trip, end, distance, out);
                }
            }
        }
    }

    fn finish_trip(&self, trip: TripInProgress, end: Mark, distance_m: f64, out: &mut Emitter<'_>) {
        if distance_m < self.trip_min_distance_m {
            return;
        }
        let duration_s = (end.ts - trip.start.ts) as f64 / 1000.0;
        let avg_speed_kmh = if duration_s > 0.0 { distance_m / duration_s * 3.6 } else { 0.0 };
        out.emit(EventKind::Trip(Trip {
            start_ts: trip.start.ts,
            start_seq: trip.start.seq,
            start_lat: trip.start.lat,
            start_lon: trip.start.lon,
            end_ts: end.ts,
            end_seq: end.seq,
            end_lat: end.lat,
            end_lon: end.lon,
            distance_m,
            duration_s,
            max_speed_kmh: trip.max_speed_kmh,
            avg_speed_kmh,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetstream_core::{Attributes, ProcessedPosition};
    use serde_json::json;

    const T0: i64 = 1_800_000_000_000;
    /// Metres per degree of longitude at 52° N.
    const M_PER_DEG_LON: f64 = 68_535.0;

    fn rules() -> EventRules {
        EventRules {
            speed_limit_kmh: 100.0,
            overspeed_min_duration: Duration::from_secs(6),
            moving_speed_kmh: 5.0,
            motion_min_duration: Duration::from_secs(10),
            geofence_min_dwell: Duration::from_secs(10),
            offline_after: Duration::from_secs(120),
            trip_min_stop: Duration::from_secs(60),
            trip_min_distance_m: 100.0,
        }
    }

    /// A depot (13.000-13.018) and a school zone overlapping it (a 300 m circle at 13.020,
    /// limit 30 km/h).
    fn fences() -> FenceIndex {
        let depot = json!({"type": "Feature", "id": "depot", "properties": {"name": "Depot"},
            "geometry": {"type": "Polygon", "coordinates": [[[13.0, 51.995], [13.018, 51.995], [13.018, 52.005], [13.0, 52.005], [13.0, 51.995]]]}});
        let school = json!({"type": "Feature", "id": "school", "properties": {"name": "School", "radius_m": 300.0, "speed_limit_kmh": 30.0},
            "geometry": {"type": "Point", "coordinates": [13.02, 52.0]}});
        FenceIndex::new([depot, school].iter().map(|f| Fence::from_feature(f, None).expect("a valid fence")))
    }

    /// A vehicle driving along 52° N, one position every 2 s of device time.
    struct Route {
        seq: u64,
        ts: i64,
        lon: f64,
        ignition: Option<bool>,
        alarm: Option<String>,
        positions: Vec<ProcessedPosition>,
    }

    impl Route {
        fn at(lon: f64) -> Route {
            Route { seq: 0, ts: T0, lon, ignition: None, alarm: None, positions: Vec::new() }
        }

        /// `secs` at `kmh` eastwards.
        fn drive(&mut self, kmh: f64, secs: i64) -> &mut Self {
            for _ in 0..secs / 2 {
                let step = kmh / 3.6 * 2.0;
                self.lon += step / M_PER_DEG_LON;
                self.seq += 1;
                self.ts += 2_000;
                let attributes = Attributes { ignition: self.ignition, alarm: self.alarm.clone(), ..Attributes::default() };
                self.positions.push(ProcessedPosition {
                    obu_id: 7,
                    seq: self.seq,
                    boot: 0,
                    ts: self.ts,
                    lat: 52.0,
                    lon: self.lon,
                    speed: Some(kmh),
                    heading: Some(90.0),
                    speed_computed: false,
                    heading_computed: false,
                    distance_m: step,
                    received_at: None,
                    processed_at: self.ts,
                    out_of_order: false,
                    attributes: Some(attributes),
                });
            }
            self
        }

        fn ignition(&mut self, on: bool) -> &mut Self {
            self.ignition = Some(on);
            self
        }
    }

    /// Runs positions through the rules, with the offline timer checked after each on the
    /// processor clock `clock(p)`; a type per event, with its fence if it has one.
    fn run(rules: &EventRules, fences: &FenceIndex, state: &mut FleetState, positions: &[ProcessedPosition]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut previous: Option<i64> = None;
        for p in positions {
            let inside = fences.containing(p.lat, p.lon);
            events.extend(rules.on_position(fences, &inside, state, previous, p, p.processed_at));
            previous = Some(p.ts);
        }
        events
    }

    fn names(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match &e.kind {
                EventKind::GeofenceEnter { fence_id, .. } | EventKind::GeofenceExit { fence_id, .. } => format!("{} {fence_id}", e.type_name()),
                EventKind::Overspeed { fence_id: Some(f), .. } | EventKind::OverspeedEnd { fence_id: Some(f), .. } => format!("{} {f}", e.type_name()),
                _ => e.type_name().to_string(),
            })
            .collect()
    }

    fn route() -> Route {
        let mut r = Route::at(13.005);
        r.ignition(false).drive(0.0, 20).ignition(true).drive(0.0, 10);
        // Out of the depot, into the school zone at 50 (over its 30), slower, out, a short stop,
        // on, then parked for good.
        r.drive(50.0, 70).drive(20.0, 80).drive(50.0, 20).drive(0.0, 20).drive(50.0, 20).drive(0.0, 80).ignition(false).drive(0.0, 4);
        r
    }

    #[test]
    fn a_scripted_route_gives_its_events_in_order() {
        let (rules, fences) = (rules(), fences());
        let mut state = FleetState::default();
        let events = run(&rules, &fences, &mut state, &route().positions);
        assert_eq!(
            names(&events),
            [
                "online",
                "geofence_enter depot",
                "ignition_on",
                "moving",
                "geofence_enter school",
                "overspeed school",
                "overspeed_end school",
                "geofence_exit depot",
                "geofence_exit school",
                "stopped",
                "moving",
                "stopped",
                "trip",
                "ignition_off",
            ]
        );
        let overspeed = events.iter().find(|e| e.type_name() == "overspeed").map(|e| e.kind.clone());
        assert!(matches!(overspeed, Some(EventKind::Overspeed { limit_kmh: 30.0, peak_kmh: 50.0, .. })), "{overspeed:?}");
        let Some(EventKind::Trip(trip)) = events.iter().find(|e| e.type_name() == "trip").map(|e| e.kind.clone()) else { panic!("no trip") };
        // 70 s at 50, 80 at 20, 20 at 50, (stop), 20 at 50 km/h, from the first moving
        // position (whose own 2 s step came before the trip).
        let expected = (70.0 * 50.0 + 80.0 * 20.0 + 20.0 * 50.0 + 20.0 * 50.0 - 2.0 * 50.0) / 3.6;
        assert!((trip.distance_m - expected).abs() < 1.0, "{} vs {expected}", trip.distance_m);
        assert_eq!(trip.max_speed_kmh, 50.0);
        assert_eq!(trip.start_seq, 16, "the first moving position");
        assert!(trip.duration_s > 150.0 && trip.avg_speed_kmh > 30.0 && trip.avg_speed_kmh < 40.0, "{trip:?}");
        // Every id is unique and says what triggered it.
        let mut ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), events.len());
    }

    #[test]
    fn state_saved_and_restored_anywhere_gives_the_same_events() {
        let (rules, fences) = (rules(), fences());
        let positions = route().positions;
        let whole = run(&rules, &fences, &mut FleetState::default(), &positions);
        for cut in [1, 9, 20, 33, 47, 60, positions.len() - 2] {
            let mut state = FleetState::default();
            let mut events = run(&rules, &fences, &mut state, &positions[..cut]);
            // What vehicle-latest keeps, and what a new owner reads back.
            let text = serde_json::to_string(&state).expect("state serialises");
            let mut restored: FleetState = serde_json::from_str(&text).expect("state reads back");
            let mut rest = Vec::new();
            let mut previous = Some(positions[cut - 1].ts);
            for p in &positions[cut..] {
                let inside = fences.containing(p.lat, p.lon);
                rest.extend(rules.on_position(&fences, &inside, &mut restored, previous, p, p.processed_at));
                previous = Some(p.ts);
            }
            events.extend(rest);
            assert_eq!(events, whole, "cut at {cut}");
        }
    }

    #[test]
    fn jitter_on_a_boundary_makes_no_storm() {
        let (rules, fences) = (rules(), fences());
        let mut state = FleetState::default();
        // Inside the depot for 20 s, then parked on its west edge (13.000) with GPS noise of
        // ±5 m either side, 10 minutes.
        let mut events = Vec::new();
        for i in 0..310u64 {
            let noise = if i < 10 { 100.0 } else if i % 3 == 0 { -6.0 } else { 5.0 } / M_PER_DEG_LON;
            let p = ProcessedPosition {
                obu_id: 7,
                seq: i + 1,
                boot: 0,
                ts: T0 + i as i64 * 2_000,
                lat: 52.0,
                lon: 13.0 + noise,
                speed: Some(0.0),
                heading: None,
                speed_computed: false,
                heading_computed: false,
                distance_m: 0.0,
                received_at: None,
                processed_at: T0 + i as i64 * 2_000,
                out_of_order: false,
                attributes: None,
            };
            let inside = fences.containing(p.lat, p.lon);
            events.extend(rules.on_position(&fences, &inside, &mut state, None, &p, p.processed_at));
        }
        // One enter, never an exit: no stretch outside lasts the dwell.
        assert_eq!(names(&events), ["online", "geofence_enter depot"]);
        // A vehicle that arrives on the edge from outside never enters either.
        let mut state = FleetState::default();
        let mut events = Vec::new();
        for i in 0..300u64 {
            let noise = if i % 3 == 0 { 5.0 } else { -6.0 } / M_PER_DEG_LON;
            let mut p = route().positions[0].clone();
            (p.seq, p.ts, p.processed_at, p.lon) = (i + 1, T0 + i as i64 * 2_000, T0 + i as i64 * 2_000, 13.0 + noise);
            let inside = fences.containing(p.lat, p.lon);
            events.extend(rules.on_position(&fences, &inside, &mut state, None, &p, p.processed_at));
        }
        assert_eq!(names(&events), ["online"]);
    }

    #[test]
    fn offline_fires_once_on_the_processor_clock_and_online_follows() {
        let rules = rules();
        let fences = FenceIndex::default();
        let mut state = FleetState::default();
        let mut r = Route::at(13.1);
        r.drive(0.0, 4);
        let events = run(&rules, &fences, &mut state, &r.positions);
        assert_eq!(names(&events), ["online"]);
        let last = r.positions[r.positions.len() - 1].clone();
        let heard = last.processed_at;
        assert!(rules.on_timer(&mut state, &last, 0, heard + 119_000).is_empty(), "not yet");
        assert!(rules.on_timer(&mut state, &last, heard + 100_000, heard + 121_000).is_empty(), "taken over 21 s ago: not yet");
        let offline = rules.on_timer(&mut state, &last, 0, heard + 121_000);
        assert_eq!(names(&offline), ["offline"]);
        assert_eq!((offline[0].seq, offline[0].ts), (last.seq, last.ts), "the last position heard");
        assert!(matches!(offline[0].kind, EventKind::Offline { last_heard_at, .. } if last_heard_at == heard));
        assert!(rules.on_timer(&mut state, &last, 0, heard + 500_000).is_empty(), "once");
        r.drive(0.0, 2);
        let back = run(&rules, &fences, &mut state, &r.positions[r.positions.len() - 1..]);
        assert_eq!(names(&back), ["online"]);
        assert!(matches!(back[0].kind, EventKind::Online { last_ts: None }), "the test passes no previous here");
    }

    #[test]
    fn a_fence_limit_wins_and_overspeed_is_once_per_episode() {
        let (rules, fences) = (rules(), FenceIndex::default());
        let mut state = FleetState::default();
        let mut r = Route::at(13.2);
        // Above the global 100 for 4 s (too short), then for 20 s, peak 140, then back to 90.
        r.drive(110.0, 4).drive(90.0, 4).drive(120.0, 10).drive(140.0, 10).drive(90.0, 4);
        let events = run(&rules, &fences, &mut state, &r.positions);
        assert_eq!(names(&events), ["online", "overspeed", "overspeed_end"]);
        match (&events[1].kind, &events[2].kind) {
            (EventKind::Overspeed { limit_kmh, peak_kmh, fence_id: None, .. }, EventKind::OverspeedEnd { peak_kmh: end_peak, duration_s, .. }) => {
                assert_eq!((*limit_kmh, *peak_kmh, *end_peak), (100.0, 120.0, 140.0));
                assert_eq!(*duration_s, 20.0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn offline_ends_the_trip_and_the_overspeed_and_a_drive_after_it_is_a_new_trip() {
        let (rules, fences) = (rules(), FenceIndex::default());
        let mut state = FleetState::default();
        let mut r = Route::at(13.4);
        r.drive(120.0, 60);
        let mut events = run(&rules, &fences, &mut state, &r.positions);
        // Into a tunnel at 120: silent for longer than the offline timeout.
        let last = r.positions[r.positions.len() - 1].clone();
        events.extend(rules.on_timer(&mut state, &last, 0, last.processed_at + 121_000));
        let before = r.positions.len();
        r.ts += 300_000;
        r.drive(50.0, 60).drive(0.0, 70);
        events.extend(run(&rules, &fences, &mut state, &r.positions[before..]));
        assert_eq!(names(&events), ["online", "overspeed", "offline", "overspeed_end", "trip", "online", "stopped", "trip"]);
        let Some(EventKind::Trip(second)) = events.last().map(|e| e.kind.clone()) else { panic!("a trip last") };
        assert!((second.distance_m - 58.0 * 50.0 / 3.6).abs() < 30.0, "the drive after the tunnel: {second:?}");
    }

    #[test]
    fn a_stop_shorter_than_the_minimum_does_not_split_a_trip_even_while_moving_is_unconfirmed() {
        let (rules, fences) = (rules(), FenceIndex::default());
        let mut state = FleetState::default();
        let mut r = Route::at(13.5);
        // The stop lasts 56 s (minimum 60 s); at 60 s the vehicle moves but is not yet confirmed.
        r.drive(0.0, 20).drive(50.0, 30).drive(0.0, 56).drive(50.0, 30).drive(0.0, 80);
        let events = run(&rules, &fences, &mut state, &r.positions);
        assert_eq!(names(&events), ["online", "moving", "stopped", "moving", "stopped", "trip"]);
    }

    #[test]
    fn positions_without_speed_still_count_for_the_trip() {
        let (rules, fences) = (rules(), FenceIndex::default());
        let mut state = FleetState::default();
        let mut r = Route::at(13.6);
        r.drive(0.0, 20).drive(50.0, 40);
        let mut positions = r.positions.clone();
        r.drive(50.0, 20);
        let mut blind: Vec<ProcessedPosition> = r.positions[positions.len()..].to_vec();
        for p in &mut blind {
            p.speed = None;
        }
        positions.extend(blind);
        let before = r.positions.len();
        r.drive(50.0, 20).drive(0.0, 80);
        positions.extend(r.positions[before..].iter().cloned());
        let events = run(&rules, &fences, &mut state, &positions);
        let Some(EventKind::Trip(trip)) = events.last().map(|e| e.kind.clone()) else { panic!("a trip last: {:?}", names(&events)) };
        assert!((trip.distance_m - 78.0 * 50.0 / 3.6).abs() < 30.0, "{trip:?}");
    }

    #[test]
    fn ignition_and_alarms_are_changes() {
        let (rules, fences) = (rules(), FenceIndex::default());
        let mut state = FleetState::default();
        let mut r = Route::at(13.3);
        r.ignition(true).drive(0.0, 4);
        r.alarm = Some("sos".into());
        r.drive(0.0, 4);
        r.alarm = None;
        r.drive(0.0, 2).ignition(false).drive(0.0, 2);
        r.alarm = Some("sos".into());
        r.drive(0.0, 2);
        let events = run(&rules, &fences, &mut state, &r.positions);
        assert_eq!(names(&events), ["online", "alarm", "ignition_off", "alarm"]);
    }
}
