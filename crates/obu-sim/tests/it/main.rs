//! Simulator integration tests against a real receiver and broker.

// Tests say what they expect: `.expect("...")` fails with a message where a default would
// only fail a later assertion (clippy.toml allows it in #[test] functions; this covers helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod secrets;

use std::collections::HashSet;
use std::time::Duration;

use clap::Parser as _;

use fleetstream_obu_sim::Config;
use fleetstream_testkit::{Broker, Running, Topics};

struct Receiver(Running);

impl Receiver {
    async fn start(broker: &Broker, topics: &Topics, port: u16) -> Receiver {
        Self::start_with(broker, topics, port, &[]).await
    }

    async fn start_with(broker: &Broker, topics: &Topics, port: u16, extra: &[String]) -> Receiver {
        let mut args = vec![
            "receiver".to_string(),
            format!("--listen=127.0.0.1:{port}"),
            format!("--kafka-brokers={}", broker.brokers()),
            format!("--topic={}", topics.raw),
            format!("--dlq-topic={}", topics.dlq),
            "--kafka-linger-ms=1".into(),
            "--rate-limit=0".into(),
        ];
        if !extra.iter().any(|a| a.starts_with("--auth=")) {
            args.push("--auth=none".into());
        }
        args.extend(extra.iter().cloned());
        let config = fleetstream_receiver::Config::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
        let app = fleetstream_receiver::Application::build(config).await.unwrap_or_else(|e| panic!("{e:#}"));
        let running = Running::spawn(app.metrics().registry, |stop| app.run_until_stopped(stop));
        // Let the listener come up before the simulator dials.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Receiver(running)
    }

    async fn stop(mut self) {
        let _ = self.0.shutdown().await;
    }
}

fn sim(args: &[String]) -> Config {
    let mut all = vec!["obu-sim".to_string(), "--quiet".into()];
    all.extend(args.iter().cloned());
    Config::try_parse_from(all).unwrap_or_else(|e| panic!("{e}"))
}

