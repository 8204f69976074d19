//! Fleet events in, API out, against the real broker and both backends: every event stored
//! once (a redelivery is not stored again, garbage is counted), listed newest first with the
//! filters, trips by the time they overlap, retention; and on SQLite the live feed of events
//! and the documented 4xx of the event endpoints.

use std::time::Duration;

use serde_json::Value;

use fleetstream_core::events::{Event, EventKind};
use fleetstream_core::now_ms;

use crate::both_backends;
use crate::helpers::*;

both_backends!(events_are_stored_once_and_listed_newest_first, trips_are_found_by_the_time_they_overlap, events_and_trips_are_pruned_with_the_retention);

/// The event ids of an event list, in response order.
fn ids(list: &Value) -> Vec<String> {
    let events = list["events"].as_array().unwrap_or_else(|| panic!("an event list has `events`: {list}"));
    events.iter().map(|e| e["event_id"].as_str().unwrap_or_else(|| panic!("every event has an id: {e}")).to_string()).collect()
}

fn fence_enter(obu_id: u64, seq: u64, ts: i64, detected_at: i64) -> Event {
    let kind = EventKind::GeofenceEnter { fence_id: "depot".into(), fence_name: "Depot".into(), since: ts - 3_000 };
    Event::new(obu_id, seq, ts, 52.51, 13.41, detected_at, kind)
}

