use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;
use rdkafka::producer::FutureProducer;
use serde_json::Value;

use fleetstream_core::events::{Event, EventKind, Trip};
use fleetstream_core::{now_ms, ProcessedPosition, VehicleLatest};
use fleetstream_testkit::postgres::Postgres;
use fleetstream_testkit::{eventually, unique, Broker, Running, Topics};
use fleetstream_tracker::{Application, Config, Metrics, Store};

/// The two storage backends every storage test runs against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database of one backend. Deleted (or its server stopped) on drop.
pub struct Db {
    pub url: String,
    pub pg: Option<Postgres>,
    file: Option<PathBuf>,
}

impl Db {
    pub fn new(backend: Backend) -> Db {
        match backend {
            Backend::Sqlite => {
                let file = std::env::temp_dir().join(format!("{}.db", unique("tracker")));
                Db { url: format!("sqlite://{}", file.display()), pg: None, file: Some(file) }
            }
            Backend::Postgres => {
                let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
                let url = pg.create_database("tracker").unwrap_or_else(|e| panic!("{e:#}"));
                Db { url, pg: Some(pg), file: None }
            }
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", f.display()));
            }
        }
    }
}

/// A tracker running in this process on a free port.
pub struct TestTracker {
    pub port: u16,
    pub metrics: Metrics,
    pub store: Store,
    pub http: reqwest::Client,
    running: Running,
}

/// The admin token every test tracker accepts (and its HTTP client sends).
pub const ADMIN_TOKEN: &str = "it-admin-9f2c61d0e7b54a38";
/// The viewer token every test tracker accepts.
pub const VIEWER_TOKEN: &str = "it-viewer-4be07c1a93d2f586";

/// The flags every test tracker gets.
pub fn flags(broker: &Broker, topics: &Topics, db: &str, group: &str) -> Vec<String> {
    vec![
        "tracker".into(),
        format!("--kafka-brokers={}", broker.brokers()),
        "--listen=127.0.0.1:0".into(),
        format!("--database-url={db}"),
        format!("--group-id={group}"),
        format!("--positions-topic={}", topics.positions),
        format!("--latest-topic={}", topics.latest),
        format!("--events-topic={}", topics.events),
        format!("--geofences-topic={}", topics.geofences),
        "--flush-interval=200ms".into(),
        format!("--api-tokens={ADMIN_TOKEN} admin; {VIEWER_TOKEN} viewer"),
        // No tiles: nothing may leave 127.0.0.1 in tests.
        "--tile-url=".into(),
        // Brokers and databases die with each test while its tracker stops, and the outage
        // test stops one on purpose: their clients' complaints are expected noise here.
        "--log-level=warn,librdkafka=off,rdkafka=off,deadpool=off".into(),
    ]
}

impl TestTracker {
    pub async fn spawn(broker: &Broker, topics: &Topics, db: &Db, extra: &[&str]) -> TestTracker {
        Self::spawn_in_group(broker, topics, db, &unique("tracker"), extra).await
    }

    pub async fn spawn_in_group(broker: &Broker, topics: &Topics, db: &Db, group: &str, extra: &[&str]) -> TestTracker {
        let mut args = flags(broker, topics, &db.url, group);
        // An extra flag replaces the default of the same name (clap takes each flag once).
        let name = |s: &str| s.split_once('=').map_or(s, |(name, _)| name).to_string();
        args.retain(|a| !extra.iter().any(|e| name(e) == name(a)));
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = Config::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
        fleetstream_core::telemetry::init(&config.log);
        let app = Application::build(config).await.unwrap_or_else(|e| panic!("tracker: {e:#}"));
        let (port, metrics, store) = (app.port(), app.metrics(), app.store());
        let running = Running::spawn(metrics.registry.clone(), |stop| app.run_until_stopped(stop));
        let http = client(Some(ADMIN_TOKEN));
        let t = TestTracker { port, metrics, store, http, running };
        t.wait_ready().await;
        t
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET, returning the status and the body as text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.http.get(self.url(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_else(|e| panic!("GET {path}: reading the body: {e}"));
        (status, body)
    }

    /// GET, returning the status and the body as JSON (Null if it is not JSON, as the body of
    /// `/readyz` is not).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get_text(path).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Any request (`body` as JSON text, if any), returning the status, the headers and the body
    /// as text.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
        let mut request = self.http.request(method.clone(), self.url(path));
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let r = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let text = r.text().await.unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
        (status, headers, text)
    }

    /// GET, expecting 200 and a JSON body.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get_text(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: the body is not JSON ({e}): {body}"))
    }

