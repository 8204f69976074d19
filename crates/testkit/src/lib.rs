//! The one test harness of fleetstream: Apache Kafka (through `fleetstream-kafka-local`),
//! uniquely named topics, readers that return what a user would check, and in-process services.
//!
//! Tests that only need a broker share one per test process ([`Broker::shared`]), each with its
//! own topics and group ids; tests that stop, kill or restart brokers start a [`Dedicated`]
//! node or cluster. Set `FLEETSTREAM_TEST_KAFKA=host:port` to run the shared tests against a
//! broker that is already running (e.g. `scripts/kafka-local start`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use fleetstream_kafka_local::{Cluster, ClusterSpec, Installation, Lifetime};

pub mod otelcol;
pub mod postgres;
pub mod secrets;

pub use fleetstream_kafka_local::KAFKA_VERSION;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A name no other test in this run (or an earlier one) uses.
pub fn unique(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// The installed broker, installing it if needed (`scripts/kafka-local install` does the same).
fn installation() -> anyhow::Result<Installation> {
    Installation::ensure(&|m| eprintln!("testkit: {m}"))
}

/// Directories of test brokers live under this prefix in the temp dir, named with the pid of
/// the test process; those of processes that are gone are removed by the next run.
const DIR_PREFIX: &str = "fleetstream-kafka-test-";

fn broker_dir(kind: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(DIR_PREFIX).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| p != std::process::id() && !fleetstream_kafka_local::node::signal_0(p)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    tmp.join(format!("{DIR_PREFIX}{}-{kind}-{n}", std::process::id()))
}

/// A Kafka cluster the tests talk to: its bootstrap servers and the readers and writers a test
/// needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Broker {
    bootstrap: String,
    /// librdkafka settings of the administrator (TLS and SASL on a secure cluster; none on a
    /// plaintext one): every reader and writer of the harness uses them.
    admin: Vec<(String, String)>,
}

static SHARED: OnceLock<Result<(Broker, Option<Cluster>), String>> = OnceLock::new();

impl Broker {
    /// The broker every test of this process shares: `FLEETSTREAM_TEST_KAFKA` if set, else one
    /// Apache Kafka node started on first use and killed when the process exits. Panics with
    /// the reason if it cannot start (a test cannot run without it).
    pub fn shared() -> Broker {
        let shared = SHARED.get_or_init(|| {
            if let Ok(bootstrap) = std::env::var("FLEETSTREAM_TEST_KAFKA") {
                return Ok((Broker { bootstrap, admin: Vec::new() }, None));
            }
            let started = installation().and_then(|i| Cluster::start(i, ClusterSpec::new(1, broker_dir("shared")), Lifetime::Owned));
            match started {
                Ok(cluster) => Ok((Broker { bootstrap: cluster.bootstrap(), admin: Vec::new() }, Some(cluster))),
                Err(e) => Err(format!("{e:#}")),
            }
        });
        match shared {
            Ok((broker, _)) => broker.clone(),
            Err(e) => panic!("cannot start the shared Apache Kafka broker: {e}"),
        }
    }

    /// A handle on any running cluster.
    pub fn at(bootstrap: impl Into<String>) -> Broker {
        Broker { bootstrap: bootstrap.into(), admin: Vec::new() }
    }

