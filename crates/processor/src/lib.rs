//! fleetstream processor: validates raw positions, enriches the valid ones and routes every
//! record exactly once: valid -> `positions` and `vehicle-latest`, invalid -> the DLQ,
//! duplicates -> dropped and counted.
//!
//! A consumer group: start more processors with the same `--group-id` to share the input
//! partitions. Offsets are committed only after a batch's outputs were acknowledged; the
//! per-vehicle state that makes re-processing a no-op is rebuilt from the output topics on
//! every assignment (docs/processing.md).
//!
//! ```text
//! processor --kafka-brokers 127.0.0.1:9092
//! ```

mod config;
mod metrics;
mod pipeline;
mod restore;
pub mod rules;
pub mod state;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, Producer as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use fleetstream_core::http::{ops_router, Health};
use fleetstream_core::kafka::{ensure_topics, partition_count, TopicSpec};

pub use config::Config;
pub use metrics::Metrics;

/// Header on every `positions` record: the input partition it came from.
pub const HEADER_SRC_PARTITION: &str = "fleetstream.src.partition";
/// Header on every `positions` record: the input offset it came from.
pub const HEADER_SRC_OFFSET: &str = "fleetstream.src.offset";

/// A processor with its Kafka clients created and its ops port bound.
pub struct Application {
    config: Arc<Config>,
    listener: TcpListener,
    consumer: BaseConsumer<pipeline::Context>,
    producer: FutureProducer,
    reader: BaseConsumer,
    events: Arc<Mutex<Vec<pipeline::RebalanceEvent>>>,
    metrics: Metrics,
    health: Health,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("group", &self.config.group_id).finish()
    }
}

impl Application {
    /// Checks (or creates) the topics, creates the clients, binds the ops port.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let admin = config.kafka.admin()?;
        let input_partitions = {
            let (kafka, topic) = (config.kafka.clone(), config.input_topic.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<Option<i32>> {
                let a = kafka.admin()?;
                partition_count(a.inner(), &topic, Duration::from_secs(10))
            })
            .await??
        };
        let Some(input_partitions) = input_partitions else {
            bail!("input topic {} does not exist (create it, e.g. with scripts/kafka-local)", config.input_topic);
        };
        if config.create_topics {
            let specs = [
                TopicSpec::new(&config.positions_topic, input_partitions),
                TopicSpec::new(&config.latest_topic, input_partitions).config("cleanup.policy", "compact"),
                TopicSpec::new(&config.dlq_topic, input_partitions),
            ];
            ensure_topics(&admin, &specs).await?;
        }
        // Input partition p is written to partition p of every output: that is what lets a
        // restarted processor find what it already wrote.
        for topic in [&config.positions_topic, &config.latest_topic, &config.dlq_topic] {
            let (kafka, t) = (config.kafka.clone(), topic.clone());
            let n = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<i32>> {
                let a = kafka.admin()?;
                partition_count(a.inner(), &t, Duration::from_secs(10))
            })
            .await??;
            match n {
                None => bail!("output topic {topic} does not exist (or pass --create-topics true)"),
                Some(n) if n < input_partitions => bail!(
                    "output topic {topic} has {n} partitions but {} has {input_partitions}: outputs need at least as many",
                    config.input_topic
                ),
                Some(_) => {}
            }
        }

        let mut producer_config = config.kafka.producer_config(&config.producer);
        if let Some(id) = &config.transactional_id {
            producer_config.set("transactional.id", id);
        }
        let producer: FutureProducer = producer_config.create().context("cannot create Kafka producer")?;
        if config.transactional_id.is_some() {
            // Fences any earlier producer with the same id and aborts what it left open.
            let p = producer.clone();
            tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30)))
                .await?
                .context("cannot initialise Kafka transactions (does the broker support them?)")?;
        }

        let events = Arc::new(Mutex::new(Vec::new()));
        let consumer_config = config.kafka.consumer_config(&config.group_id);
        let context = pipeline::Context { events: events.clone(), metrics: metrics.clone() };
        let consumer: BaseConsumer<pipeline::Context> = consumer_config.create_with_context(context).context("cannot create Kafka consumer")?;
        consumer.subscribe(&[&config.input_topic]).context("cannot subscribe")?;
        let reader = restore::reader(&config)?;

        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(
            addr = %listener.local_addr()?,
            brokers = %config.kafka.brokers,
            options = ?config.kafka.redacted_options(),
            group = %config.group_id,
            input = %config.input_topic,
            partitions = input_partitions,
            "processor started"
        );
        Ok(Application { config: Arc::new(config), listener, consumer, producer, reader, events, metrics, health: Health::new() })
    }

    /// The bound ops port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Processes until `shutdown` resolves; then finishes the batch in hand, commits, leaves
    /// the group and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let ops = ops_router::<()>(self.metrics.registry.clone(), self.health.clone());
        let server_token = token.clone();
        let server = tokio::spawn(async move {
            axum::serve(self.listener, ops).with_graceful_shutdown(server_token.cancelled_owned()).await
        });
        self.health.set_ready();
        let pipeline = pipeline::Pipeline {
            config: self.config.clone(),
            consumer: self.consumer,
            producer: self.producer.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            events: self.events,
            shutdown: token.clone(),
            runtime: tokio::runtime::Handle::current(),
            partitions: HashMap::new(),
            assigned: Vec::new(),
            next_offset: HashMap::new(),
            reader: self.reader,
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("consumer".into())
            .spawn(move || {
                pipeline.run(); // dropping the consumer here closes it and leaves the group
                let _ = done_tx.send(());
            })
            .context("cannot start the consumer thread")?;

        let mut done_rx = done_rx;
        tokio::select! {
            () = shutdown => {}
            _ = &mut done_rx => bail!("the consumer loop ended unexpectedly"),
        }
        self.health.set_stopping();
        token.cancel();
        if tokio::time::timeout(self.config.shutdown_timeout, done_rx).await.is_err() {
            tracing::warn!(timeout = ?self.config.shutdown_timeout, "consumer loop did not stop in time");
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        let _ = server.await;
        tracing::info!("processor stopped");
        Ok(())
    }
}