    async fn wait_ready(&self) {
        let ok = eventually(Duration::from_secs(60), || async {
            self.http.get(self.url("/readyz")).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(ok, "the tracker did not become ready");
    }

    pub fn metric(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        metric(&self.metrics, name, label)
    }

    /// Waits until `name` reaches `at_least`; panics with the value it got stuck at.
    pub async fn wait_metric(&self, name: &str, at_least: f64) {
        let reached = eventually(Duration::from_secs(60), || async { self.metric(name, None) >= at_least }).await;
        assert!(reached, "{name} stayed at {} (expected {at_least})", self.metric(name, None));
    }

    /// Graceful shutdown, as on SIGTERM; returns what run_until_stopped returned.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.running.shutdown().await
    }
}

/// An HTTP client that sends `token` (if any) as `Authorization: Bearer` on every request.
pub fn client(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|e| panic!("{e}"));
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder().no_proxy().default_headers(headers).build().unwrap_or_else(|e| panic!("{e}"))
}

pub fn metric(metrics: &Metrics, name: &str, label: Option<(&str, &str)>) -> f64 {
    fleetstream_testkit::metric_value(&fleetstream_core::telemetry::render(&metrics.registry), name, label)
}

/// Fresh pipeline topics (events and geofences included) on the shared broker.
pub async fn broker_and_topics(partitions: i32) -> (Broker, Topics) {
    let broker = Broker::shared();
    let topics = broker.topics(partitions).await.unwrap_or_else(|e| panic!("{e:#}"));
    (broker, topics)
}

/// A position as the processor writes it to `positions`.
pub fn position(obu_id: u64, seq: u64, ts: i64, lat: f64, lon: f64) -> ProcessedPosition {
    ProcessedPosition {
        obu_id,
        seq,
        boot: 0,
        ts,
        lat,
        lon,
        speed: Some(36.0),
        heading: Some(90.0),
        speed_computed: false,
        heading_computed: false,
        distance_m: 10.0,
        received_at: Some(ts + 5),
        processed_at: ts + 9,
        out_of_order: false,
        attributes: None,
    }
}

pub async fn produce_positions(producer: &FutureProducer, topic: &str, positions: &[ProcessedPosition]) {
    for p in positions {
        let payload = serde_json::to_vec(p).unwrap_or_else(|e| panic!("{e}"));
        fleetstream_testkit::produce_with(producer, topic, Some(&p.obu_id.to_string()), &payload, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

pub async fn produce_latest(producer: &FutureProducer, topic: &str, positions: &[ProcessedPosition]) {
    for p in positions {
        let latest = VehicleLatest { position: p.clone(), gaps: Vec::new(), horizon: Default::default(), seen_below: None, fleet: Default::default() };
        let payload = serde_json::to_vec(&latest).unwrap_or_else(|e| panic!("{e}"));
        fleetstream_testkit::produce_with(producer, topic, Some(&p.obu_id.to_string()), &payload, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// Writes events to the events topic as the processor does: JSON, keyed by obu_id.
pub async fn produce_events(producer: &FutureProducer, topic: &str, events: &[Event]) {
    for e in events {
        fleetstream_testkit::produce_with(producer, topic, Some(&e.obu_id.to_string()), &e.to_json(), &[])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// A trip of `obu_id` from `start_ts` to `end_ts` (its event at `end_ts`, triggered by `end_seq`).
pub fn trip(obu_id: u64, start_ts: i64, end_ts: i64, end_seq: u64) -> Event {
    let t = Trip {
        start_ts,
        start_seq: end_seq - 10,
        start_lat: 52.50,
        start_lon: 13.40,
        end_ts,
        end_seq,
        end_lat: 52.52,
        end_lon: 13.45,
        distance_m: 4_200.0,
        duration_s: ((end_ts - start_ts) / 1000) as f64,
        max_speed_kmh: 72.5,
        avg_speed_kmh: 41.3,
    };
    Event::new(obu_id, end_seq, end_ts, 52.52, 13.45, end_ts + 50, EventKind::Trip(t))
}

/// `n` positions of one vehicle, one a second, ending `ends_ago` ms before now, moving north-east.
pub fn drive(obu_id: u64, n: u64, ends_ago: i64, lat0: f64, lon0: f64) -> Vec<ProcessedPosition> {
    let end = now_ms() - ends_ago;
    (1..=n)
        .map(|seq| {
            let ts = end - (n - seq) as i64 * 1000;
            position(obu_id, seq, ts, lat0 + seq as f64 * 0.0005, lon0 + seq as f64 * 0.0007)
        })
        .collect()
}

/// The seqs of a track response, in response order.
pub fn seqs(track: &Value) -> Vec<u64> {
    let points = track["points"].as_array().unwrap_or_else(|| panic!("a track has a `points` array: {track}"));
    points.iter().map(|p| p["seq"].as_u64().unwrap_or_else(|| panic!("every point has a seq: {p}"))).collect()
}

/// Generates one `#[tokio::test]` per backend for an `async fn(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Coordinates equal to a nanodegree: serde_json's fast float parsing may differ from the
/// shortest round-trip form in the last bit.
pub fn near(got: &Value, want: f64) -> bool {
    got.as_f64().is_some_and(|g| (g - want).abs() < 1e-9)
}

/// (event, data) pairs of an SSE text.
pub fn parse_sse(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .filter_map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            event.map(|e| (e, data.join("\n")))
        })
        .collect()
}
