//! The one test harness of fleetstream: a real Kafka-API broker process (nisshi) on a free
//! port, uniquely named topics, and readers that return what a user would check.
//!
//! The broker binary is found at `$NISSHI_BIN`, else where `scripts/kafka-local install` puts
//! it (`~/.cache/fleetstream/nisshi-0.8.1/bin/nisshi`), else on `PATH`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub mod postgres;

pub const NISSHI_VERSION: &str = "0.8.1";

/// Where the broker binary is.
pub fn nisshi_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NISSHI_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(format!(".cache/fleetstream/nisshi-{NISSHI_VERSION}/bin/nisshi"));
        if p.exists() {
            return Ok(p);
        }
    }
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|d| d.join("nisshi")).find(|p| p.exists()));
    found.flatten().context("the nisshi broker is not installed: run `scripts/kafka-local install` (or set NISSHI_BIN)")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A name no other test in this run (or an earlier one) uses.
pub fn unique(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// A broker process. Killed on drop.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    port: u16,
    storage: String,
    data_dir: Option<PathBuf>,
}

impl Broker {
    /// A broker with in-memory storage.
    pub fn start() -> anyhow::Result<Broker> {
        Self::launch(free_port(), "memory://nisshi/".to_string(), None)
    }

    /// A broker whose data survives `stop()` + `restart()` (sqlite storage in a temp dir).
    pub fn start_persistent() -> anyhow::Result<Broker> {
        let dir = std::env::temp_dir().join(unique("fleetstream-broker"));
        std::fs::create_dir_all(&dir)?;
        // nisshi resolves a sqlite path against its working directory (set in `spawn`).
        let storage = "sqlite://broker.db".to_string();
        Self::launch(free_port(), storage, Some(dir))
    }

    fn launch(port: u16, storage: String, data_dir: Option<PathBuf>) -> anyhow::Result<Broker> {
        let mut broker = Broker { child: None, port, storage, data_dir };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::env::var_os("BROKER_LOG").is_some();
        let child = Command::new(nisshi_binary()?)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage, "--group-initial-rebalance-delay", "100ms"])
            .env("RUST_LOG", if log { "info" } else { "warn" })
            .current_dir(self.data_dir.clone().unwrap_or_else(std::env::temp_dir))
            .stdin(Stdio::null())
            .stdout(if log { Stdio::inherit() } else { Stdio::null() })
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .context("cannot start nisshi")?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let consumer: BaseConsumer = self.client_config().create()?;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("nisshi exited at start-up: {status}");
                }
            }
            if consumer.fetch_metadata(None, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nisshi did not answer on port {} within {within:?}", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers());
        c
    }

    /// Kills the broker process (as a crash or an outage would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        Ok(self.client_config().create()?)
    }

    /// Creates a topic with configs; waits until its metadata shows every partition.
    pub async fn create_topic(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) -> anyhow::Result<()> {
        let admin = self.admin()?;
        let topic = configs.iter().fold(NewTopic::new(name, partitions, TopicReplication::Fixed(-1)), |t, (k, v)| t.set(k, v));
        for r in admin.create_topics([&topic], &AdminOptions::new()).await? {
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
        };
        self.create_topic(&t.raw, partitions, &[]).await?;
        self.create_topic(&t.positions, partitions, &[]).await?;
        self.create_topic(&t.latest, partitions, &[("cleanup.policy", "compact")]).await?;
        self.create_topic(&t.dlq, partitions, &[]).await?;
        Ok(t)
    }

    /// Produces one record and waits for its acknowledgement.
    pub async fn produce(&self, topic: &str, key: Option<&str>, payload: &[u8], headers: &[(&str, &str)]) -> anyhow::Result<()> {
        let producer = self.producer()?;
        produce_with(&producer, topic, key, payload, headers).await
    }

    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "1");
        Ok(c.create()?)
    }

    /// Every record of `topic` (all partitions, from the beginning): waits until at least
    /// `expected` arrived, then `settle` more to catch extras (duplicates). Gives up at `timeout`.
    pub fn read(&self, topic: &str, expected: usize, settle: Duration, timeout: Duration) -> anyhow::Result<Vec<Record>> {
        let mut c = self.client_config();
        c.set("group.id", unique("reader")).set("enable.auto.commit", "false").set("enable.partition.eof", "false");
        let consumer: BaseConsumer = c.create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
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
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
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
