//! Fleet events on Apache Kafka: a scripted route through two overlapping fences gives its exact
//! events, once each, whether the processor runs undisturbed, is killed with SIGKILL at several
//! points of the route, or gets some positions late; GPS jitter on a fence's edge makes no
//! storm of events; fences reach a running processor through the geofences topic; a silent
//! vehicle goes offline once, across a crash.

use std::time::Duration;

use fleetstream_core::now_ms;
use fleetstream_testkit::{Broker, Record, Topics};
use serde_json::{json, Value};

use crate::helpers::*;

/// Event thresholds of these tests (short, so a route is minutes of device time).
const RULES: [(&str, &str); 7] = [
    ("PROCESSOR_SPEED_LIMIT_KMH", "100"),
    ("PROCESSOR_OVERSPEED_MIN_DURATION", "6s"),
    ("PROCESSOR_MOVING_SPEED_KMH", "5"),
    ("PROCESSOR_MOTION_MIN_DURATION", "10s"),
    ("PROCESSOR_GEOFENCE_MIN_DWELL", "10s"),
    ("PROCESSOR_TRIP_MIN_STOP", "60s"),
    ("PROCESSOR_TRIP_MIN_DISTANCE_M", "100"),
];

/// Metres per degree of longitude at 52° N.
const M_PER_DEG_LON: f64 = 68_535.0;

/// A depot (13.000-13.018) and a school zone overlapping it (a 300 m circle at 13.020 with a
/// 30 km/h limit), as the tracker's API writes them.
async fn put_fences(broker: &Broker, topics: &Topics) {
    let depot = json!({"type": "Feature", "id": "depot", "properties": {"name": "Depot"},
        "geometry": {"type": "Polygon", "coordinates": [[[13.0, 51.995], [13.018, 51.995], [13.018, 52.005], [13.0, 52.005], [13.0, 51.995]]]}});
    let school = json!({"type": "Feature", "id": "school", "properties": {"name": "School", "radius_m": 300.0, "speed_limit_kmh": 30.0},
        "geometry": {"type": "Point", "coordinates": [13.02, 52.0]}});
    for (id, fence) in [("depot", depot), ("school", school)] {
        broker.produce(&topics.geofences, Some(id), fence.to_string().as_bytes(), &[]).await.expect("a fence is written");
    }
}

/// One vehicle's route along 52° N, a position every 2 s of device time (an hour ago).
struct Route {
    obu: u64,
    seq: u64,
    ts: i64,
    lon: f64,
    ignition: bool,
    positions: Vec<(u64, String)>,
}

impl Route {
    fn drive(&mut self, kmh: f64, secs: u64) -> &mut Self {
        for _ in 0..secs / 2 {
            self.lon += kmh / 3.6 * 2.0 / M_PER_DEG_LON;
            self.seq += 1;
            self.ts += 2_000;
            let p = json!({"obu_id": self.obu, "seq": self.seq, "ts": self.ts, "lat": 52.0, "lon": self.lon, "speed": kmh,
                "attributes": {"ignition": self.ignition}});
            self.positions.push((self.seq, p.to_string()));
        }
        self
    }

    fn ignition(&mut self, on: bool) -> &mut Self {
        self.ignition = on;
        self
    }
}

/// Parked in the depot, ignition on, out of the depot, through the school zone too fast, then
/// slower, a short stop, on again, parked for good, ignition off.
fn route(obu: u64) -> Route {
    let mut r = Route { obu, seq: 0, ts: now_ms() - 3_600_000, lon: 13.005, ignition: false, positions: Vec::new() };
    r.drive(0.0, 20).ignition(true).drive(0.0, 10);
    r.drive(50.0, 70).drive(20.0, 80).drive(50.0, 20).drive(0.0, 20).drive(50.0, 20).drive(0.0, 80).ignition(false).drive(0.0, 4);
    r
}

/// The route's events, in order: type, and fence where there is one. The school zone overlaps
/// the depot: the vehicle is in both for a while, under the school's limit.
const EXPECTED: [&str; 14] = [
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
];

fn name(e: &Value) -> String {
    let t = e["type"].as_str().unwrap_or("?");
    match e["fence_id"].as_str() {
        Some(f) => format!("{t} {f}"),
        None => t.to_string(),
    }
}