    /// `host:port,...` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        self.bootstrap.clone()
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.admin {
            c.set(k, v);
        }
        c
    }

    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        Ok(self.client_config().create()?)
    }

    /// Creates a topic with configs (replication: the cluster's default).
    pub async fn create_topic(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) -> anyhow::Result<()> {
        let admin = self.admin()?;
        let topic = configs.iter().fold(NewTopic::new(name, partitions, TopicReplication::Fixed(-1)), |t, (k, v)| t.set(k, v));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in admin.create_topics([&topic], &options).await? {
            if let Err((t, e)) = r {
                bail!("cannot create {t}: {e}");
            }
        }
        Ok(())
    }

    /// Fresh, uniquely named pipeline topics, created with `partitions` partitions each.
    pub async fn topics(&self, partitions: i32) -> anyhow::Result<Topics> {
        let t = Topics {
            raw: unique("gpscoords"),
            positions: unique("positions"),
            latest: unique("vehicle-latest"),
            dlq: unique("gpscoords-dlq"),
            events: unique("events"),
            geofences: unique("geofences"),
        };
        self.create_topic(&t.raw, partitions, &[]).await?;
        self.create_topic(&t.positions, partitions, &[]).await?;
        self.create_topic(&t.latest, partitions, &[("cleanup.policy", "compact")]).await?;
        self.create_topic(&t.dlq, partitions, &[]).await?;
        self.create_topic(&t.events, partitions, &[]).await?;
        self.create_topic(&t.geofences, 1, &[("cleanup.policy", "compact")]).await?;
        Ok(t)
    }

    /// Produces one record and waits for its acknowledgement.
    pub async fn produce(&self, topic: &str, key: Option<&str>, payload: &[u8], headers: &[(&str, &str)]) -> anyhow::Result<()> {
        let producer = self.producer()?;
        produce_with(&producer, topic, key, payload, headers).await
    }

    /// An idempotent acks=all producer.
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "1");
        Ok(c.create()?)
    }

    /// Every committed record of `topic` (all partitions, from the beginning), as a
    /// `read_committed` consumer sees them: waits until at least `expected` arrived, then
    /// `settle` more to catch extras (duplicates). Gives up at `timeout`.
    pub fn read(&self, topic: &str, expected: usize, settle: Duration, timeout: Duration) -> anyhow::Result<Vec<Record>> {
        let mut c = self.client_config();
        c.set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer = c.create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        let mut settled_at: Option<Instant> = None;
        loop {
            if records.len() >= expected && settled_at.is_none() {
                settled_at = Some(Instant::now() + settle);
            }
            let now = Instant::now();
            if settled_at.is_some_and(|s| now >= s) || now >= deadline {
                break;
            }
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                records.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
        Ok(records)
    }

    /// The leader's node id of every partition of `topic`.
    pub fn leaders(&self, topic: &str) -> anyhow::Result<Vec<(i32, i32)>> {
        let consumer: BaseConsumer = self.client_config().create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let t = metadata.topics().iter().find(|t| t.name() == topic).with_context(|| format!("no topic {topic}"))?;
        Ok(t.partitions().iter().map(|p| (p.id(), p.leader())).collect())
    }
}

/// A node or cluster of a test's own, for tests that stop, kill or restart brokers. Killed
/// (and its data deleted) when dropped. Derefs to its [`Broker`].
#[derive(Debug)]
pub struct Dedicated {
    cluster: Cluster,
    broker: Broker,
}

impl Dedicated {
    /// Starts `nodes` Apache Kafka nodes (1, or 3 for replication 3 and min.insync.replicas 2).
    pub fn start(nodes: u32) -> anyhow::Result<Dedicated> {
        let cluster = Cluster::start(installation()?, ClusterSpec::new(nodes, broker_dir("dedicated")), Lifetime::Owned)?;
        let broker = Broker { bootstrap: cluster.bootstrap(), admin: Vec::new() };
        Ok(Dedicated { cluster, broker })
    }

    /// One locked-down node (`kafka-local --secure`): SASL_SSL only, ACLs enforced, a user per
    /// service. The harness's own readers and writers connect as the admin.
    pub fn start_secure() -> anyhow::Result<Dedicated> {
        let dir = broker_dir("secure");
        let security = fleetstream_kafka_local::Security::prepare(&dir.join("security"))?;
        let spec = ClusterSpec { security: Some(security), ..ClusterSpec::new(1, dir) };
        let cluster = Cluster::start(installation()?, spec, Lifetime::Owned)?;
        let broker = Broker { bootstrap: cluster.bootstrap(), admin: cluster.client_settings(fleetstream_kafka_local::secure::ADMIN)? };
        Ok(Dedicated { cluster, broker })
    }

