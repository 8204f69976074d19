//! The API under attack (issue 14; docs/security.md, "Attack battery"): every route with every
//! method from a stranger and a viewer, odd credentials, huge and malformed parameters, path
//! traversal on the page's files. Every answer is a 4xx, the API's JSON error where the API
//! answers, never a 5xx and never data. (auth.rs has each route's 401/403 with and without
//! tokens; api.rs the documented parameter errors.)

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

/// Every route of the tracker's router (lib.rs) and the methods it serves; HEAD goes with GET.
const ROUTES: &[(&str, &[Method])] = &[
    ("/api/config", &[Method::GET]),
    ("/api/vehicles", &[Method::GET]),
    ("/api/vehicles/1", &[Method::GET, Method::DELETE]),
    ("/api/vehicles/1/track", &[Method::GET]),
    ("/api/vehicles/1/events", &[Method::GET]),
    ("/api/vehicles/1/trips", &[Method::GET]),
    ("/api/events", &[Method::GET]),
    ("/api/geofences", &[Method::GET, Method::POST]),
    ("/api/geofences/f1", &[Method::GET, Method::PUT, Method::DELETE]),
    ("/api/live", &[Method::GET]),
    ("/api/events/live", &[Method::GET]),
];

const METHODS: &[Method] = &[Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS];

/// A tracker holding vehicle 1's positions.
async fn tracker_with_a_vehicle() -> (fleetstream_testkit::Broker, Db, TestTracker) {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    produce_positions(&producer, &topics.positions, &drive(1, 3, 1_000, 52.5, 13.4)).await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 3.0).await;
    (broker, db, tracker)
}

/// Sends a request with `authorization` (if any) and a JSON body for writes; the status, the
/// `WWW-Authenticate` header and the body. Feeds answer 200 with an endless stream: their body
/// is not read then.
async fn ask(tracker: &TestTracker, method: &Method, path: &str, authorization: Option<HeaderValue>) -> (u16, String, String) {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(AUTHORIZATION, value);
    }
    let mut request = client(None).request(method.clone(), tracker.url(path)).headers(headers).timeout(Duration::from_secs(10));
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        request = request.header("content-type", "application/json").body(r#"{"type":"Feature"}"#);
    }
    let r = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = r.status().as_u16();
    let challenge = r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = if status == 200 { String::new() } else { r.text().await.unwrap_or_default() };
    (status, challenge, body)
}

/// GET with the admin token: the status and the body, or why there was no answer.
async fn get(tracker: &TestTracker, path: &str) -> Result<(u16, String), reqwest::Error> {
    let r = tracker.http.get(tracker.url(path)).timeout(Duration::from_secs(10)).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await?))
}

