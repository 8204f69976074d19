//! The query API's contract: the documented errors, the filters, the live feed, the page and
//! the request metrics. The API does not depend on the backend: these run on SQLite.

use std::time::Duration;

use fleetstream_core::now_ms;
use fleetstream_testkit::eventually;

use crate::helpers::*;

/// A tracker holding vehicles 1 and 2 in Berlin (moving), 3 in Madrid, 4 near the antimeridian
/// and 5 in Berlin but silent for two hours.
async fn fleet() -> (fleetstream_testkit::Broker, fleetstream_testkit::Topics, Db, TestTracker) {
    let (broker, topics) = broker_and_topics(2).await;
    let db = Db::new(Backend::Sqlite);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let mut positions = drive(1, 5, 1_000, 52.50, 13.40);
    positions.extend(drive(2, 5, 1_000, 52.45, 13.30));
    positions.extend(drive(3, 5, 1_000, 40.41, -3.70));
    positions.extend(drive(4, 5, 1_000, -17.0, 179.9));
    positions.extend(drive(5, 5, 2 * 3_600_000, 52.55, 13.45));
    produce_positions(&producer, &topics.positions, &positions).await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 25.0).await;
    (broker, topics, db, tracker)
}

fn ids(list: &serde_json::Value) -> Vec<u64> {
    list["vehicles"].as_array().into_iter().flatten().filter_map(|v| v["obu_id"].as_u64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_documented_4xx() {
    let (_broker, _topics, _db, tracker) = fleet().await;
    let now = now_ms();
    let cases: Vec<(String, u16, &str, String)> = vec![
        ("/api/vehicles/abc".into(), 400, "invalid_id", "`abc` is not an obu_id: expected an integer from 0 to 9223372036854775807".into()),
        ("/api/vehicles/-1".into(), 400, "invalid_id", "`-1` is not an obu_id".into()),
        ("/api/vehicles/1.5/track".into(), 400, "invalid_id", "`1.5` is not an obu_id".into()),
        ("/api/vehicles/18446744073709551615".into(), 400, "invalid_id", "is not an obu_id".into()),
        ("/api/vehicles/999".into(), 404, "not_found", "no vehicle with obu_id 999".into()),
        ("/api/vehicles/999/track".into(), 404, "not_found", "no vehicle with obu_id 999".into()),
        ("/api/vehicles/1/track?from=yesterday".into(), 400, "invalid_time", "`from` must be Unix milliseconds, an RFC 3339 UTC time".into()),
        ("/api/vehicles/1/track?to=2026-13-45T99:00:00Z".into(), 400, "invalid_time", "`to` must be Unix milliseconds".into()),
        ("/api/vehicles/1/track?from=-5".into(), 400, "invalid_time", "(negative timestamp)".into()),
        (format!("/api/vehicles/1/track?from={}&to={}", now, now - 60_000), 400, "invalid_range", format!("`from` ({now}) is after `to` ({})", now - 60_000)),
        ("/api/vehicles/1/track?from=-5m&to=-10m".into(), 400, "invalid_range", "is after `to`".into()),
        ("/api/vehicles/1/track?from=0".into(), 400, "range_too_large", "at most 1day can be asked at once".into()),
        ("/api/vehicles/1/track?from=-25h".into(), 400, "range_too_large", "the range spans 1day 1h".into()),
        ("/api/vehicles/1/track?limit=0".into(), 400, "invalid_limit", "`limit` must be an integer from 1 to 10000, got `0`".into()),
        ("/api/vehicles/1/track?limit=10001".into(), 400, "invalid_limit", "got `10001`".into()),
        ("/api/vehicles/1/track?since=-5m".into(), 400, "unknown_parameter", "unknown parameter `since`; expected from, to, limit".into()),
        ("/api/vehicles/1/track?from=-5m&from=-6m".into(), 400, "duplicate_parameter", "parameter `from` is given more than once".into()),
        ("/api/vehicles/1?verbose=1".into(), 400, "unknown_parameter", "unknown parameter `verbose`; this endpoint takes none".into()),
        ("/api/vehicles?bbox=1,2,3".into(), 400, "invalid_bbox", "`bbox` must be min_lon,min_lat,max_lon,max_lat in degrees; got 3 values".into()),
        ("/api/vehicles?bbox=13,53,14,52".into(), 400, "invalid_bbox", "min_lat 53 is above max_lat 52".into()),
        ("/api/vehicles?bbox=13,52,200,53".into(), 400, "invalid_bbox", "longitude 200 is outside [-180, 180]".into()),
        ("/api/vehicles?online=maybe".into(), 400, "invalid_parameter", "`online` must be true or false, got `maybe`".into()),
        ("/api/nothing-here".into(), 404, "not_found", "no such endpoint: GET /api/nothing-here".into()),
    ];
    for (path, status, code, message) in &cases {
        let (got_status, body) = tracker.get(path).await;
        assert_eq!(got_status, *status, "{path}: {body}");
        assert_eq!(body["error"].as_str(), Some(*code), "{path}: {body}");
        let text = body["message"].as_str().unwrap_or_else(|| panic!("{path}: an error body has a message: {body}"));
        assert!(text.contains(message.as_str()), "{path}: message {text:?} lacks {message:?}");
    }
    // The method is checked too.
    let post = tracker.http.post(tracker.url("/api/vehicles")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(post.status().as_u16(), 405);

    // Counted by route template, never by raw path.
    let count = |route: &str, status: &str| metric_with(&tracker, route, status);
    assert_eq!(count("/api/vehicles/{id}", "404"), 1.0);
    assert_eq!(count("/api/vehicles/{id}", "400"), 4.0);
    assert_eq!(count("/api/vehicles/{id}/track", "404"), 1.0);
    assert_eq!(count("/api/vehicles/{id}/track", "400"), 12.0);
    assert_eq!(count("unmatched", "404"), 1.0);
    let (status, metrics) = tracker.get_text("/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    assert!(!metrics.contains("/api/vehicles/999"), "no raw paths in labels");
}

fn metric_with(tracker: &TestTracker, route: &str, status: &str) -> f64 {
    let text = fleetstream_core::telemetry::render(&tracker.metrics.registry);
    text.lines()
        .filter(|l| l.starts_with("fleetstream_tracker_api_requests_total{"))
        .filter(|l| l.contains(&format!("route=\"{route}\"")) && l.contains(&format!("status=\"{status}\"")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vehicles_filter_by_bounding_box_and_online_status() {
    let (_broker, _topics, _db, tracker) = fleet().await;
    assert_eq!(ids(&tracker.get_ok("/api/vehicles").await), vec![1, 2, 3, 4, 5]);
    let berlin = tracker.get_ok("/api/vehicles?bbox=13.0,52.3,13.8,52.7").await;
    assert_eq!((ids(&berlin), berlin["count"].as_u64()), (vec![1, 2, 5], Some(3)));
    let madrid = tracker.get_ok("/api/vehicles?bbox=-4,40,-3,41").await;
    assert_eq!(ids(&madrid), vec![3]);
    // Across the antimeridian: from 179 E eastwards to 179 W.
    let pacific = tracker.get_ok("/api/vehicles?bbox=179,-18,-179,-16").await;
    assert_eq!(ids(&pacific), vec![4]);
    let online = tracker.get_ok("/api/vehicles?online=true").await;
    assert_eq!(ids(&online), vec![1, 2, 3, 4]);
    let offline = tracker.get_ok("/api/vehicles?online=false&bbox=13.0,52.3,13.8,52.7").await;
    assert_eq!(ids(&offline), vec![5]);
    let silent = &offline["vehicles"][0];
    assert_eq!(silent["online"], false);
    assert!(silent["age_ms"].as_i64().is_some_and(|a| a >= 2 * 3_600_000), "{silent}");
    assert_eq!(offline["online_timeout_ms"], 60_000);
    // Times in every documented form select the same points.
    let track = tracker.get_ok("/api/vehicles/5/track?from=-3h&to=now").await;
    let ts = |i: usize| track["points"][i]["ts"].as_i64().unwrap_or_else(|| panic!("point {i} has a ts: {track}"));
    let (first, last) = (ts(0), ts(4));
    assert_eq!(seqs(&track), vec![1, 2, 3, 4, 5]);
    let rfc = |ms: i64| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string();
    let by_rfc = tracker.get_ok(&format!("/api/vehicles/5/track?from={}&to={}", rfc(first), rfc(last))).await;
    assert_eq!(seqs(&by_rfc), vec![1, 2, 3, 4, 5]);
    assert_eq!((by_rfc["from"].as_i64(), by_rfc["to"].as_i64()), (Some(first), Some(last)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_pushes_new_positions_as_they_are_stored() {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    let positions = drive(7, 6, 1_000, 52.5, 13.4);
    produce_positions(&producer, &topics.positions, &positions[..3]).await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 3.0).await;

    let mut feed = tracker.http.get(tracker.url("/api/live")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(feed.status().as_u16(), 200);
    assert_eq!(feed.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    assert_eq!(tracker.metric("fleetstream_tracker_live_clients", None), 1.0);

    // A replay of stored positions is not news; the three new ones are, in order.
    produce_positions(&producer, &topics.positions, &positions[..3]).await;
    produce_positions(&producer, &topics.positions, &positions[3..]).await;
    let mut text = String::new();
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let events = parse_sse(&text);
            if events.iter().filter(|(e, _)| e == "position").count() >= 3 {
                return events;
            }
            match feed.chunk().await {
                Ok(Some(bytes)) => text.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return events,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no three events within 60 s; got {text:?}"));
    let events: Vec<serde_json::Value> = got
        .iter()
        .filter(|(e, _)| e == "position")
        .map(|(_, d)| serde_json::from_str(d).unwrap_or_else(|e| panic!("a position event carries JSON ({e}): {d}")))
        .collect();
    let id = |v: &serde_json::Value, field: &str| v[field].as_u64().unwrap_or_else(|| panic!("a position event has {field}: {v}"));
    let positions_seen: Vec<(u64, u64)> = events.iter().map(|v| (id(v, "obu_id"), id(v, "seq"))).collect();
    assert_eq!(positions_seen, vec![(7, 4), (7, 5), (7, 6)]);
    let first = &events[0];
    assert!(near(&first["lat"], positions[3].lat) && first["out_of_order"] == false, "{first}");
    assert!(text.starts_with("retry: 2000\n") || text.contains("retry: 2000"), "{text:?}");

    drop(feed);
    let gone = eventually(Duration::from_secs(30), || async { tracker.metric("fleetstream_tracker_live_clients", None) == 0.0 }).await;
    assert!(gone, "the gauge drops when the client leaves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &["--tile-url=http://127.0.0.1:9/{z}/{x}/{y}.png", "--trail=5m"]).await;
    let get = |path: &'static str| {
        let http = tracker.http.clone();
        let url = tracker.url(path);
        async move {
            let r = http.get(url).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
            let ty = r.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
            (r.status().as_u16(), ty, r.bytes().await.unwrap_or_else(|e| panic!("GET {path}: reading the body: {e}")))
        }
    };
    let (status, ty, body) = get("/").await;
    assert_eq!((status, ty.as_deref()), (200, Some("text/html; charset=utf-8")));
    let html = String::from_utf8_lossy(&body);
    assert!(html.contains("/static/vendor/leaflet/leaflet.js") && html.contains("/static/app.js"), "{html}");
    let (status, ty, body) = get("/static/vendor/leaflet/leaflet.js").await;
    assert_eq!((status, ty.as_deref()), (200, Some("text/javascript; charset=utf-8")));
    assert!(String::from_utf8_lossy(&body[..200]).contains("Leaflet 1.9.4"));
    let (status, ty, _) = get("/static/vendor/leaflet/images/layers.png").await;
    assert_eq!((status, ty.as_deref()), (200, Some("image/png")));
    let (status, _, _) = get("/static/nope.js").await;
    assert_eq!(status, 404);
    let config = tracker.get_ok("/api/config").await;
    assert_eq!(config["tile_url"], "http://127.0.0.1:9/{z}/{x}/{y}.png");
    assert_eq!((config["trail_ms"].as_i64(), config["online_timeout_ms"].as_i64()), (Some(300_000), Some(60_000)));
    let (status, _, body) = get("/healthz").await;
    assert_eq!((status, String::from_utf8_lossy(&body).trim()), (200, "ok"));
    let (_, _, body) = get("/metrics").await;
    let text = String::from_utf8_lossy(&body);
    for name in [
        "fleetstream_tracker_positions_consumed_total",
        "fleetstream_tracker_positions_written_total",
        "fleetstream_tracker_duplicates_skipped_total",
        "fleetstream_tracker_batch_size",
        "fleetstream_tracker_flush_seconds",
        "fleetstream_tracker_live_clients",
        "fleetstream_tracker_retention_pruned_total",
        "fleetstream_tracker_vehicles",
        "fleetstream_tracker_api_requests_total",
        "fleetstream_tracker_db_errors_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}