    /// On a secure node: every service's user and ACLs for `topics` and these consumer groups
    /// (also the transactional-id prefix of the processor).
    pub fn grant_access(&self, topics: &Topics, processor_group: &str, tracker_group: &str) -> anyhow::Result<()> {
        let names = fleetstream_kafka_local::topics::TopicNames {
            raw: topics.raw.clone(),
            positions: topics.positions.clone(),
            latest: topics.latest.clone(),
            dlq: topics.dlq.clone(),
            events: topics.events.clone(),
            geofences: topics.geofences.clone(),
        };
        let groups = fleetstream_kafka_local::access::Groups {
            processor: processor_group.to_string(),
            tracker: tracker_group.to_string(),
            dlq: "fleetstream-dlq".to_string(),
        };
        self.cluster.grant_access(&names, &groups)
    }

    /// The `--kafka-*` flags a service runs with as `user` on this node: SASL_SSL,
    /// `mechanism`, the CA file and the user's password file (none on a plaintext node).
    pub fn service_flags(&self, user: &str, mechanism: &str) -> anyhow::Result<Vec<String>> {
        let settings = self.cluster.client_settings(user)?;
        let Some(ca) = settings.iter().find(|(k, _)| k == "ssl.ca.location").map(|(_, v)| v.clone()) else { return Ok(Vec::new()) };
        let password_file = self.cluster.spec().security.as_ref().map(|s| s.password_file(user)).context("not a secure cluster")?;
        Ok(vec![
            "--kafka-security-protocol=sasl_ssl".to_string(),
            format!("--kafka-sasl-mechanism={mechanism}"),
            format!("--kafka-sasl-username={user}"),
            format!("--kafka-sasl-password-file={}", password_file.display()),
            format!("--kafka-ssl-ca-file={ca}"),
        ])
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The nodes' ids.
    pub fn node_ids(&self) -> Vec<u32> {
        self.cluster.nodes().iter().map(|n| n.addr.id).collect()
    }

    /// SIGKILL node `id`: a crash.
    pub fn kill(&mut self, id: u32) -> anyhow::Result<()> {
        self.cluster.kill(id)
    }

    /// SIGTERM node `id` and wait for its controlled shutdown.
    pub fn terminate(&mut self, id: u32) -> anyhow::Result<()> {
        self.cluster.terminate(id)
    }

    /// Starts node `id` again with its data, and waits until it is back in the cluster.
    pub fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        self.cluster.restart(id)
    }

    /// SIGTERM every node at once: the whole cluster goes down.
    pub fn terminate_all(&mut self) -> anyhow::Result<()> {
        self.cluster.terminate_all()
    }

    /// Starts every stopped node and waits until all are back.
    pub fn restart_all(&mut self) -> anyhow::Result<()> {
        self.cluster.spawn_stopped()?;
        self.cluster.wait_ready(Duration::from_secs(120))
    }

