use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser as _;

use fleetstream_processor::{Application, Config};
use fleetstream_testkit::{Broker, Record, Running, Signal, Topics};

pub type TestProcessor = Running;

/// The processor's settings for a test, as environment variables.
pub fn args(broker: &Broker, topics: &Topics, group: &str) -> Vec<(String, String)> {
    vec![
        ("KAFKA_BROKERS".into(), broker.brokers()),
        ("PROCESSOR_LISTEN".into(), "127.0.0.1:0".into()),
        ("PROCESSOR_GROUP_ID".into(), group.into()),
        ("PROCESSOR_INPUT_TOPIC".into(), topics.raw.clone()),
        ("PROCESSOR_POSITIONS_TOPIC".into(), topics.positions.clone()),
        ("PROCESSOR_LATEST_TOPIC".into(), topics.latest.clone()),
        ("PROCESSOR_DLQ_TOPIC".into(), topics.dlq.clone()),
        ("PROCESSOR_EVENTS_TOPIC".into(), topics.events.clone()),
        ("PROCESSOR_GEOFENCES_TOPIC".into(), topics.geofences.clone()),
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
            "PROCESSOR_EVENTS_TOPIC" => "--events-topic",
            "PROCESSOR_GEOFENCES_TOPIC" => "--geofences-topic",
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

/// A processor binary running as a child process (so that it can be killed with SIGKILL,
/// stopped with SIGTERM or frozen with SIGSTOP).
pub struct ProcessorProcess {
    child: Child,
    /// Its /metrics, /healthz and /readyz port.
    pub ops_port: u16,
}

impl ProcessorProcess {
    /// Starts instance `instance` of `group`: its transactional id is `<group>-<instance>`, so
    /// a restart of the same instance fences its predecessor and aborts what it left open.
    pub fn start(broker: &Broker, topics: &Topics, group: &str, instance: &str, mode: &str) -> ProcessorProcess {
        Self::start_with(broker, topics, group, instance, mode, &[])
    }

    /// `start` with more settings, as environment variables.
    pub fn start_with(broker: &Broker, topics: &Topics, group: &str, instance: &str, mode: &str, env: &[(&str, &str)]) -> ProcessorProcess {
        let ops_port = fleetstream_testkit::free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_processor"));
        for (k, v) in args(broker, topics, group) {
            cmd.env(k, v);
        }
        cmd.env("PROCESSOR_LISTEN", format!("127.0.0.1:{ops_port}"))
            .env("PROCESSOR_EXACTLY_ONCE", mode)
            .env("PROCESSOR_TRANSACTIONAL_ID", format!("{group}-{instance}"))
            .envs(env.iter().copied());
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        if std::env::var_os("PROCESSOR_LOG").is_none() {
            cmd.stderr(Stdio::null());
        } else {
            cmd.env("LOG_LEVEL", "info");
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start processor: {e}"));
        ProcessorProcess { child, ops_port }
    }

    pub fn signal(&self, signal: Signal) {
        fleetstream_testkit::signal(&self.child, signal).expect("the processor process exists");
    }

    /// Waits for the process to exit; its exit code (None if killed by a signal).
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited for") {
                return status.code();
            }
            assert!(tokio::time::Instant::now() < deadline, "the processor did not exit within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A metric of the running process (0 if it does not answer).
    pub async fn metric(&self, name: &str) -> f64 {
        match fleetstream_testkit::http_get(&format!("http://127.0.0.1:{}/metrics", self.ops_port)).await {
            Ok((200, text)) => fleetstream_testkit::metric_value(&text, name, None),
            _ => 0.0,
        }
    }
}

impl Drop for ProcessorProcess {
    fn drop(&mut self) {
        self.kill();
    }
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
        let (obu, seq) = (v["obu_id"].as_u64(), v["seq"].as_u64());
        let (Some(obu), Some(seq)) = (obu, seq) else { panic!("a positions record without obu_id and seq: {}", r.text()) };
        out.entry(obu).or_default().push(seq);
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
