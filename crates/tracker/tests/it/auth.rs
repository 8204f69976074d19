//! The API's tokens: every /api route refuses a request without a valid token (401, with
//! `WWW-Authenticate: Bearer`), a viewer token reads but may not write (403), an admin token
//! does both; `sha256:` entries work; the live feeds take `?access_token=`. No token value shows
//! in a refusal, in /metrics, in `--help` or in the logs of a real tracker process.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use fleetstream_testkit::{eventually, unique};

use crate::helpers::*;

/// Every read route (the fence `f1` and vehicle 1 exist when they are asked for).
const READS: &[&str] = &[
    "/api/config",
    "/api/vehicles",
    "/api/vehicles/1",
    "/api/vehicles/1/track",
    "/api/vehicles/1/events",
    "/api/vehicles/1/trips",
    "/api/events",
    "/api/geofences",
    "/api/geofences/f1",
    "/api/live",
    "/api/events/live",
];

fn fence(id: Option<&str>) -> String {
    let mut f = json!({
        "type": "Feature",
        "properties": {"name": "Yard"},
        "geometry": {"type": "Polygon", "coordinates": [[[13.40, 52.50], [13.42, 52.50], [13.42, 52.52], [13.40, 52.50]]]}
    });
    if let Some(id) = id {
        f["id"] = json!(id);
    }
    f.to_string()
}

/// Every write route, with a body that would succeed.
fn writes() -> Vec<(Method, &'static str, Option<String>)> {
    vec![
        (Method::POST, "/api/geofences", Some(fence(None))),
        (Method::PUT, "/api/geofences/f2", Some(fence(None))),
        (Method::DELETE, "/api/geofences/f2", None),
    ]
}