fn ids(records: &[fleetstream_testkit::Record]) -> HashSet<(u64, u64)> {
    records
        .iter()
        .map(|r| {
            let v = r.json();
            let id = |field: &str| v[field].as_u64().unwrap_or_else(|| panic!("a raw position has {field}: {}", r.text()));
            (id("obu_id"), id("seq"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_restart_mid_run_loses_nothing() {
    let broker = Broker::shared();
    let topics = broker.topics(3).await.unwrap_or_else(|e| panic!("{e:#}"));
    let port = fleetstream_testkit::free_port();
    let receiver = Receiver::start(&broker, &topics, port).await;
    let config = sim(&[
        format!("--url=ws://127.0.0.1:{port}/ws"),
        "--vehicles=8".into(),
        "--interval=50ms".into(),
        "--jitter=0ms".into(),
        "--duration=6s".into(),
        "--reconnect-initial=100ms".into(),
        "--reconnect-max=500ms".into(),
        "--drain-timeout=20s".into(),
    ]);
    let run = tokio::spawn(fleetstream_obu_sim::run(config, std::future::pending()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    receiver.stop().await;
    // Vehicles keep recording while the receiver is away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let receiver = Receiver::start(&broker, &topics, port).await;
    let summary = run.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e:#}"));
    receiver.stop().await;

    assert!(summary.disconnects >= 8, "every connection saw the restart: {summary:#?}");
    assert_eq!(summary.unacked, 0, "{summary:#?}");
    assert_eq!(summary.generated, summary.acked + summary.dropped, "every generated position acked once or dropped");
    let records = broker.read(&topics.raw, summary.acked as usize, Duration::from_secs(1), Duration::from_secs(30)).expect("reading the raw topic");
    let stored = ids(&records);
    assert_eq!(stored.len() as u64, summary.acked, "distinct positions in Kafka == acked");
    // Every vehicle's seqs form an unbroken run from 1: nothing generated went missing.
    for obu in 1..=8u64 {
        let mut seqs: Vec<u64> = stored.iter().filter(|(o, _)| *o == obu).map(|(_, s)| *s).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "vehicle {obu}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_mode_summary_matches_kafka() {
    let broker = Broker::shared();
    let topics = broker.topics(3).await.unwrap_or_else(|e| panic!("{e:#}"));
    let port = fleetstream_testkit::free_port();
    let receiver = Receiver::start(&broker, &topics, port).await;
    let config = sim(&[
        format!("--url=ws://127.0.0.1:{port}/ws"),
        "--mode=load".into(),
        "--vehicles=100".into(),
        "--connections=4".into(),
        "--rate=0".into(),
        "--batch=20".into(),
        "--count=5000".into(),
        "--duplicate-ratio=0.01".into(),
    ]);
    let summary = fleetstream_obu_sim::run(config, std::future::pending()).await.unwrap_or_else(|e| panic!("{e:#}"));
    receiver.stop().await;
    assert_eq!(summary.generated, 5000);
    assert_eq!(summary.acked, 5000, "{summary:#?}");
    assert!(summary.ack_latency_ms.p50 > 0.0 && summary.ack_latency_ms.max >= summary.ack_latency_ms.p99);
    let records = broker.read(&topics.raw, 5000, Duration::from_secs(1), Duration::from_secs(30)).expect("reading the raw topic");
    assert_eq!(ids(&records).len(), 5000, "distinct positions == acked");
    assert_eq!(records.len() as u64, summary.acked + summary.duplicate_acks, "every record in Kafka was acked once");
    assert_eq!(summary.duplicates_injected, summary.duplicate_acks);
}

/// Connections spread over several source addresses: with at most 2 connections per address
/// at the receiver, 6 vehicles from 3 addresses all connect (from one, 4 would be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_come_from_every_source_address() {
    let broker = Broker::shared();
    let topics = broker.topics(3).await.unwrap_or_else(|e| panic!("{e:#}"));
    let port = fleetstream_testkit::free_port();
    let receiver = Receiver::start_with(&broker, &topics, port, &["--max-connections-per-ip=2".into()]).await;
    let config = sim(&[
        format!("--url=ws://127.0.0.1:{port}/ws"),
        "--vehicles=6".into(),
        "--interval=100ms".into(),
        "--duration=1s".into(),
        "--source-addresses=127.0.0.1,127.0.0.2-127.0.0.3".into(),
    ]);
    let summary = fleetstream_obu_sim::run(config, std::future::pending()).await.unwrap_or_else(|e| panic!("{e:#}"));
    receiver.stop().await;
    assert_eq!((summary.connects, summary.disconnects), (6, 0), "every vehicle connected at once: {summary:#?}");
    assert!(summary.acked > 0 && summary.acked == summary.generated, "{summary:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_over_wss_with_a_private_ca_and_a_token() {
    let broker = Broker::shared();
    let topics = broker.topics(3).await.unwrap_or_else(|e| panic!("{e:#}"));
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(fleetstream_testkit::unique("sim-tls"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    let port = fleetstream_testkit::free_port();
    let tls = [
        format!("--tls-cert={}", cert.display()),
        format!("--tls-key={}", key.display()),
        "--auth=token".to_string(),
        "--auth-tokens=fleet-secret-0123456789 1,2,3".to_string(),
    ];
    let receiver = Receiver::start_with(&broker, &topics, port, &tls).await;
    let config = sim(&[
        format!("--url=wss://localhost:{port}/ws"),
        format!("--tls-ca={}", cert.display()),
        "--token=fleet-secret-0123456789".into(),
        // Longitude first, as the tracker's bbox: central Berlin.
        "--area=13.30,52.45,13.50,52.55".into(),
        "--vehicles=3".into(),
        "--interval=20ms".into(),
        "--count=90".into(),
    ]);
    let summary = fleetstream_obu_sim::run(config, std::future::pending()).await.unwrap_or_else(|e| panic!("{e:#}"));
    receiver.stop().await;
    assert_eq!((summary.generated, summary.acked), (90, 90), "{summary:#?}");
    let records = broker.read(&topics.raw, 90, Duration::from_millis(500), Duration::from_secs(20)).expect("reading the raw topic");
    assert_eq!(ids(&records).len(), 90);
    for r in &records {
        let v = r.json();
        let (lat, lon) = (v["lat"].as_f64().expect("a lat"), v["lon"].as_f64().expect("a lon"));
        assert!((52.45..=52.55).contains(&lat) && (13.30..=13.50).contains(&lon), "outside --area: {}", r.text());
    }
    let _ = std::fs::remove_dir_all(dir);
}