async fn events_are_stored_once_and_listed_newest_first(backend: Backend) {
    let (broker, topics) = broker_and_topics(2).await;
    let db = Db::new(backend);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let topic = topics.events.clone();
    let now = now_ms();
    let enter = fence_enter(7, 10, now - 30_000, now - 29_000);
    let events = vec![
        Event::new(7, 1, now - 50_000, 52.50, 13.40, now - 49_000, EventKind::IgnitionOn {}),
        Event::new(7, 5, now - 40_000, 52.505, 13.405, now - 39_000, EventKind::Moving { speed_kmh: 32.0, since: now - 45_000 }),
        enter.clone(),
        Event::new(8, 3, now - 25_000, 48.85, 2.35, now - 24_000, EventKind::Alarm { alarm: "sos".into() }),
        Event::new(7, 20, now - 20_000, 52.515, 13.42, now - 19_000, EventKind::Overspeed { limit_kmh: 50.0, peak_kmh: 71.5, fence_id: None, since: now - 23_000 }),
        trip(7, now - 45_000, now - 10_000, 30),
        Event::new(8, 9, now - 5_000, 48.86, 2.36, now - 4_000, EventKind::IgnitionOff {}),
    ];
    produce_events(&producer, &topic, &events).await;
    // The same event computed again (after a processor restart: a later detection time), and
    // a record that is no event at all.
    produce_events(&producer, &topic, &[fence_enter(7, 10, now - 30_000, now - 1_000)]).await;
    fleetstream_testkit::produce_with(&producer, &topic, Some("7"), b"{\"not\": \"an event\"", &[]).await.unwrap_or_else(|e| panic!("{e:#}"));
    tracker.wait_metric("fleetstream_tracker_events_consumed_total", 9.0).await;
    tracker.wait_metric("fleetstream_tracker_event_duplicates_skipped_total", 1.0).await;

    assert_eq!(tracker.metric("fleetstream_tracker_events_stored_total", None), 7.0);
    assert_eq!(tracker.metric("fleetstream_tracker_events_stored_total", Some(("type", "trip"))), 1.0);
    assert_eq!(tracker.metric("fleetstream_tracker_events_stored_total", Some(("type", "geofence_enter"))), 1.0);
    assert_eq!(tracker.metric("fleetstream_tracker_events_skipped_total", Some(("reason", "undecodable"))), 1.0);
    let (_, metrics) = tracker.get_text("/metrics").await;
    assert!(metrics.contains("fleetstream_tracker_events_skipped_total{reason=\"undecodable\"} 1"), "the garbage is counted in /metrics");
    assert!(metrics.contains("fleetstream_tracker_events_stored_total{type=\"offline\"} 0"), "every type is listed from the start");
    assert_eq!(tracker.store.event_count().await.expect("counting the stored events"), 7);

    // Newest first, across vehicles; the duplicate once, as first stored.
    let all = tracker.get_ok("/api/events?from=-1h").await;
    let newest_first: Vec<String> = events.iter().rev().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids(&all), newest_first);
    assert_eq!((all["count"].as_u64(), all["truncated"].as_bool()), (Some(7), Some(false)));
    let stored_enter = all["events"].as_array().and_then(|a| a.iter().find(|e| e["type"] == "geofence_enter")).cloned().unwrap_or_default();
    assert_eq!(stored_enter["event_id"], "7-10-geofence_enter-depot");
    assert_eq!((stored_enter["fence_id"].as_str(), stored_enter["fence_name"].as_str()), (Some("depot"), Some("Depot")));
    assert_eq!((stored_enter["obu_id"].as_u64(), stored_enter["seq"].as_u64(), stored_enter["ts"].as_i64()), (Some(7), Some(10), Some(enter.ts)));
    assert!(near(&stored_enter["lat"], 52.51) && near(&stored_enter["lon"], 13.41), "{stored_enter}");
    assert_eq!(stored_enter["detected_at"].as_i64(), Some(enter.detected_at), "the first one stored is kept");
    assert_eq!(serde_json::from_value::<Event>(stored_enter).ok(), Some(enter), "the body is the event as produced");

    // Filters: type (one or several), vehicle, limit, range.
    let fences = tracker.get_ok("/api/events?from=-1h&type=geofence_enter,alarm").await;
    assert_eq!(ids(&fences), vec!["8-3-alarm", "7-10-geofence_enter-depot"]);
    let of_8 = tracker.get_ok("/api/events?from=-1h&obu_id=8").await;
    assert_eq!((ids(&of_8), of_8["obu_id"].as_u64()), (vec!["8-9-ignition_off".to_string(), "8-3-alarm".to_string()], Some(8)));
    let two = tracker.get_ok("/api/events?from=-1h&limit=2").await;
    assert_eq!((ids(&two), two["truncated"].as_bool()), (newest_first[..2].to_vec(), Some(true)));
    let window = tracker.get_ok(&format!("/api/events?from={}&to={}", now - 40_000, now - 20_000)).await;
    assert_eq!(ids(&window), vec!["7-20-overspeed", "8-3-alarm", "7-10-geofence_enter-depot", "7-5-moving"], "both ends included");
    let vehicle = tracker.get_ok("/api/vehicles/7/events?from=-1h").await;
    assert_eq!(ids(&vehicle), vec!["7-30-trip", "7-20-overspeed", "7-10-geofence_enter-depot", "7-5-moving", "7-1-ignition_on"]);
    let trips_only = tracker.get_ok("/api/vehicles/7/events?from=-1h&type=trip").await;
    assert_eq!(ids(&trips_only), vec!["7-30-trip"]);
    assert_eq!(trips_only["events"][0]["distance_m"].as_f64(), Some(4_200.0), "a trip event carries the trip's fields");
    let (status, body) = tracker.get("/api/events?type=bogus").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_type")), "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("unknown event type `bogus`") && message.contains("geofence_enter, geofence_exit, overspeed"), "{message}");
    assert_eq!(tracker.get_ok("/api/vehicles/9/events").await["count"], 0, "a vehicle without events has none");

    // A tracker in a new group on the same database re-reads the whole topic: nothing twice.
    let replay = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    replay.wait_metric("fleetstream_tracker_events_consumed_total", 9.0).await;
    replay.wait_metric("fleetstream_tracker_event_duplicates_skipped_total", 8.0).await;
    assert_eq!(replay.metric("fleetstream_tracker_events_stored_total", None), 0.0);
    assert_eq!(tracker.store.event_count().await.expect("counting the stored events"), 7);
}

