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
pub mod fleet;
mod geofences;
mod judge;
mod metrics;
mod outputs;
mod pipeline;
mod rebalance;
mod restore;
mod traced;
pub mod rules;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use fleetstream_core::http::{ops_router, Health};
use fleetstream_core::kafka::{ensure_topics, Probe, TopicSpec};

pub use config::{Config, ExactlyOnce};
pub use metrics::Metrics;

/// A processor with its Kafka clients created and its ops port bound.
pub struct Application {
    config: Arc<Config>,
    listener: TcpListener,
    clients: pipeline::Clients,
    geofences: geofences::Geofences,
    metrics: Metrics,
    health: Health,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("group", &self.config.group_id).finish()
    }
}

/// A topic's partition count, read off the async threads; an error says why in words (wrong
/// credentials, TLS, a missing ACL naming the topic).
async fn partitions_of(probe: &Arc<Probe>, topic: &str) -> anyhow::Result<Option<i32>> {
    let (probe, topic) = (probe.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || probe.partitions_settled(&topic, Duration::from_secs(10), Duration::from_secs(10))).await?
}

impl Application {
    /// Checks (or creates) the topics, binds the ops port, creates the clients.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let probe = Arc::new(Probe::new(&config.kafka)?);
        let Some(input_partitions) = partitions_of(&probe, &config.input_topic).await? else {
            bail!("input topic {} does not exist (create it, e.g. with scripts/kafka-local topics)", config.input_topic);
        };
        if config.create_topics {
            let specs = [
                TopicSpec::new(&config.positions_topic, input_partitions),
                TopicSpec::new(&config.latest_topic, input_partitions).configs(fleetstream_core::topics::LATEST_CONFIGS),
                TopicSpec::new(&config.dlq_topic, input_partitions),
                TopicSpec::new(&config.events_topic, input_partitions),
                // Few fences, read whole by every processor: one partition keeps them in order.
                TopicSpec::new(&config.geofences_topic, 1).config("cleanup.policy", "compact"),
            ];
            ensure_topics(&config.kafka.admin()?, &specs).await?;
        }
        // Input partition p is written to partition p of every output: that is what lets a
        // restarted processor find what it already wrote.
        for topic in [&config.positions_topic, &config.latest_topic, &config.dlq_topic, &config.events_topic] {
            match partitions_of(&probe, topic).await? {
                None => bail!("output topic {topic} does not exist (or pass --create-topics true)"),
                Some(n) if n < input_partitions => bail!(
                    "output topic {topic} has {n} partitions but {} has {input_partitions}: outputs need at least as many",
                    config.input_topic
                ),
                Some(_) => {}
            }
        }

        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let port = listener.local_addr()?.port();
        let transactional_id = match config.exactly_once {
            ExactlyOnce::Rebuild => None,
            ExactlyOnce::Transactions => Some(config.transactional_id.clone().unwrap_or_else(|| default_transactional_id(&config.group_id, port))),
        };
        let geofences = geofences::follow(&config, &metrics).await?;
        let clients = pipeline::Clients::connect(&config, transactional_id.as_deref(), &metrics).await?;
        tracing::info!(
            addr = %listener.local_addr()?,
            brokers = %config.kafka.brokers,
            options = ?config.kafka.redacted_options(),
            group = %config.group_id,
            input = %config.input_topic,
            partitions = input_partitions,
            exactly_once = ?config.exactly_once,
            transactional_id = transactional_id.as_deref().unwrap_or("-"),
            geofences = geofences.current().len(),
            "processor started"
        );
        Ok(Application { config: Arc::new(config), listener, clients, geofences, metrics, health: Health::new() })
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
        let progress = pipeline::Progress::default();
        let spans = self.clients.tracing();
        let pipeline = pipeline::Pipeline::new(self.config.clone(), self.clients, self.geofences, self.metrics.clone(), self.health.clone(), token.clone(), progress.clone());
        let watchdog = tokio::spawn(watch(progress, self.health.clone(), token.clone()));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("consumer".into())
            .spawn(move || {
                let outcome = pipeline.run(); // dropping the consumer here closes it and leaves the group
                let _ = done_tx.send(outcome);
            })
            .context("cannot start the consumer thread")?;

        let mut done_rx = done_rx;
        let stopped_by_itself = tokio::select! {
            () = shutdown => None,
            outcome = &mut done_rx => Some(outcome),
        };
        self.health.set_stopping();
        token.cancel();
        let outcome = match stopped_by_itself {
            Some(outcome) => outcome.unwrap_or(Err("the consumer loop ended unexpectedly".into())),
            None => match tokio::time::timeout(self.config.shutdown_timeout, done_rx).await {
                Ok(Ok(outcome)) => outcome,
                _ => {
                    tracing::warn!(timeout = ?self.config.shutdown_timeout, "consumer loop did not stop in time");
                    Ok(())
                }
            },
        };
        watchdog.abort();
        let _ = server.await;
        let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
        match outcome {
            Ok(()) => {
                tracing::info!("processor stopped");
                Ok(())
            }
            Err(why) => bail!("the processor stopped: {why}"),
        }
    }
}

/// A step of the loop that lasts longer than this is reported as stuck.
const STUCK: Duration = Duration::from_secs(90);

/// Reports a consumer loop stuck in one step (logs it every minute, `/readyz` false): no step
/// should take longer than a few retries of a 30 s Kafka call.
async fn watch(progress: pipeline::Progress, health: Health, stop: CancellationToken) {
    let mut reported: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let (step, lasted) = progress.current();
        if step != "poll" && step != "backoff" && lasted > STUCK {
            if reported.is_none_or(|r| r.elapsed() > Duration::from_secs(60)) {
                tracing::error!(step, secs = lasted.as_secs(), "the consumer loop is stuck in one step");
                reported = Some(std::time::Instant::now());
            }
            health.set_not_ready(format!("the consumer loop has been in {step} for {} s", lasted.as_secs()));
        }
    }
}

/// `<group>-<hostname>-<ops port>`: unique among the instances running at a time (two cannot
/// share a host and a port) and the same when an instance restarts in place.
fn default_transactional_id(group: &str, port: u16) -> String {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into());
    format!("{group}-{host}-{port}")
}
