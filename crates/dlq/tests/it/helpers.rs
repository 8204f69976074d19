use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser as _;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use fleetstream_core::dlq::{DeadLetter, Origin};
use fleetstream_core::publish::{delivered, Publisher};
use fleetstream_core::reason::{Reason, Rejection};
use fleetstream_dlq::{Filter, Reader};
use fleetstream_testkit::{Broker, Running, Topics};

/// A dead letter to write: who refused it, why, and the bytes.
pub struct Letter {
    pub stage: &'static str,
    pub reason: Reason,
    pub obu_id: Option<u64>,
    pub seq: Option<u64>,
    pub value: Vec<u8>,
    /// How long before now it was refused.
    pub ago: Duration,
}

/// A raw position as a device sends it, with `ts` now (so that the processor accepts it).
pub fn position(obu: u64, seq: u64, lat: f64) -> Vec<u8> {
    let ts = fleetstream_core::now_ms();
    format!(r#"{{"obu_id":{obu},"seq":{seq},"ts":{ts},"lat":{lat},"lon":13.4}}"#).into_bytes()
}

/// The fixture of most tests: five dead letters of three vehicles (and one unreadable frame).
pub fn fixture() -> Vec<Letter> {
    let min = |m: u64| Duration::from_secs(60 * m);
    let l = |stage, reason, obu_id: Option<u64>, seq: Option<u64>, value: Vec<u8>, ago| Letter { stage, reason, obu_id, seq, value, ago };
    vec![
        l("processor", Reason::SeqTooOld, Some(17), Some(1), position(17, 1, 52.5), min(120)),
        l("processor", Reason::SeqTooOld, Some(17), Some(2), position(17, 2, 52.5), min(10)),
        l("processor", Reason::LatOutOfRange, Some(18), Some(5), position(18, 5, 95.0), min(10)),
        l("receiver", Reason::MalformedJson, None, None, b"{\"obu_id\":\xff oops".to_vec(), min(5)),
        l("processor", Reason::Teleport, Some(19), Some(7), position(19, 7, 48.1), min(1)),
    ]
}

/// Writes `letters` to the test's DLQ topic as the services do (through `DeadLetter`).
pub async fn write(broker: &Broker, topics: &Topics, letters: &[Letter]) {
    let producer: FutureProducer = broker.producer().expect("a producer");
    let publisher = Publisher::new(producer, CancellationToken::new());
    for (i, l) in letters.iter().enumerate() {
        let failed_at = fleetstream_core::now_ms() - l.ago.as_millis() as i64;
        let rejection = Rejection::new(l.reason, format!("test rejection {i} ({})", l.reason));
        let origin = match l.stage {
            "receiver" => Origin::Receiver { instance: "receiver-1", peer: "10.0.0.9:51234", connection: 3 },
            _ => Origin::Processor { group: "fleetstream-processor", partition: 0, offset: 1000 + i as i64, timestamp: Some(failed_at - 50) },
        };
        let letter = DeadLetter { origin, source_topic: &topics.raw, rejection: &rejection, attempts: 1, failed_at, obu_id: l.obu_id, seq: l.seq };
        let key = l.obu_id.map(|o| o.to_string().into_bytes());
        let record = letter.record(&topics.dlq, if l.stage == "processor" { key.as_deref() } else { None }, &l.value);
        let delivery = publisher.enqueue(&record, Instant::now() + Duration::from_secs(10)).await.expect("enqueued");
        delivered(delivery).await.expect("delivered");
    }
}

pub async fn setup() -> (Broker, Topics) {
    let broker = Broker::shared();
    let topics = broker.topics(3).await.unwrap_or_else(|e| panic!("{e:#}"));
    write(&broker, &topics, &fixture()).await;
    (broker, topics)
}

pub fn reader(broker: &Broker) -> Reader {
    let kafka = fleetstream_core::kafka::KafkaArgs::plaintext(broker.brokers());
    Reader { kafka, timeout: Duration::from_secs(10) }
}

pub fn filter(args: &[&str]) -> Filter {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        filter: Filter,
    }
    let argv = std::iter::once("x").chain(args.iter().copied());
    Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}")).filter
}

/// Output of the `dlq` binary on the test's topics.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn dlq(broker: &Broker, topics: &Topics, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_dlq"))
        .args(["--kafka-brokers", &broker.brokers(), "--topic", &topics.dlq, "--raw-topic", &topics.raw, "--log-level", "error"])
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .output()
        .expect("dlq runs");
    Output { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// A processor in this process on the test's topics.
pub async fn spawn_processor(broker: &Broker, topics: &Topics) -> Running {
    let group = fleetstream_testkit::unique("dlq-processor");
    let mut cli = vec![
        "processor".to_string(),
        format!("--kafka-brokers={}", broker.brokers()),
        "--listen=127.0.0.1:0".into(),
        format!("--group-id={group}"),
        "--kafka-linger-ms=1".into(),
    ];
    cli.extend(topics.processor_flags());
    let config = fleetstream_processor::Config::try_parse_from(cli).unwrap_or_else(|e| panic!("{e}"));
    let app = fleetstream_processor::Application::build(config).await.unwrap_or_else(|e| panic!("processor: {e:#}"));
    Running::spawn(app.metrics().registry, |stop| app.run_until_stopped(stop))
}