/// The events of `obu`, in the order they were written.
fn events_of(records: &[Record], obu: u64) -> Vec<Value> {
    let mut mine: Vec<&Record> = records.iter().filter(|r| r.key.as_deref() == Some(obu.to_string().as_str())).collect();
    mine.sort_by_key(|r| (r.partition, r.offset));
    mine.into_iter().map(Record::json).collect()
}

fn assert_route_events(events: &[Value], obu: u64) {
    let names: Vec<String> = events.iter().map(name).collect();
    assert_eq!(names, EXPECTED, "vehicle {obu}: the route's events, in order, once each");
    let overspeed = &events[5];
    assert_eq!((overspeed["limit_kmh"].as_f64(), overspeed["peak_kmh"].as_f64()), (Some(30.0), Some(50.0)), "{overspeed}");
    assert_eq!(overspeed["fence_id"], "school");
    let enter = &events[1];
    assert_eq!((enter["fence_name"].as_str(), enter["obu_id"].as_u64()), (Some("Depot"), Some(obu)));
    let trip = &events[12];
    // 70 s at 50, 80 at 20, 20 at 50, (stop), 20 at 50 km/h, from the first moving position.
    let expected_m = (70.0 * 50.0 + 80.0 * 20.0 + 20.0 * 50.0 + 20.0 * 50.0 - 2.0 * 50.0) / 3.6;
    let distance = trip["distance_m"].as_f64().unwrap_or_default();
    assert!((distance - expected_m).abs() < 5.0, "trip distance {distance} m, expected {expected_m}: {trip}");
    assert_eq!(trip["max_speed_kmh"].as_f64(), Some(50.0));
    for e in events {
        let id = e["event_id"].as_str().unwrap_or_default();
        assert!(id.starts_with(&format!("{obu}-{}-{}", e["seq"], e["type"].as_str().unwrap_or_default())), "{id}: {e}");
    }
}

