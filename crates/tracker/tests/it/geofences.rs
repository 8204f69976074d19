//! Geofences through the API and the real broker: written to the compacted topic, read back by
//! the tracker that wrote them and by every other tracker following the topic; refused with the
//! documented 4xx when they are not valid GeoJSON fences.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use fleetstream_testkit::eventually;

use crate::helpers::*;

fn depot(name: &str) -> Value {
    json!({
        "type": "Feature",
        "properties": {"name": name, "speed_limit_kmh": 30},
        "geometry": {"type": "Polygon", "coordinates": [[[13.40, 52.50], [13.42, 52.50], [13.42, 52.52], [13.40, 52.52], [13.40, 52.50]]]}
    })
}

/// Waits until the tracker has read the geofences topic (its GETs answer 503 before).
async fn wait_loaded(tracker: &TestTracker) {
    let loaded = eventually(Duration::from_secs(60), || async { tracker.get("/api/geofences").await.0 == 200 }).await;
    assert!(loaded, "the geofences were not loaded: {:?}", tracker.get("/api/geofences").await);
}

/// The ids of a FeatureCollection, in order.
fn fence_ids(collection: &Value) -> Vec<String> {
    assert_eq!(collection["type"], "FeatureCollection", "{collection}");
    let features = collection["features"].as_array().unwrap_or_else(|| panic!("a collection has `features`: {collection}"));
    features.iter().map(|f| f["id"].as_str().unwrap_or_else(|| panic!("every fence has an id: {f}")).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geofences_round_trip_through_kafka() {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    wait_loaded(&tracker).await;
    assert_eq!(fence_ids(&tracker.get_ok("/api/geofences").await), Vec::<String>::new());

    // PUT creates (201 + Location), GET sees it at once, a second PUT replaces (200).
    let body = depot("Depot").to_string();
    let (status, headers, text) = tracker.call(Method::PUT, "/api/geofences/depot", Some(&body)).await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(headers.get("location").and_then(|v| v.to_str().ok()), Some("/api/geofences/depot"));
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/geo+json"));
    let created: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!((created["id"].as_str(), created["properties"]["name"].as_str()), (Some("depot"), Some("Depot")));
    let one = tracker.get_ok("/api/geofences/depot").await;
    assert_eq!((one["type"].as_str(), one["id"].as_str()), (Some("Feature"), Some("depot")));
    assert_eq!(one["properties"]["speed_limit_kmh"].as_f64(), Some(30.0));
    assert_eq!(one["geometry"], depot("Depot")["geometry"], "the geometry as given");
    let (status, _, text) = tracker.call(Method::PUT, "/api/geofences/depot", Some(&depot("Main depot").to_string())).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(tracker.get_ok("/api/geofences/depot").await["properties"]["name"], "Main depot");

    // POST: the Feature's id, or a generated one; an existing id is a conflict.
    let mut yard = depot("Yard");
    yard["id"] = json!("yard-1");
    let (status, headers, text) = tracker.call(Method::POST, "/api/geofences", Some(&yard.to_string())).await;
    assert_eq!((status, headers.get("location").and_then(|v| v.to_str().ok())), (201, Some("/api/geofences/yard-1")), "{text}");
    let (status, _, text) = tracker.call(Method::POST, "/api/geofences", Some(&yard.to_string())).await;
    let conflict: Value = serde_json::from_str(&text).unwrap_or_default();
    assert_eq!((status, conflict["error"].as_str()), (409, Some("already_exists")), "{text}");
    let circle = json!({"type": "Feature", "properties": {"name": "Gate", "radius_m": 150}, "geometry": {"type": "Point", "coordinates": [13.41, 52.51]}});
    let (status, headers, text) = tracker.call(Method::POST, "/api/geofences", Some(&circle.to_string())).await;
    assert_eq!(status, 201, "{text}");
    let location = headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let generated = location.strip_prefix("/api/geofences/").unwrap_or_else(|| panic!("a Location: {location:?}")).to_string();
    assert_eq!(generated.len(), 16, "a generated id: {generated}");
    assert_eq!(tracker.get_ok(&location).await["properties"]["radius_m"].as_f64(), Some(150.0));
    let mut all = vec!["depot".to_string(), "yard-1".to_string(), generated.clone()];
    all.sort();
    assert_eq!(fence_ids(&tracker.get_ok("/api/geofences").await), all, "in id order");
    assert_eq!(tracker.metric("fleetstream_tracker_geofences", None), 3.0);

    // Refusals, in the API's error shape; nothing is written.
    let bowtie = json!({"type": "Feature", "properties": {"name": "Bow tie"},
        "geometry": {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.1], [13.1, 52.0], [13.0, 52.1], [13.0, 52.0]]]}});
    let refusals: Vec<(Method, &str, String, u16, &str, &str)> = vec![
        (Method::PUT, "/api/geofences/bowtie", bowtie.to_string(), 422, "invalid_geofence", "self-intersecting ring at geometry.coordinates"),
        (Method::POST, "/api/geofences", "{\"type\": \"Feature\",".into(), 400, "invalid_json", "the body is not JSON"),
        (Method::PUT, "/api/geofences/depot", "name=Depot".into(), 400, "invalid_json", "the body is not JSON"),
        (Method::PUT, "/api/geofences/depot", yard.to_string(), 400, "id_mismatch", "the Feature's id \"yard-1\" differs from the id in the path `depot`"),
        (Method::PUT, "/api/geofences/no%20spaces", depot("x").to_string(), 422, "invalid_geofence", "id contains ' '"),
        (Method::POST, "/api/geofences", json!({"type": "Feature", "id": "x", "properties": {}, "geometry": null}).to_string(), 422, "invalid_geofence", "properties.name is required"),
        (Method::POST, "/api/geofences", json!([1, 2]).to_string(), 422, "invalid_geofence", "not a GeoJSON Feature"),
    ];
    for (method, path, body, status, code, message) in refusals {
        let (got, _, text) = tracker.call(method.clone(), path, Some(&body)).await;
        let error: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
        assert_eq!((got, error["error"].as_str()), (status, Some(code)), "{method} {path}: {text}");
        let text = error["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{method} {path}: message {text:?} lacks {message:?}");
    }
    assert_eq!(tracker.get_ok("/api/geofences/depot").await["properties"]["name"], "Main depot");
    assert_eq!(tracker.get("/api/geofences/bowtie").await.0, 404);

    // DELETE: 204, then 404 for the fence and for a second DELETE.
    let (status, _, text) = tracker.call(Method::DELETE, "/api/geofences/depot", None).await;
    assert_eq!((status, text.as_str()), (204, ""));
    let (status, body) = tracker.get("/api/geofences/depot").await;
    assert_eq!((status, body["error"].as_str(), body["message"].as_str()), (404, Some("not_found"), Some("no geofence with id `depot`")));
    let (status, _, _) = tracker.call(Method::DELETE, "/api/geofences/depot", None).await;
    assert_eq!(status, 404);
    assert_eq!(tracker.metric("fleetstream_tracker_geofence_writes_total", Some(("op", "put"))), 4.0);
    assert_eq!(tracker.metric("fleetstream_tracker_geofence_writes_total", Some(("op", "delete"))), 1.0);

    // In the topic: the normalised Features keyed by id, and the tombstone (no value).
    let records = broker.read(&topics.geofences, 5, Duration::from_millis(500), Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e:#}"));
    let keys: Vec<&str> = records.iter().filter_map(|r| r.key.as_deref()).collect();
    assert_eq!(keys, vec!["depot", "depot", "yard-1", generated.as_str(), "depot"]);
    assert_eq!(records[1].json()["properties"]["name"], "Main depot");
    assert!(records[4].payload.is_empty(), "a tombstone: {:?}", records[4].text());

    // A second tracker following the same topic sees the same fences; one it writes, the
    // first sees.
    let db2 = Db::new(Backend::Sqlite);
    let second = TestTracker::spawn(&broker, &topics, &db2, &[]).await;
    wait_loaded(&second).await;
    let mut remaining = vec!["yard-1".to_string(), generated.clone()];
    remaining.sort();
    assert_eq!(fence_ids(&second.get_ok("/api/geofences").await), remaining);
    assert_eq!(second.get("/api/geofences/depot").await.0, 404, "the deleted one stays deleted");
    let (status, _, text) = second.call(Method::PUT, "/api/geofences/depot", Some(&depot("Depot again").to_string())).await;
    assert_eq!(status, 201, "{text}");
    let seen = eventually(Duration::from_secs(30), || async { tracker.get("/api/geofences/depot").await.1["properties"]["name"] == "Depot again" }).await;
    assert!(seen, "the first tracker follows the topic: {:?}", tracker.get("/api/geofences/depot").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_records_of_the_geofences_topic_are_counted_and_ignored() {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    let topic = topics.geofences.clone();
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let valid = |name: &str| depot(name).to_string().into_bytes();
    // Written before the tracker starts: read at start-up.
    fleetstream_testkit::produce_with(&producer, &topic, Some("depot"), &valid("Depot"), &[]).await.unwrap_or_else(|e| panic!("{e:#}"));
    fleetstream_testkit::produce_with(&producer, &topic, Some("depot"), b"not json", &[]).await.unwrap_or_else(|e| panic!("{e:#}"));
    fleetstream_testkit::produce_with(&producer, &topic, Some("bad id"), &valid("Bad"), &[]).await.unwrap_or_else(|e| panic!("{e:#}"));
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    wait_loaded(&tracker).await;
    assert_eq!(fence_ids(&tracker.get_ok("/api/geofences").await), vec!["depot"], "the valid version stays");
    assert_eq!(tracker.get_ok("/api/geofences/depot").await["properties"]["name"], "Depot");
    assert_eq!(tracker.metric("fleetstream_tracker_geofence_records_invalid_total", None), 2.0);
    // Written while it runs: followed.
    fleetstream_testkit::produce_with(&producer, &topic, Some("yard"), &valid("Yard"), &[]).await.unwrap_or_else(|e| panic!("{e:#}"));
    let seen = eventually(Duration::from_secs(30), || async { tracker.get("/api/geofences/yard").await.0 == 200 }).await;
    assert!(seen, "a fence written to the topic by someone else appears");
}
