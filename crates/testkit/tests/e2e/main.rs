//! End to end: simulated OBUs -> receiver -> gpscoords -> processor -> positions / DLQ, with
//! every piece real (broker process, services on port 0, sockets).

// Tests say what they expect: `.expect("...")` fails with a message where a default would
// only fail a later assertion (clippy.toml allows it in #[test] functions; this covers helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;


use fleetstream_core::dlq;
use fleetstream_testkit::{Broker, Record, Running, Topics};

mod drills;
mod fences;
mod otelcol;
mod security;
mod traces;

pub fn parse<T: clap::Parser>(args: Vec<String>) -> T {
    T::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A receiver on port 0 writing to `topics`, without device authentication: the service, its
/// port and its metrics.
pub async fn receiver(broker: &Broker, topics: &Topics, extra: &[&str]) -> (Running, u16, prometheus::Registry) {
    let mut args = vec![
        "receiver".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--kafka-brokers={}", broker.brokers()),
        format!("--topic={}", topics.raw),
        format!("--dlq-topic={}", topics.dlq),
        "--auth=none".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let app = fleetstream_receiver::Application::build(parse(args)).await.expect("the receiver starts");
    let (port, registry) = (app.port(), app.metrics().registry);
    (Running::spawn(registry.clone(), |stop| app.run_until_stopped(stop)), port, registry)
}

/// The command line of a processor in group `group` over `topics`.
pub fn processor_args(broker: &Broker, topics: &Topics, group: &str) -> Vec<String> {
    let mut args = vec![
        "processor".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--kafka-brokers={}", broker.brokers()),
        format!("--group-id={group}"),
    ];
    args.extend(topics.processor_flags());
    args
}

/// A processor in group `group` over `topics`: the service and its metrics.
pub async fn processor(broker: &Broker, topics: &Topics, group: &str, extra: &[&str]) -> (Running, prometheus::Registry) {
    let mut args = processor_args(broker, topics, group);
    args.extend(extra.iter().map(|a| a.to_string()));
    let app = fleetstream_processor::Application::build(parse(args)).await.expect("the processor starts");
    let registry = app.metrics().registry;
    (Running::spawn(registry.clone(), |stop| app.run_until_stopped(stop)), registry)
}

/// A tracker in group `group` over `topics`, with a fresh SQLite file and the API token
/// `token` of `role`: the service and its port.
pub async fn tracker(broker: &Broker, topics: &Topics, group: &str, token: &str, role: &str, extra: &[String]) -> (Running, u16) {
    let db = std::env::temp_dir().join(fleetstream_testkit::unique("fleetstream-e2e-db"));
    std::fs::create_dir_all(&db).expect("a temp dir");
    let mut args = vec![
        "tracker".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--kafka-brokers={}", broker.brokers()),
        format!("--database-url=sqlite://{}/tracker.db", db.display()),
        format!("--group-id={group}"),
        format!("--positions-topic={}", topics.positions),
        format!("--latest-topic={}", topics.latest),
        format!("--events-topic={}", topics.events),
        format!("--geofences-topic={}", topics.geofences),
        "--flush-interval=200ms".into(),
        format!("--api-tokens={token} {role}"),
    ];
    args.extend(extra.iter().cloned());
    let config: fleetstream_tracker::Config = parse(args);
    let app = fleetstream_tracker::Application::build(config).await.expect("the tracker starts");
    let port = app.port();
    (Running::spawn(app.metrics().registry, |stop| app.run_until_stopped(stop)), port)
}

fn obu_seq(r: &Record) -> (u64, u64) {
    let v = r.json();
    (v["obu_id"].as_u64().expect("an obu_id"), v["seq"].as_u64().expect("a seq"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_fleet_flows_end_to_end_exactly_once() {
    let broker = Broker::shared();
    let topics = broker.topics(3).await.unwrap_or_else(|e| panic!("{e:#}"));

    let (mut receiver, port, _) = receiver(&broker, &topics, &["--kafka-linger-ms=1"]).await;
    let (mut processor, _) = processor(&broker, &topics, "e2e", &["--kafka-linger-ms=1"]).await;

    // Six OBUs on their own connections, reporting every 50 ms; 10% faults of every kind.
    let sim_config: fleetstream_obu_sim::Config = parse(vec![
        "obu-sim".into(),
        format!("--url=ws://127.0.0.1:{port}/ws"),
        "--vehicles=6".into(),
        "--interval=50ms".into(),
        "--jitter=5ms".into(),
        "--count=600".into(),
        "--invalid-ratio=0.1".into(),
        "--invalid-kinds=bad-coords,null-island,future-ts,non-json,missing-field,wrong-type,nan".into(),
        "--quiet".into(),
        "--drain-timeout=20s".into(),
    ]);
    let summary = fleetstream_obu_sim::run(sim_config, std::future::pending()).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(summary.unacked, 0, "everything answered: {summary:#?}");
    assert_eq!(summary.dropped, 0);

    // gpscoords holds exactly the acked positions (semantic faults included: the receiver
    // judges shape, the processor judges the world).
    let raw = broker.read(&topics.raw, summary.acked as usize, Duration::from_secs(1), Duration::from_secs(60)).expect("the topic is readable");
    let raw_ids: HashSet<(u64, u64)> = raw.iter().map(obu_seq).collect();
    assert_eq!(raw_ids.len() as u64, summary.acked, "acked == distinct positions in gpscoords");
    assert_eq!(raw.len() as u64, summary.acked);

    let is_invalid = |r: &Record| {
        let v = r.json();
        let now = fleetstream_core::now_ms();
        v["lat"].as_f64().is_some_and(|l| l.abs() > 90.0)
            || (v["lat"] == 0.0 && v["lon"] == 0.0)
            || v["ts"].as_i64().is_some_and(|t| t > now + 30_000)
    };
    let semantic_invalid: HashSet<(u64, u64)> = raw.iter().filter(|r| is_invalid(r)).map(obu_seq).collect();
    let expected_valid = raw_ids.len() - semantic_invalid.len();
    let positions = broker.read(&topics.positions, expected_valid, Duration::from_secs(2), Duration::from_secs(60)).expect("the topic is readable");
    assert_eq!(positions.len(), expected_valid, "every valid acked position once");
    let mut by_obu: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut sorted: Vec<&Record> = positions.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in sorted {
        let (o, s) = obu_seq(r);
        assert!(raw_ids.contains(&(o, s)) && !semantic_invalid.contains(&(o, s)));
        by_obu.entry(o).or_default().push(s);
    }
    assert_eq!(by_obu.len(), 6);
    for (obu, seqs) in &by_obu {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "obu {obu} in seq order: {seqs:?}");
    }

    // The DLQ: semantic faults from the processor, structural ones from the receiver.
    let structural: u64 = summary.refused.values().sum();
    let dead = broker.read(&topics.dlq, semantic_invalid.len() + structural as usize, Duration::from_secs(2), Duration::from_secs(60)).expect("the topic is readable");
    let from_processor = dead.iter().filter(|r| r.header(dlq::STAGE) == Some("processor")).count();
    let from_receiver = dead.iter().filter(|r| r.header(dlq::STAGE) == Some("receiver")).count();
    assert_eq!(from_processor, semantic_invalid.len());
    assert_eq!(from_receiver as u64, structural);
    assert!(semantic_invalid.len() > 5 && structural > 5, "faults of both kinds were injected: {} / {structural}", semantic_invalid.len());

    assert!(processor.shutdown().await.is_ok());
    assert!(receiver.shutdown().await.is_ok());
}

/// A simulator restarted mid-run with the same vehicle ids counts its seqs from 1 again under a
/// new boot: every position of both runs is in `positions` once, none dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_simulator_loses_nothing_and_dead_letters_nothing() {
    let broker = Broker::shared();
    let topics = broker.topics(2).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (mut receiver, port, _) = receiver(&broker, &topics, &["--kafka-linger-ms=1"]).await;
    let (mut processor, _) = processor(&broker, &topics, &fleetstream_testkit::unique("sim-restart"), &["--kafka-linger-ms=1"]).await;
    let sim = |count: Option<u64>| -> fleetstream_obu_sim::Config {
        let mut args = vec![
            "obu-sim".to_string(),
            format!("--url=ws://127.0.0.1:{port}/ws"),
            "--vehicles=3".into(),
            "--first-obu-id=9100".into(),
            "--interval=20ms".into(),
            "--quiet".into(),
            "--drain-timeout=20s".into(),
        ];
        args.extend(count.map(|c| format!("--count={c}")));
        parse(args)
    };
    // The first run is stopped part way (a restart), the second starts from seq 1 again.
    let stop = tokio::time::sleep(Duration::from_millis(1500));
    let first = fleetstream_obu_sim::run(sim(None), stop).await.unwrap_or_else(|e| panic!("{e:#}"));
    let second = fleetstream_obu_sim::run(sim(Some(60)), std::future::pending()).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!((first.unacked, second.unacked, second.acked), (0, 0, 60), "{first:#?} {second:#?}");
    assert!(first.acked > 30, "the first run got going: {first:#?}");
    let total = (first.acked + second.acked) as usize;

    let positions = broker.read(&topics.positions, total, Duration::from_secs(2), Duration::from_secs(60)).expect("readable");
    let ids: HashSet<(u64, u64, u64)> =
        positions.iter().map(|r| (r.json()["obu_id"].as_u64().unwrap_or(0), r.json()["boot"].as_u64().unwrap_or(0), r.json()["seq"].as_u64().unwrap_or(0))).collect();
    assert_eq!(positions.len(), total, "every acked position of both runs once");
    assert_eq!(ids.len(), total);
    let boots: HashSet<u64> = ids.iter().map(|(_, b, _)| *b).collect();
    assert_eq!(boots.len(), 2, "two boots: {boots:?}");
    assert!(ids.contains(&(9100, *boots.iter().max().unwrap_or(&0), 1)), "the second run started from seq 1 again");
    let dead = broker.read(&topics.dlq, 0, Duration::from_secs(2), Duration::from_secs(10)).expect("readable");
    assert!(dead.is_empty(), "nothing dead-lettered: {:?}", dead.first().map(|r| r.text()));
    assert!(processor.shutdown().await.is_ok());
    assert!(receiver.shutdown().await.is_ok());
}