    /// Waits until every partition of every topic (internal ones included) has a leader and
    /// all its replicas in sync: the cluster is whole again after a broker came back.
    pub fn wait_fully_replicated(&self, within: Duration) -> anyhow::Result<()> {
        let consumer: BaseConsumer = self.broker.client_config().create()?;
        let deadline = Instant::now() + within;
        loop {
            let lagging: Vec<String> = match consumer.fetch_metadata(None, Duration::from_secs(5)) {
                Ok(metadata) => metadata
                    .topics()
                    .iter()
                    .flat_map(|t| {
                        t.partitions()
                            .iter()
                            .filter(|p| p.leader() < 0 || p.isr().len() < p.replicas().len())
                            .map(move |p| format!("{}[{}] isr {:?} of {:?}", t.name(), p.id(), p.isr(), p.replicas()))
                    })
                    .collect(),
                Err(e) => vec![e.to_string()],
            };
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not fully replicated within {within:?}: {}", lagging.join(", "));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Whether every node is running.
    pub fn all_running(&mut self) -> bool {
        self.cluster.all_running()
    }
}

impl std::ops::Deref for Dedicated {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        &self.broker
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        for id in self.node_ids() {
            let _ = self.cluster.kill(id);
        }
        let _ = std::fs::remove_dir_all(&self.cluster.spec().dir);
    }
}

/// Produces with a given producer and waits for the acknowledgement.
pub async fn produce_with(producer: &FutureProducer, topic: &str, key: Option<&str>, payload: &[u8], headers: &[(&str, &str)]) -> anyhow::Result<()> {
    let hs = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_bytes()) }));
    let mut record = FutureRecord::<str, [u8]>::to(topic).payload(payload).headers(hs);
    if let Some(k) = key {
        record = record.key(k);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))?;
    Ok(())
}

/// A set of pipeline topics.
#[derive(Debug, Clone)]
pub struct Topics {
    pub raw: String,
    pub positions: String,
    pub latest: String,
    pub dlq: String,
    pub events: String,
    pub geofences: String,
}

impl Topics {
    /// The processor's topic flags for these topics.
    pub fn processor_flags(&self) -> Vec<String> {
        vec![
            format!("--input-topic={}", self.raw),
            format!("--positions-topic={}", self.positions),
            format!("--latest-topic={}", self.latest),
            format!("--dlq-topic={}", self.dlq),
            format!("--events-topic={}", self.events),
            format!("--geofences-topic={}", self.geofences),
        ]
    }
}

/// A record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Logs of in-process services on stderr when `TEST_LOG` is set to a tracing filter (e.g.
/// `TEST_LOG=info,librdkafka=warn cargo test ... -- --nocapture`); quiet otherwise.
pub fn init_test_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        fleetstream_core::telemetry::init(&fleetstream_core::telemetry::LogArgs {
            log_format: fleetstream_core::telemetry::LogFormat::Human,
            log_level: filter,
        });
    }
}

/// Polls `check` until it holds or `within` passes; whether it held. Waits for a state, never
/// asserts a speed.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain HTTP/1.1 GET (tests talk to services on 127.0.0.1 only): the status and the body.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Sends a signal to a child process (SIGTERM, SIGKILL, SIGSTOP, SIGCONT...).
pub fn signal(child: &std::process::Child, signal: Signal) -> anyhow::Result<()> {
    fleetstream_kafka_local::node::signal(child.id(), signal)
}

pub use nix::sys::signal::Signal;

/// Sum of a metric's samples in Prometheus text format, optionally only those with a label
/// `key="value"`.
pub fn metric_value(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ') | Some(b'{')))
        .filter(|l| label.is_none_or(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A service running in this process (a receiver, processor or tracker `Application`), shut
/// down gracefully by `shutdown()` or, without waiting, when dropped.
#[derive(Debug)]
pub struct Running {
    registry: prometheus::Registry,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The shutdown future handed to a service's `run_until_stopped`.
pub type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Running {
    /// Spawns `run(shutdown)`, e.g. `|stop| app.run_until_stopped(stop)`; `registry` is the
    /// service's metrics registry.
    pub fn spawn<F, Fut>(registry: prometheus::Registry, run: F) -> Running
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(run(Box::pin(async move {
            let _ = stopped.await;
        })));
        Running { registry, stop: Some(stop), handle: Some(handle) }
    }

    /// Triggers graceful shutdown and returns what the service returned.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.handle.take() {
            Some(h) => h.await?,
            None => Ok(()),
        }
    }

    /// A metric of the service (summed over label sets, or only `key="value"` ones).
    pub fn metric(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        metric_value(&fleetstream_core::telemetry::render(&self.registry), name, label)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