async fn send(broker: &Broker, topics: &Topics, obu: u64, positions: &[(u64, String)], pause: Duration) {
    let producer = broker.producer().expect("a producer");
    let key = obu.to_string();
    for (_, p) in positions {
        fleetstream_testkit::produce_with(&producer, &topics.raw, Some(&key), p.as_bytes(), &[]).await.expect("a raw position is written");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

async fn wait_for_fences(processor: &ProcessorProcess, n: f64) {
    let seen = fleetstream_testkit::eventually(Duration::from_secs(30), || async { processor.metric("fleetstream_processor_geofences").await == n }).await;
    assert!(seen, "the running processor loaded {n} fences from the geofences topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_route_gives_its_events_once_through_kill_9_and_late_positions() {
    let (broker, topics) = broker_and_topics(3).await;
    let group = fleetstream_testkit::unique("events");
    let mut processor = ProcessorProcess::start_with(&broker, &topics, &group, "0", "transactions", &RULES);
    // Fences written while it runs reach it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    put_fences(&broker, &topics).await;
    wait_for_fences(&processor, 2.0).await;

    // Vehicle 1 undisturbed; vehicle 2 the same route while the processor is killed at three
    // points of it; vehicle 3 with positions 8, 40 and 90 delivered late (after 12, 45, 97).
    let undisturbed = route(1);
    send(&broker, &topics, 1, &undisturbed.positions, Duration::ZERO).await;

    let crashing = route(2);
    let total = crashing.positions.len();
    for chunk in crashing.positions.chunks(total / 4 + 1) {
        send(&broker, &topics, 2, chunk, Duration::from_millis(15)).await;
        processor.kill();
        processor = ProcessorProcess::start_with(&broker, &topics, &group, "0", "transactions", &RULES);
    }

    let mut late = route(3).positions;
    for (seq, after) in [(8u64, 12u64), (40, 45), (90, 97)] {
        let i = late.iter().position(|(s, _)| *s == seq).expect("the seq is in the route");
        let p = late.remove(i);
        let j = late.iter().position(|(s, _)| *s == after).expect("the later seq is in the route");
        late.insert(j + 1, p);
    }
    send(&broker, &topics, 3, &late, Duration::ZERO).await;

    // Vehicle 4 parks on the depot's west edge (13.000) after 20 s inside, GPS noise of ±5 m
    // either side for 5 minutes: entered once, never left.
    let mut jitter = Route { obu: 4, seq: 0, ts: now_ms() - 3_600_000, lon: 13.0015, ignition: false, positions: Vec::new() };
    jitter.drive(0.0, 20);
    for i in 0..150 {
        jitter.lon = 13.0 + if i % 3 == 0 { -6.0 } else { 5.0 } / M_PER_DEG_LON;
        jitter.drive(0.0, 2);
    }
    send(&broker, &topics, 4, &jitter.positions, Duration::ZERO).await;

    let expected = 3 * EXPECTED.len() + 2;
    let records = broker.read(&topics.events, expected, Duration::from_secs(3), Duration::from_secs(120)).expect("events are readable");
    for obu in 1..=3 {
        assert_route_events(&events_of(&records, obu), obu);
    }
    let parked: Vec<String> = events_of(&records, 4).iter().map(name).collect();
    assert_eq!(parked, ["online", "geofence_enter depot"], "GPS jitter on a boundary: no storm of enters and exits");
    assert_eq!(records.len(), expected, "no event twice, none of another vehicle");
    assert!(records.iter().all(|r| r.header("fleetstream.event.type") == Some(r.json()["type"].as_str().unwrap_or("-"))), "every event names its type in a header");
    let positions = broker.read(&topics.positions, 3 * undisturbed.positions.len() + jitter.positions.len(), Duration::from_secs(1), Duration::from_secs(60)).expect("positions are readable");
    let late_ones = positions.iter().filter(|r| r.json()["out_of_order"] == true).count();
    assert_eq!(late_ones, 3, "the late positions went to history, marked out of order");
    assert!(positions.iter().any(|r| r.json()["attributes"]["ignition"] == true), "attributes pass through to positions");
    assert_eq!(processor.metric("fleetstream_processor_geofences").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_vehicle_goes_offline_once_across_a_crash_and_comes_back_online() {
    let (broker, topics) = broker_and_topics(1).await;
    let group = fleetstream_testkit::unique("offline");
    let mut rules = RULES.to_vec();
    rules.push(("PROCESSOR_OFFLINE_AFTER", "6s"));
    let mut processor = ProcessorProcess::start_with(&broker, &topics, &group, "0", "transactions", &rules);
    let mut r = Route { obu: 5, seq: 0, ts: now_ms() - 60_000, lon: 13.3, ignition: true, positions: Vec::new() };
    r.drive(0.0, 6);
    send(&broker, &topics, 5, &r.positions, Duration::ZERO).await;
    let processed = fleetstream_testkit::eventually(Duration::from_secs(30), || async { processor.metric("fleetstream_processor_positions_valid_total").await == 3.0 }).await;
    assert!(processed, "the positions were processed");
    // Crash before the silence is long enough; the restarted processor must still see it.
    processor.kill();
    processor = ProcessorProcess::start_with(&broker, &topics, &group, "0", "transactions", &rules);
    let records = broker.read(&topics.events, 2, Duration::from_secs(8), Duration::from_secs(60)).expect("events are readable");
    let names: Vec<String> = events_of(&records, 5).iter().map(name).collect();
    assert_eq!(names, ["online", "offline"], "offline once, on the processor's clock, across the crash");
    let offline = &events_of(&records, 5)[1];
    assert_eq!((offline["seq"].as_u64(), offline["timeout_s"].as_f64()), (Some(3), Some(6.0)), "{offline}");

    r.drive(0.0, 2);
    send(&broker, &topics, 5, &r.positions[3..], Duration::ZERO).await;
    let records = broker.read(&topics.events, 3, Duration::from_secs(2), Duration::from_secs(60)).expect("events are readable");
    let events = events_of(&records, 5);
    let names: Vec<String> = events.iter().map(name).collect();
    assert_eq!(names, ["online", "offline", "online"]);
    assert_eq!(events[2]["last_ts"].as_i64(), Some(r.ts - 2_000), "online says when it was last heard of");
    drop(processor);
}