/// API answers (by route template, /api only) whose status starts with `class`.
fn api_answers(tracker: &TestTracker, class: char) -> f64 {
    fleetstream_core::telemetry::render(&tracker.metrics.registry)
        .lines()
        .filter(|l| l.starts_with("fleetstream_tracker_api_requests_total{") && l.contains("route=\"/api"))
        .filter(|l| l.contains(&format!("status=\"{class}")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

fn bearer(token: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|e| panic!("{e}")))
}

/// A JSON error body with this code and a message.
fn api_error(body: &str, code: &str, what: &str) {
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not a JSON error ({e}): {body:.200}"));
    assert_eq!(json["error"], code, "{what}: {body:.300}");
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body:.300}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_method_refuses_strangers_and_viewers_get_no_more_than_reads() {
    let (_broker, _db, tracker) = tracker_with_a_vehicle().await;
    for (path, served) in ROUTES {
        for method in METHODS {
            let routed = served.contains(method) || (*method == Method::HEAD && served.contains(&Method::GET));
            let what = format!("{method} {path}");
            // The token is checked first, whatever the method: a stranger learns nothing.
            let (status, challenge, body) = ask(&tracker, method, path, None).await;
            assert_eq!(status, 401, "{what} without a token: {body}");
            assert!(challenge.starts_with("Bearer"), "{what}: WWW-Authenticate {challenge:?}");
            if *method != Method::HEAD {
                api_error(&body, "unauthorized", &what);
            }
            if matches!(*method, Method::GET | Method::HEAD) {
                continue;
            }
            // Anything but reading needs an admin, served or not.
            let (status, _, body) = ask(&tracker, method, path, bearer(VIEWER_TOKEN)).await;
            assert_eq!(status, 403, "{what} as a viewer: {body}");
            api_error(&body, "forbidden", &what);
            if !routed {
                let (status, _, body) = ask(&tracker, method, path, bearer(ADMIN_TOKEN)).await;
                assert_eq!((status, body.as_str()), (405, ""), "{what} as an admin");
            }
        }
    }
    // No API route answered a stranger or a viewer with data, and none failed.
    assert_eq!((api_answers(&tracker, '2'), api_answers(&tracker, '5')), (0.0, 0.0), "no 2xx and no 5xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_credentials_are_refused_with_401() {
    let (_broker, _db, tracker) = tracker_with_a_vehicle().await;
    let long = "t".repeat(64 * 1024);
    let cases: Vec<(&str, Option<HeaderValue>, &str)> = vec![
        ("another scheme", Some(HeaderValue::from_static("Basic dXNlcjpzM2NyZXQ=")), "unauthorized"),
        ("the scheme alone", Some(HeaderValue::from_static("Bearer")), "unauthorized"),
        ("a blank token", Some(HeaderValue::from_static("Bearer    ")), "unauthorized"),
        ("bytes that are not UTF-8", Some(HeaderValue::from_bytes(b"Bearer \xff\xfe\xfd").unwrap_or_else(|e| panic!("{e}"))), "unauthorized"),
        ("a 64 KiB token", bearer(&long), "invalid_token"),
        ("a token's prefix", bearer(&VIEWER_TOKEN[..VIEWER_TOKEN.len() - 1]), "invalid_token"),
        ("a token with a trailing character", bearer(&format!("{VIEWER_TOKEN}x")), "invalid_token"),
    ];
    for (what, authorization, code) in cases {
        for (method, path) in [(Method::GET, "/api/vehicles"), (Method::DELETE, "/api/geofences/f1")] {
            let (status, challenge, body) = ask(&tracker, &method, path, authorization.clone()).await;
            let what = format!("{method} {path} with {what}");
            assert_eq!(status, 401, "{what}: {body:.300}");
            assert!(challenge.starts_with("Bearer"), "{what}");
            api_error(&body, code, &what);
            assert!(!body.contains("ttttttttttttttttt"), "{what}: the refusal echoes the token");
        }
    }
    // An admin's token in the query string is for the feeds only.
    let (status, _, body) = ask(&tracker, &Method::DELETE, &format!("/api/geofences/f1?access_token={ADMIN_TOKEN}"), None).await;
    assert_eq!(status, 401, "{body}");
    // Counted: 4 kinds without a usable token and the query string; 3 unknown tokens; 2 routes each.
    let refused = |reason| tracker.metric("fleetstream_tracker_api_auth_refused_total", Some(("reason", reason)));
    assert_eq!((refused("missing"), refused("invalid"), refused("forbidden")), (9.0, 6.0, 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_malformed_parameters_get_a_clear_400() {
    let (_broker, _db, tracker) = tracker_with_a_vehicle().await;
    // Long, but within hyper's limit on a request target (64 KiB): the API's own answer.
    let long = "x".repeat(60_000);
    let nines = "9".repeat(1000);
    let max = i64::MAX;
    // (path, error code, a fragment of the message)
    let cases: Vec<(String, &str, &str)> = vec![
        // Huge.
        (format!("/api/vehicles/1/track?from={long}"), "invalid_time", "`from` must be Unix milliseconds"),
        (format!("/api/vehicles/1/track?limit={nines}"), "invalid_limit", "`limit` must be an integer from 1 to 10000"),
        (format!("/api/events?limit={nines}"), "invalid_limit", "from 1 to 1000"),
        ("/api/vehicles/1/track?from=99999999999999999999999".into(), "invalid_time", "(too large)"),
        ("/api/events?to=-99999999999999999999h".into(), "invalid_time", "`to` must be"),
        ("/api/events?obu_id=99999999999999999999".into(), "invalid_id", "is not an obu_id"),
        (format!("/api/vehicles/{nines}"), "invalid_id", "is not an obu_id"),
        ("/api/vehicles?bbox=1e309,0,1,1".into(), "invalid_bbox", "`1e309` is not a number"),
        (format!("/api/vehicles?bbox={}", "1,".repeat(10_000)), "invalid_bbox", "got 10001 values"),
        (format!("/api/events?type={}", "trip,".repeat(10_000)), "invalid_type", "unknown event type ``"),
        (format!("/api/events?{}", (0..5_000).map(|i| format!("p{i}=1")).collect::<Vec<_>>().join("&")), "unknown_parameter", "unknown parameter `p0`"),
        // The widest range there is: from long before 1970 to the end of time, not a wrap-around.
        (format!("/api/vehicles/1/track?from=-100000000000h&to={max}"), "range_too_large", "at most 1day can be asked at once"),
        (format!("/api/vehicles/1/track?from=0&to={max}"), "range_too_large", "at most 1day"),
        // Negative.
        ("/api/vehicles/1/track?limit=-1".into(), "invalid_limit", "got `-1`"),
        ("/api/events?limit=-5".into(), "invalid_limit", "got `-5`"),
        ("/api/vehicles/1/trips?limit=0".into(), "invalid_limit", "got `0`"),
        ("/api/vehicles/-1/events".into(), "invalid_id", "`-1` is not an obu_id"),
        ("/api/events?from=-9223372036854775808".into(), "invalid_time", "(negative timestamp)"),
        // Reversed ranges, on every route that takes one.
        (format!("/api/events?from={max}&to=-5m"), "invalid_range", "is after `to`"),
        ("/api/vehicles/1/events?from=now&to=-1h".into(), "invalid_range", "is after `to`"),
        ("/api/vehicles/1/trips?from=now&to=-1h".into(), "invalid_range", "is after `to`"),
        // Not UTF-8 once percent-decoded, or not percent-encoding at all.
        ("/api/events?from=%ff%fe".into(), "invalid_time", "`from` must be"),
        ("/api/events?%ff%fe=1".into(), "unknown_parameter", "unknown parameter"),
        ("/api/events?from=%zz".into(), "invalid_time", "got `%zz`"),
        ("/api/vehicles/%ff%fe".into(), "invalid_id", "the vehicle id cannot be read"),
        ("/api/vehicles/%ff/track".into(), "invalid_id", "the vehicle id cannot be read"),
        ("/api/geofences/%c3%28".into(), "invalid_id", "the geofence id cannot be read"),
    ];
    for (path, code, fragment) in &cases {
        let shown = &path[..path.len().min(80)];
        let (status, body) = get(&tracker, path).await.unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(status, 400, "{shown}: {body:.300}");
        api_error(&body, code, shown);
        assert!(body.contains(fragment), "{shown}: {body:.300} lacks {fragment:?}");
    }
    // Past hyper's limits the server itself answers: 414 for a target over 64 KiB, 431 past its
    // buffer (about 400 KB). (HTTP client libraries refuse to send these: written by hand.)
    for (size, expected) in [(70_000, 414), (1 << 20, 431)] {
        let url = tracker.url(&format!("/api/events?from={}", "x".repeat(size)));
        let answer = fleetstream_testkit::http_get(&url).await.map(|(status, _)| status);
        assert_eq!(answer.ok(), Some(expected), "a request target of {size} bytes");
    }
    assert_eq!(api_answers(&tracker, '5'), 0.0, "none of it was an error of the tracker's own");
    assert_eq!(tracker.get_ok("/api/vehicles/1/track").await["count"], 3, "and the API still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_on_the_pages_files_finds_nothing() {
    let (_broker, _db, tracker) = tracker_with_a_vehicle().await;
    // Sent as written (an HTTP client would resolve the dots before sending).
    let paths = [
        "/static/../../../../etc/passwd",
        "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fCargo.toml",
        "/static/..%5c..%5c..%5c..%5cetc%5cpasswd",
        "/static/%252e%252e%252fetc%252fpasswd",
        "/static/....//....//....//etc/passwd",
        "/static/vendor/leaflet/../../../../../../etc/passwd",
        "/static//etc/passwd",
        "/static/app.js%00.png",
        "/static/%00",
        "/static/../src/lib.rs",
        "/static/../static/app.js",
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "/static/..\\..\\..\\etc\\passwd",
    ];
    for path in paths {
        let (status, body) = fleetstream_testkit::http_get(&tracker.url(path)).await.unwrap_or_else(|e| panic!("{path}: {e:#}"));
        assert!(status == 404 || status == 400, "{path}: {status} {body:.300}");
        for leaked in ["root:", "[package]", "//!", "fleetstream", "L.map", "function"] {
            assert!(!body.contains(leaked), "{path}: the answer holds file contents ({leaked:?}): {body:.300}");
        }
        if status == 404 {
            api_error(&body, "not_found", path);
        }
    }
    // The files themselves are there.
    let (status, body) = fleetstream_testkit::http_get(&tracker.url("/static/app.js")).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200);
    assert!(body.contains("function"), "app.js is served");
}
