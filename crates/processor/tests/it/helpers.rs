use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser as _;

use fleetstream_processor::{Application, Config};
use fleetstream_testkit::{Broker, Record, Running, Topics};

pub type TestProcessor = Running;

pub fn args(broker: &Broker, topics: &Topics, group: &str) -> Vec<(String, String)> {
    vec![
        ("KAFKA_BROKERS".into(), broker.brokers()),
        ("PROCESSOR_LISTEN".into(), "127.0.0.1:0".into()),
        ("PROCESSOR_GROUP_ID".into(), group.into()),
        ("PROCESSOR_INPUT_TOPIC".into(), topics.raw.clone()),
        ("PROCESSOR_POSITIONS_TOPIC".into(), topics.positions.clone()),
        ("PROCESSOR_LATEST_TOPIC".into(), topics.latest.clone()),
        ("PROCESSOR_DLQ_TOPIC".into(), topics.dlq.clone()),
        ("PROCESSOR_BATCH_SIZE".into(), "200".into()),
        ("KAFKA_LINGER_MS".into(), "1".into()),
        ("LOG_LEVEL".into(), "warn".into()),
    ]
}

pub async fn spawn(broker: &Broker, topics: &Topics, group: &str) -> TestProcessor {
    let mut cli = vec!["processor".to_string()];
    for (k, v) in args(broker, topics, group) {
        let flag = match k.as_str() {
            "KAFKA_BROKERS" => "--kafka-brokers",
            "PROCESSOR_LISTEN" => "--listen",
            "PROCESSOR_GROUP_ID" => "--group-id",
            "PROCESSOR_INPUT_TOPIC" => "--input-topic",
            "PROCESSOR_POSITIONS_TOPIC" => "--positions-topic",
            "PROCESSOR_LATEST_TOPIC" => "--latest-topic",
            "PROCESSOR_DLQ_TOPIC" => "--dlq-topic",
            "PROCESSOR_BATCH_SIZE" => "--batch-size",
            "KAFKA_LINGER_MS" => "--kafka-linger-ms",
            _ => continue,
        };
        cli.push(format!("{flag}={v}"));
    }
    let config = Config::try_parse_from(cli).unwrap_or_else(|e| panic!("{e}"));
    let app = Application::build(config).await.unwrap_or_else(|e| panic!("processor: {e:#}"));
    Running::spawn(app.metrics().registry, |stop| app.run_until_stopped(stop))
}

/// The processor binary as a child process (so it can be killed with SIGKILL or SIGTERM).
pub fn spawn_process(broker: &Broker, topics: &Topics, group: &str) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_processor"));
    for (k, v) in args(broker, topics, group) {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    if std::env::var_os("PROCESSOR_LOG").is_none() {
        cmd.stderr(Stdio::null());
    }
    cmd.spawn().unwrap_or_else(|e| panic!("cannot start processor: {e}"))
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -TERM failed");
}

/// A raw position as the receiver would write it.
pub fn raw(obu: u64, seq: u64, ts: i64, lat: f64, lon: f64) -> String {
    format!(r#"{{"obu_id":{obu},"seq":{seq},"ts":{ts},"lat":{lat},"lon":{lon}}}"#)
}

/// Per-obu list of seqs in `positions`, in partition offset order.
pub fn seqs_by_obu(records: &[Record]) -> BTreeMap<u64, Vec<u64>> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in sorted {
        let v = r.json();
        out.entry(v["obu_id"].as_u64().unwrap_or(u64::MAX)).or_default().push(v["seq"].as_u64().unwrap_or(0));
    }
    out
}

/// The last record per key (what compaction keeps).
pub fn latest_by_key(records: &[Record]) -> HashMap<String, serde_json::Value> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    sorted.into_iter().filter_map(|r| r.key.clone().map(|k| (k, r.json()))).collect()
}

pub async fn broker_and_topics(partitions: i32) -> (Broker, Topics) {
    let broker = Broker::shared();
    let topics = broker.topics(partitions).await.unwrap_or_else(|e| panic!("{e:#}"));
    (broker, topics)
}

pub const SETTLE: Duration = Duration::from_millis(1500);