async fn send(http: &reqwest::Client, url: String, method: Method, body: Option<&str>) -> reqwest::Response {
    let mut request = http.request(method.clone(), &url);
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// A 401 or 403 with the API's error shape and a Bearer challenge; returns the body.
async fn refused(r: reqwest::Response, status: u16, code: &str, what: &str) -> String {
    assert_eq!(r.status().as_u16(), status, "{what}");
    let challenge = r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(challenge.starts_with("Bearer realm="), "{what}: WWW-Authenticate {challenge:?}");
    let text = r.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(body["error"], code, "{what}: {text}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_needs_a_token_and_writes_need_an_admin() {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    // A third token, stored only as its hash, from a file (together with --api-tokens).
    let hashed = "it-hashed-admin-0c7d3e5f";
    let file = std::env::temp_dir().join(format!("{}.tokens", unique("tracker-api")));
    std::fs::write(&file, format!("# stored hashed\nsha256:{} admin\n", fleetstream_core::tokens::hash_hex(hashed))).expect("the tokens file is written");
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[&format!("--api-tokens-file={}", file.display())]).await;
    let producer = broker.producer().unwrap_or_else(|e| panic!("{e}"));
    produce_positions(&producer, &topics.positions, &drive(1, 3, 1_000, 52.5, 13.4)).await;
    tracker.wait_metric("fleetstream_tracker_positions_written_total", 3.0).await;
    let loaded = eventually(Duration::from_secs(60), || async { tracker.get("/api/geofences").await.0 == 200 }).await;
    assert!(loaded, "the geofences were loaded");
    let (status, _, text) = tracker.call(Method::PUT, "/api/geofences/f1", Some(&fence(None))).await;
    assert_eq!(status, 201, "{text}");

    let (anonymous, viewer, wrong, hashed_admin) = (client(None), client(Some(VIEWER_TOKEN)), client(Some("not-a-token-s3cret")), client(Some(hashed)));
    let mut all: Vec<(Method, &str, Option<String>)> = READS.iter().map(|p| (Method::GET, *p, None)).collect();
    all.extend(writes());
    for (method, path, body) in &all {
        let what = format!("{method} {path}");
        let r = send(&anonymous, tracker.url(path), method.clone(), body.as_deref()).await;
        refused(r, 401, "unauthorized", &format!("{what} without a token")).await;
        let r = send(&wrong, tracker.url(path), method.clone(), body.as_deref()).await;
        let text = refused(r, 401, "invalid_token", &format!("{what} with an unknown token")).await;
        assert!(!text.contains("s3cret"), "the refusal does not echo the token: {text}");
    }

    // A viewer reads everything...
    for path in READS {
        let r = send(&viewer, tracker.url(path), Method::GET, None).await;
        assert_eq!(r.status().as_u16(), 200, "GET {path} as a viewer");
    }
    // ...and writes nothing; an admin writes (the hashed entry is an admin).
    for (method, path, body) in writes() {
        let r = send(&viewer, tracker.url(path), method.clone(), body.as_deref()).await;
        refused(r, 403, "forbidden", &format!("{method} {path} as a viewer")).await;
        let r = send(&hashed_admin, tracker.url(path), method.clone(), body.as_deref()).await;
        let status = r.status().as_u16();
        assert!((200..300).contains(&status), "{method} {path} as an admin: {status} {}", r.text().await.unwrap_or_default());
    }

    // The refusals are counted by reason; /metrics holds no token.
    let n = all.len() as f64;
    assert_eq!(tracker.metric("fleetstream_tracker_api_auth_refused_total", Some(("reason", "missing"))), n);
    assert_eq!(tracker.metric("fleetstream_tracker_api_auth_refused_total", Some(("reason", "invalid"))), n);
    assert_eq!(tracker.metric("fleetstream_tracker_api_auth_refused_total", Some(("reason", "forbidden"))), 3.0);
    let (status, metrics) = tracker.get_text("/metrics").await;
    assert_eq!(status, 200);
    for secret in [ADMIN_TOKEN, VIEWER_TOKEN, hashed, "s3cret"] {
        assert!(!metrics.contains(secret), "/metrics shows a token");
    }
    // The page, its assets and the ops endpoints stay open.
    for path in ["/", "/static/app.js", "/metrics", "/healthz", "/readyz"] {
        let r = send(&anonymous, tracker.url(path), Method::GET, None).await;
        assert_eq!(r.status().as_u16(), 200, "GET {path} without a token");
    }
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feeds_take_the_token_in_the_query_string() {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let anonymous = client(None);
    for feed in ["/api/live", "/api/events/live"] {
        let r = send(&anonymous, tracker.url(feed), Method::GET, None).await;
        refused(r, 401, "unauthorized", feed).await;
        let r = send(&anonymous, tracker.url(&format!("{feed}?access_token=nope")), Method::GET, None).await;
        refused(r, 401, "invalid_token", feed).await;
        let r = send(&anonymous, tracker.url(&format!("{feed}?access_token={VIEWER_TOKEN}")), Method::GET, None).await;
        assert_eq!(r.status().as_u16(), 200, "{feed} with ?access_token=");
        assert_eq!(r.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    }
    // Only the feeds: the other routes want the header.
    let r = send(&anonymous, tracker.url(&format!("/api/vehicles?access_token={VIEWER_TOKEN}")), Method::GET, None).await;
    refused(r, 401, "unauthorized", "/api/vehicles with ?access_token=").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    let tracker = TestTracker::spawn(&broker, &topics, &db, &[]).await;
    let huge = format!("{{\"type\":\"Feature\",\"properties\":{{\"name\":\"{}\"}}}}", "x".repeat(2 << 20));
    let (status, _, text) = tracker.call(Method::PUT, "/api/geofences/big", Some(&huge)).await;
    assert_eq!(status, 413, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(body["error"], "body_too_large", "{text}");
}

/// A real tracker process, with debug logs, asked with right and wrong tokens: no token in its
/// output; `--help` shows no value of TRACKER_API_TOKENS; a bad entry's error quotes no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_appears_in_logs_help_or_errors() {
    let (broker, topics) = broker_and_topics(1).await;
    let db = Db::new(Backend::Sqlite);
    let secret = "it-process-admin-77aa0b3c";
    let wrong = "it-wrong-token-e1f0c2d4";
    let bin = env!("CARGO_BIN_EXE_tracker");

    let help = Command::new(bin).arg("--help").env("TRACKER_API_TOKENS", format!("{secret} admin")).output().expect("tracker --help runs");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--api-tokens") && !help.contains(secret), "{help}");

    // An entry with its fields swapped: the error names the line, not the token.
    let bad = Command::new(bin).env("TRACKER_API_TOKENS", format!("admin {secret}")).output().expect("the tracker runs");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("unknown role") && !stderr.contains(secret), "{stderr}");
    let none = Command::new(bin).env_remove("TRACKER_API_TOKENS").env_remove("TRACKER_API_TOKENS_FILE").output().expect("the tracker runs");
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success() && stderr.contains("no API token configured"), "{stderr}");

    let mut args = flags(&broker, &topics, &db.url, &unique("tracker"));
    args.retain(|a| !a.starts_with("--api-tokens=") && !a.starts_with("--listen=") && !a.starts_with("--log-level="));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("its address").port();
    drop(listener);
    args.push(format!("--listen=127.0.0.1:{port}"));
    args.push("--log-level=debug".into());
    let mut child = Command::new(bin)
        .args(&args[1..])
        .env("TRACKER_API_TOKENS", format!("{secret} admin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tracker starts");
    let base = format!("http://127.0.0.1:{port}");
    let anonymous = client(None);
    let ready = eventually(Duration::from_secs(60), || async {
        anonymous.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    for (token, path) in [(secret, "/api/vehicles"), (wrong, "/api/vehicles"), (secret, "/api/geofences/x"), (wrong, "/api/geofences/x")] {
        let _ = client(Some(token)).get(format!("{base}{path}")).send().await;
        let _ = client(Some(token)).delete(format!("{base}{path}")).send().await;
    }
    for token in [secret, wrong] {
        let _ = anonymous.get(format!("{base}/api/live?access_token={token}")).timeout(Duration::from_millis(300)).send().await;
    }
    let metrics = anonymous.get(format!("{base}/metrics")).send().await.expect("/metrics answers").text().await.unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().map(|mut s| s.read_to_string(&mut out));
    child.stderr.take().map(|mut s| s.read_to_string(&mut err));
    assert!(ready, "the tracker became ready: {err}");
    let logs = format!("{out}{err}");
    assert!(logs.contains("API tokens loaded"), "debug logs were captured: {logs}");
    assert!(metrics.contains("fleetstream_tracker_api_auth_refused_total"), "{metrics}");
    for token in [secret, wrong] {
        assert!(!logs.contains(token), "a token is in the logs: {logs}");
        assert!(!metrics.contains(token), "a token is in /metrics");
    }
}
