//! Decommissioning a vehicle through the admin API, against the real broker and both backends:
//! its latest position is tombstoned in `vehicle-latest` (in the partition of its records) and
//! leaves the tracker's view and live map, its history stays, a second tracker reading the topic
//! from the start never shows it, and its next position brings it back.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use fleetstream_core::now_ms;
use fleetstream_testkit::eventually;

use crate::both_backends;
use crate::helpers::*;

both_backends!(a_decommissioned_vehicle_leaves_the_map_and_keeps_its_history);

/// The obu_ids of `GET /api/vehicles`, in order.
async fn listed(tracker: &TestTracker) -> Vec<u64> {
    let list = tracker.get_ok("/api/vehicles").await;
    list["vehicles"].as_array().into_iter().flatten().filter_map(|v| v["obu_id"].as_u64()).collect()
}

/// Reads the live feed until an event named `name` arrives (60 s at most); its data as JSON.
async fn next_event(feed: &mut reqwest::Response, name: &str) -> Value {
    let mut text = String::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some((_, data)) = parse_sse(&text).into_iter().find(|(e, _)| e == name) {
                return Some(data);
            }
            match feed.chunk().await {
                Ok(Some(bytes)) => text.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    })
    .await;
    let data = found.ok().flatten().unwrap_or_else(|| panic!("no `{name}` event on the live feed; got {text:?}"));
    serde_json::from_str(&data).unwrap_or_else(|e| panic!("`{name}` carries JSON ({e}): {data}"))
}

async fn a_decommissioned_vehicle_leaves_the_map_and_keeps_its_history(backend: Backend) {
    let (broker, topics) = broker_and_topics(3).await;
    let db = Db::new(backend);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));

    // As the processor writes them: each position to `positions` and the vehicle's state to
    // `vehicle-latest`, both keyed by the vehicle (so in the same partition number).
    let one = drive(1, 5, 3_000, 52.50, 13.40);
    let two = drive(2, 5, 3_000, 52.52, 13.30);
    for vehicle in [&one, &two] {
        produce_latest(&producer, &topics.latest, vehicle).await;
        produce_positions(&producer, &topics.positions, vehicle).await;
    }
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 10.0).await;
    tracker.wait_metric("fleetstream_tracker_latest_followed_total", 10.0).await;
    assert_eq!(listed(&tracker).await, vec![1, 2]);

    // Only an admin may: a viewer gets 403, no token 401 (nothing written either time).
    let viewer = client(Some(VIEWER_TOKEN));
    let refused = viewer.delete(tracker.url("/api/vehicles/1")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status().as_u16(), 403);
    let body: Value = refused.json().await.unwrap_or_default();
    assert_eq!(body["error"], "forbidden", "{body}");
    let anonymous = client(None).delete(tracker.url("/api/vehicles/1")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(listed(&tracker).await, vec![1, 2]);

    let mut feed = tracker.http.get(tracker.url("/api/live")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(feed.status().as_u16(), 200);
    let (status, _, text) = tracker.call(Method::DELETE, "/api/vehicles/1", None).await;
    assert_eq!((status, text.as_str()), (204, ""));

    // Off the view and the live map, at once; the history stays.
    assert_eq!(listed(&tracker).await, vec![2]);
    let (status, body) = tracker.get("/api/vehicles/1").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
    assert_eq!(seqs(&tracker.get_ok("/api/vehicles/1/track?from=-1h").await), vec![1, 2, 3, 4, 5]);
    assert_eq!(next_event(&mut feed, "decommissioned").await, serde_json::json!({ "obu_id": 1 }));
    drop(feed);
    assert_eq!(tracker.metric("fleetstream_tracker_decommissions_total", Some(("source", "api"))), 1.0);
    // Recounted by whichever removed it: the API, or the follower reading the tombstone back.
    let recounted = eventually(Duration::from_secs(10), || async { tracker.metric("fleetstream_tracker_vehicles", None) == 1.0 }).await;
    assert!(recounted, "fleetstream_tracker_vehicles: {}", tracker.metric("fleetstream_tracker_vehicles", None));

    // In the topic: a tombstone for key "1", in the partition of its earlier records, saying
    // how far the vehicle got.
    let records = broker.read(&topics.latest, 11, Duration::from_millis(500), Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e:#}"));
    let of_one: Vec<_> = records.iter().filter(|r| r.key.as_deref() == Some("1")).collect();
    assert_eq!(of_one.len(), 6, "five states and the tombstone: {records:?}");
    let tombstone = of_one.iter().max_by_key(|r| r.offset).copied().unwrap_or_else(|| panic!("records of vehicle 1"));
    assert!(tombstone.payload.is_empty(), "a tombstone: {:?}", tombstone.text());
    assert_eq!(tombstone.header("fleetstream.decommissioned.after"), Some("5"));
    assert!(of_one.iter().all(|r| r.partition == tombstone.partition), "one partition: {of_one:?}");

    // Again, or a vehicle never seen: 404.
    for path in ["/api/vehicles/1", "/api/vehicles/99"] {
        let (status, _, text) = tracker.call(Method::DELETE, path, None).await;
        let body: Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "DELETE {path}: {text}");
    }

    // A second tracker, empty database, its own group: it reads vehicle-latest and both
    // vehicles' positions from the start, and still never shows vehicle 1, only its history.
    let db2 = Db::new(backend);
    let second = TestTracker::spawn(&broker, &topics, &db2, &[]).await;
    second.wait_metric("fleetstream_tracker_positions_written_total", 10.0).await;
    assert_eq!(listed(&second).await, vec![2]);
    assert_eq!(seqs(&second.get_ok("/api/vehicles/1/track?from=-1h").await), vec![1, 2, 3, 4, 5]);

    // Re-commissioned by its next position, on both trackers.
    let next = position(1, 6, now_ms() - 500, 52.51, 13.41);
    produce_latest(&producer, &topics.latest, std::slice::from_ref(&next)).await;
    produce_positions(&producer, &topics.positions, std::slice::from_ref(&next)).await;
    for t in [&tracker, &second] {
        let back = eventually(Duration::from_secs(30), || async { listed(t).await == vec![1, 2] }).await;
        assert!(back, "vehicle 1 is back: {:?}", listed(t).await);
        assert_eq!(t.get_ok("/api/vehicles/1").await["seq"], 6);
    }
}
