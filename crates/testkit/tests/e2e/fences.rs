//! Geofences through the whole pipeline: a fence created with the tracker's API reaches a
//! running processor through the geofences topic, a vehicle entering it makes a
//! `geofence_enter` the tracker stores and serves, an invalid fence is refused with a 422 that
//! says why, and deleting the fence while the vehicle is inside makes its `geofence_exit`.

use std::time::Duration;

use fleetstream_testkit::{eventually, metric_value, Broker};
use serde_json::{json, Value};


/// A raw position of vehicle 77 on 52.5° N, `secs` seconds after `t0` (device time).
fn position(seq: u64, t0: i64, lon: f64) -> String {
    json!({"obu_id": 77, "seq": seq, "ts": t0 + seq as i64 * 2_000, "lat": 52.5, "lon": lon, "speed": 0.0}).to_string()
}

async fn events_of_77(client: &reqwest::Client, port: u16) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{port}/api/vehicles/77/events?from=-2h");
    let Ok(answer) = client.get(&url).send().await else { return Vec::new() };
    let body: Value = answer.json().await.unwrap_or_default();
    let mut events = body["events"].as_array().cloned().unwrap_or_default();
    events.reverse(); // oldest first
    events
}

fn types(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap_or("?").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_created_through_the_api_reaches_the_running_processor_and_its_events_the_tracker() {
    let broker = Broker::shared();
    let topics = broker.topics(3).await.expect("topics are created");
    let group = fleetstream_testkit::unique("fences");
    let (mut processor, processor_registry) = crate::processor(&broker, &topics, &group, &["--kafka-linger-ms=1", "--geofence-min-dwell=4s"]).await;

    // An admin token: the API wants one, and fence writes need the admin role.
    let admin = fleetstream_testkit::unique("fences-admin");
    let (mut tracker, port) = crate::tracker(&broker, &topics, &fleetstream_testkit::unique("fences-tracker"), &admin, "admin", &[]).await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {admin}").parse().expect("a header value"));
    let client = reqwest::Client::builder().default_headers(headers).build().expect("an HTTP client");
    let fences = format!("http://127.0.0.1:{port}/api/geofences");

    // Refused with the reason: a bow tie is not a polygon.
    let bow_tie = json!({"type": "Feature", "properties": {"name": "Bow tie"},
        "geometry": {"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.1], [13.1, 52.0], [13.0, 52.1], [13.0, 52.0]]]}});
    let answer = client.put(format!("{fences}/bow-tie")).json(&bow_tie).send().await.expect("the tracker answers");
    assert_eq!(answer.status().as_u16(), 422);
    let body = answer.text().await.unwrap_or_default();
    assert!(body.contains("self-intersecting"), "{body}");

    // Accepted: the yard, 13.400-13.410.
    let yard = json!({"type": "Feature", "properties": {"name": "Yard"},
        "geometry": {"type": "Polygon", "coordinates": [[[13.40, 52.49], [13.41, 52.49], [13.41, 52.51], [13.40, 52.51], [13.40, 52.49]]]}});
    // 503 while the tracker is still reading the geofences topic at start-up.
    let mut status = 0;
    for _ in 0..100 {
        let answer = client.put(format!("{fences}/yard")).json(&yard).send().await.expect("the tracker answers");
        status = answer.status().as_u16();
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 201, "the fence is created");
    let loaded = eventually(Duration::from_secs(15), || async {
        metric_value(&fleetstream_core::telemetry::render(&processor_registry), "fleetstream_processor_geofences", None) == 1.0
    })
    .await;
    assert!(loaded, "the running processor picked the fence up from the geofences topic");

    // Outside for 3 positions, then inside: entered after the 4 s dwell.
    let t0 = fleetstream_core::now_ms() - 600_000;
    let producer = broker.producer().expect("a producer");
    let mut seq = 0;
    for lon in [13.398, 13.399, 13.3995, 13.4005, 13.401, 13.401, 13.401] {
        seq += 1;
        fleetstream_testkit::produce_with(&producer, &topics.raw, Some("77"), position(seq, t0, lon).as_bytes(), &[]).await.expect("produced");
    }
    let entered = eventually(Duration::from_secs(30), || async { types(&events_of_77(&client, port).await).contains(&"geofence_enter".to_string()) }).await;
    let events = events_of_77(&client, port).await;
    assert!(entered, "the tracker serves the enter event: {events:?}");
    assert_eq!(types(&events), ["online", "geofence_enter"]);
    let enter = &events[1];
    assert_eq!((enter["fence_id"].as_str(), enter["fence_name"].as_str(), enter["seq"].as_u64()), (Some("yard"), Some("Yard"), Some(6)), "{enter}");
    assert_eq!(enter["since"].as_i64(), Some(t0 + 4 * 2_000), "the crossing: the first position inside");

    // Deleted while the vehicle is inside: it has left the fence, after the dwell.
    let answer = client.delete(format!("{fences}/yard")).send().await.expect("the tracker answers");
    assert_eq!(answer.status().as_u16(), 204);
    let unloaded = eventually(Duration::from_secs(15), || async {
        metric_value(&fleetstream_core::telemetry::render(&processor_registry), "fleetstream_processor_geofences", None) == 0.0
    })
    .await;
    assert!(unloaded, "the running processor dropped the deleted fence");
    for _ in 0..4 {
        seq += 1;
        fleetstream_testkit::produce_with(&producer, &topics.raw, Some("77"), position(seq, t0, 13.401).as_bytes(), &[]).await.expect("produced");
    }
    let left = eventually(Duration::from_secs(30), || async { types(&events_of_77(&client, port).await).len() == 3 }).await;
    let events = events_of_77(&client, port).await;
    assert!(left, "{events:?}");
    assert_eq!(types(&events), ["online", "geofence_enter", "geofence_exit"]);

    assert!(processor.shutdown().await.is_ok());
    assert!(tracker.shutdown().await.is_ok());
}
