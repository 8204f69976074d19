//! The Kafka-transactions path, against librdkafka's mock cluster (the nisshi test broker has
//! no transactions): outputs and offsets commit atomically, and a second instance with the same
//! transactional id continues exactly where the first stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use fleetstream_core::now_ms;
use fleetstream_processor::{Application, Config};

use crate::helpers::raw;

/// Every committed record of a topic: (obu_id, seq) of `positions` records, in offset order per
/// partition.
fn committed(bootstrap: &str, topic: &str, expected: usize) -> Vec<(u64, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", fleetstream_testkit::unique("read"))
        .set("isolation.level", "read_committed")
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap_or_else(|e| panic!("{e}"));
    }
    consumer.assign(&tpl).unwrap_or_else(|e| panic!("{e}"));
    let mut out: Vec<(i32, i64, u64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut settle: Option<Instant> = None;
    while Instant::now() < deadline && settle.is_none_or(|s| Instant::now() < s) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
            out.push((m.partition(), m.offset(), v["obu_id"].as_u64().unwrap_or(0), v["seq"].as_u64().unwrap_or(0)));
        }
        if out.len() >= expected && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    out.sort();
    out.into_iter().map(|(_, _, o, s)| (o, s)).collect()
}

async fn run_processor(bootstrap: &str, id: &str) -> (oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let config = Config::try_parse_from([
        "processor",
        "--listen=127.0.0.1:0",
        &format!("--kafka-brokers={bootstrap}"),
        "--group-id=txn",
        &format!("--transactional-id={id}"),
        "--create-topics=false",
        "--kafka-linger-ms=1",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let app = Application::build(config).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_batches_are_exactly_once_across_instances() {
    let cluster = MockCluster::new(1).unwrap_or_else(|e| panic!("{e}"));
    let bootstrap = cluster.bootstrap_servers();
    for topic in ["gpscoords", "positions", "vehicle-latest", "gpscoords-dlq"] {
        cluster.create_topic(topic, 3, 1).unwrap_or_else(|e| panic!("{e}"));
    }
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap_or_else(|e| panic!("{e}"));
    let now = now_ms();
    let send = |obu: u64, seq: u64, lat: f64| {
        let (producer, topic) = (producer.clone(), "gpscoords");
        async move {
            let payload = raw(obu, seq, now - 100_000 + seq as i64 * 1000, lat, 13.4);
            let key = obu.to_string();
            producer
                .send(FutureRecord::to(topic).key(&key).payload(&payload), Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    };
    // First half: 4 vehicles x 20 positions, one invalid, one resend.
    for seq in 1..=20u64 {
        for obu in 1..=4u64 {
            send(obu, seq, if obu == 2 && seq == 7 { 95.0 } else { 52.5 + seq as f64 * 0.0001 }).await;
        }
    }
    send(3, 10, 52.5 + 10.0 * 0.0001).await;

    let (stop, task) = run_processor(&bootstrap, "fleetstream-processor-0").await;
    assert_eq!(committed(&bootstrap, "positions", 79).len(), 79, "80 valid positions minus the invalid one");
    let _ = stop.send(());
    assert!(task.await.is_ok_and(|r| r.is_ok()));

    // Second half, processed by a new instance with the same transactional id.
    for seq in 21..=30u64 {
        for obu in 1..=4u64 {
            send(obu, seq, 52.5 + seq as f64 * 0.0001).await;
        }
    }
    let (stop, task) = run_processor(&bootstrap, "fleetstream-processor-0").await;
    let positions = committed(&bootstrap, "positions", 119);
    let _ = stop.send(());
    assert!(task.await.is_ok_and(|r| r.is_ok()));

    let mut by_obu: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (o, s) in positions {
        by_obu.entry(o).or_default().push(s);
    }
    for obu in 1..=4u64 {
        let expected: Vec<u64> = (1..=30).filter(|s| !(obu == 2 && *s == 7)).collect();
        assert_eq!(by_obu.get(&obu), Some(&expected), "vehicle {obu}: every seq once, in order");
    }
    let dead = committed(&bootstrap, "gpscoords-dlq", 1);
    assert_eq!(dead, vec![(2, 7)], "the invalid position, once");
}