async fn trips_are_found_by_the_time_they_overlap(backend: Backend) {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(backend);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let now = now_ms();
    let morning = trip(7, now - 3_000_000, now - 2_400_000, 100);
    let noon = trip(7, now - 1_200_000, now - 600_000, 200);
    let other = trip(8, now - 1_000_000, now - 500_000, 50);
    produce_events(&producer, &topics.events, &[morning.clone(), noon.clone(), other]).await;
    tracker.wait_metric("fleetstream_tracker_events_stored_total", 3.0).await;

    let trips = tracker.get_ok("/api/vehicles/7/trips?from=-1h").await;
    assert_eq!((trips["obu_id"].as_u64(), trips["count"].as_u64(), trips["truncated"].as_bool()), (Some(7), Some(2), Some(false)));
    let got: Vec<&str> = trips["trips"].as_array().into_iter().flatten().filter_map(|t| t["event_id"].as_str()).collect();
    assert_eq!(got, vec!["7-200-trip", "7-100-trip"], "the latest-ending first");
    let t = &trips["trips"][1];
    let EventKind::Trip(want) = &morning.kind else { panic!("a trip event") };
    assert_eq!((t["start_ts"].as_i64(), t["end_ts"].as_i64()), (Some(want.start_ts), Some(want.end_ts)));
    assert_eq!((t["start_seq"].as_u64(), t["end_seq"].as_u64()), (Some(90), Some(100)));
    assert!(near(&t["start_lat"], 52.50) && near(&t["start_lon"], 13.40) && near(&t["end_lat"], 52.52) && near(&t["end_lon"], 13.45), "{t}");
    assert_eq!((t["distance_m"].as_f64(), t["duration_s"].as_f64()), (Some(4_200.0), Some(600.0)));
    assert_eq!((t["max_speed_kmh"].as_f64(), t["avg_speed_kmh"].as_f64()), (Some(72.5), Some(41.3)));
    assert_eq!(t["track"].as_str(), Some(format!("/api/vehicles/7/track?from={}&to={}", want.start_ts, want.end_ts).as_str()));

    // Overlap: a window inside a trip finds it, one between trips finds none, one that only
    // touches a trip's end finds it.
    let inside = tracker.get_ok(&format!("/api/vehicles/7/trips?from={}&to={}", now - 1_000_000, now - 900_000)).await;
    assert_eq!(inside["trips"][0]["event_id"], "7-200-trip");
    assert_eq!(inside["count"], 1);
    let between = tracker.get_ok(&format!("/api/vehicles/7/trips?from={}&to={}", now - 2_300_000, now - 1_300_000)).await;
    assert_eq!(between["count"], 0);
    let touching = tracker.get_ok(&format!("/api/vehicles/7/trips?from={}&to={}", now - 600_000, now)).await;
    assert_eq!(touching["trips"][0]["event_id"], "7-200-trip");
    let limited = tracker.get_ok("/api/vehicles/7/trips?from=-1h&limit=1").await;
    assert_eq!((limited["count"].as_u64(), limited["truncated"].as_bool()), (Some(1), Some(true)));
    assert_eq!(tracker.get_ok("/api/vehicles/8/trips?from=-1h").await["count"], 1);
}

async fn events_and_trips_are_pruned_with_the_retention(backend: Backend) {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(backend);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &["--retention=1h", "--prune-interval=200ms"]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let now = now_ms();
    let old = now - 3 * 3_600_000;
    produce_events(
        &producer,
        &topics.events,
        &[
            Event::new(7, 1, old, 52.5, 13.4, old, EventKind::IgnitionOn {}),
            trip(7, old - 600_000, old, 20),
            Event::new(7, 40, now - 1_000, 52.5, 13.4, now, EventKind::IgnitionOff {}),
            trip(7, now - 600_000, now - 1_000, 41),
        ],
    )
    .await;
    tracker.wait_metric("fleetstream_tracker_events_stored_total", 4.0).await;
    tracker.wait_metric("fleetstream_tracker_events_pruned_total", 2.0).await;

    assert_eq!(tracker.metric("fleetstream_tracker_events_pruned_total", None), 2.0, "only the old ones");
    assert_eq!(tracker.store.event_count().await.expect("counting the stored events"), 2);
    assert_eq!(ids(&tracker.get_ok("/api/events?from=-4h").await), vec!["7-41-trip", "7-40-ignition_off"]);
    let trips = tracker.get_ok("/api/vehicles/7/trips?from=-4h").await;
    let got: Vec<&str> = trips["trips"].as_array().into_iter().flatten().filter_map(|t| t["event_id"].as_str()).collect();
    assert_eq!(got, vec!["7-41-trip"], "the old trip went with its event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_feed_pushes_new_events_as_they_are_stored() {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let topic = topics.events.clone();
    let now = now_ms();
    let before = Event::new(7, 1, now - 5_000, 52.5, 13.4, now, EventKind::IgnitionOn {});
    produce_events(&producer, &topic, std::slice::from_ref(&before)).await;
    tracker.wait_metric("fleetstream_tracker_events_stored_total", 1.0).await;

    let mut feed = tracker.http.get(tracker.url("/api/events/live")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(feed.status().as_u16(), 200);
    assert_eq!(feed.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    assert_eq!(tracker.metric("fleetstream_tracker_live_clients", Some(("feed", "events"))), 1.0);
    assert_eq!(tracker.metric("fleetstream_tracker_live_clients", Some(("feed", "positions"))), 0.0);

    // A redelivery of a stored event is not news; the two new ones are, in order.
    let after = [fence_enter(7, 2, now - 4_000, now), Event::new(7, 3, now - 3_000, 52.5, 13.4, now, EventKind::Stopped { since: now - 9_000 })];
    produce_events(&producer, &topic, std::slice::from_ref(&before)).await;
    produce_events(&producer, &topic, &after).await;
    let mut text = String::new();
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let events = parse_sse(&text);
            if events.iter().filter(|(e, _)| e == "event").count() >= 2 {
                return events;
            }
            match feed.chunk().await {
                Ok(Some(bytes)) => text.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return events,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no two events within 60 s; got {text:?}"));
    let received: Vec<Event> = got
        .iter()
        .filter(|(e, _)| e == "event")
        .map(|(_, d)| serde_json::from_str(d).unwrap_or_else(|e| panic!("an event carries an event ({e}): {d}")))
        .collect();
    assert_eq!(received, after.to_vec());
    assert!(text.contains("retry: 2000"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_event_requests_get_the_documented_4xx() {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let cases: Vec<(&str, &str, &str)> = vec![
        ("/api/events?type=trip,bogus", "invalid_type", "unknown event type `bogus`; `type` takes one or more of geofence_enter"),
        ("/api/events?type=", "invalid_type", "unknown event type ``"),
        ("/api/events?obu_id=abc", "invalid_id", "`abc` is not an obu_id"),
        ("/api/events?limit=0", "invalid_limit", "`limit` must be an integer from 1 to 1000, got `0`"),
        ("/api/events?limit=1001", "invalid_limit", "got `1001`"),
        ("/api/events?from=-5m&to=-10m", "invalid_range", "is after `to`"),
        ("/api/events?from=yesterday", "invalid_time", "`from` must be Unix milliseconds"),
        ("/api/events?bbox=1,2,3,4", "unknown_parameter", "unknown parameter `bbox`; expected from, to, type, obu_id, limit"),
        ("/api/vehicles/7/events?obu_id=8", "unknown_parameter", "expected from, to, type, limit"),
        ("/api/vehicles/x/events", "invalid_id", "`x` is not an obu_id"),
        ("/api/vehicles/7/trips?type=trip", "unknown_parameter", "expected from, to, limit"),
        ("/api/vehicles/-1/trips", "invalid_id", "`-1` is not an obu_id"),
        ("/api/vehicles/7/trips?to=-2h&from=-1h", "invalid_range", "is after `to`"),
    ];
    for (path, code, message) in cases {
        let (status, body) = tracker.get(path).await;
        assert_eq!((status, body["error"].as_str()), (400, Some(code)), "{path}: {body}");
        let text = body["message"].as_str().unwrap_or_else(|| panic!("{path}: an error body has a message: {body}"));
        assert!(text.contains(message), "{path}: message {text:?} lacks {message:?}");
    }
    // A wide range is fine for events: the limit bounds the answer.
    assert_eq!(tracker.get_ok("/api/events?from=0").await["count"], 0);
}
