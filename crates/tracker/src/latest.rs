//! The tracker's side of `vehicle-latest` (compacted, key = the vehicle): reading its records
//! (the start-up seed, then following it), and writing tombstones, so the topic's layout as the
//! tracker sees it lives in this one module (what its records say: `records.rs`).
//!
//! **Decommissioning** a vehicle (`DELETE /api/vehicles/{id}`, admin): a tombstone (the
//! vehicle's key, no value) goes to the partition the vehicle's records are in — compaction
//! removes older records of a key only within their partition, and the processor writes a
//! vehicle to the partition of its input (docs/wire-format.md), which the key's hash in this
//! producer need not match. Then the vehicle leaves `vehicles_latest` and the live map; its
//! history and events stay until the retention. The tombstone carries the vehicle's latest order
//! (header `fleetstream.decommissioned.after`), so any tracker reading it, now or later, with
//! any database and group, holds back the positions up to it (a replay must not bring the
//! vehicle back) and takes the vehicle back at the first position after it.
//!
//! **Where each vehicle's partition is kept: in memory**, learned from this topic. Every tracker
//! reads the whole topic (every partition, no consumer group) at start-up and follows it after,
//! so every instance knows every vehicle's partition, whichever `positions` partitions its group
//! gave it; it costs a few dozen bytes per vehicle and is rebuilt at each start. In the database
//! it would be a column written with every batch, for what one read of the topic gives anyway.
//!
//! Following the topic is also how a tracker learns of a tombstone another tracker wrote: it
//! applies it to its own database and map. Records with a value only tell it where a vehicle is
//! and how far it got; the positions topic brings the positions themselves.

mod records;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use fleetstream_core::publish::{delivered, headers, vehicle_key, Outgoing, PublishError, Publisher};
use fleetstream_core::telemetry::Throttle;

use crate::config::Config;
use crate::live::LiveFeed;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

use self::records::{decode, order_text, Directory, Record, Resume};
pub(crate) use self::records::Seed;

/// How long a tombstone waits for room in the producer's local queue (the delivery itself is
/// bounded by `--kafka-delivery-timeout`).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a vehicle could not be decommissioned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecommissionError {
    #[error("no vehicle with obu_id {0}")]
    NotFound(u64),
    #[error("the tracker is still reading {0}; try again shortly")]
    Unavailable(Arc<str>),
    #[error("{topic} holds no record of vehicle {obu_id} (yet): the tracker does not know which partition to write its tombstone to")]
    NotInTopic { topic: Arc<str>, obu_id: u64 },
    #[error("Kafka did not acknowledge the tombstone: {0}")]
    Kafka(#[from] PublishError),
    /// Reading the vehicle failed: nothing was written.
    #[error("the database did not answer")]
    Lookup,
    /// The tombstone is written; removing the vehicle from the database failed.
    #[error("the tombstone is written but the database did not answer")]
    Remove,
}

/// The body of a `decommissioned` live-feed update.
#[derive(Serialize)]
struct Gone {
    obu_id: u64,
}

/// This tracker's view of `vehicle-latest`, shared by the seed, the follower and the API.
#[derive(Clone)]
pub(crate) struct Vehicles {
    topic: Arc<str>,
    /// `None` until the seed has read the topic.
    directory: Arc<RwLock<Option<Directory>>>,
    /// Where the follower starts: set once, by the seed.
    resume: Arc<watch::Sender<Option<Resume>>>,
    publisher: Publisher,
    store: Store,
    metrics: Metrics,
    live: LiveFeed,
}

impl std::fmt::Debug for Vehicles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vehicles").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Vehicles {
    /// The view of `--latest-topic`, writing through `publisher`, removing decommissioned
    /// vehicles from `store` and from the `live` positions feed.
    pub(crate) fn new(config: &Config, publisher: Publisher, store: Store, metrics: Metrics, live: LiveFeed) -> Self {
        Vehicles {
            topic: config.latest_topic.as_str().into(),
            directory: Arc::default(),
            resume: Arc::new(watch::Sender::new(None)),
            publisher,
            store,
            metrics,
            live,
        }
    }

    fn directory(&self) -> std::sync::RwLockWriteGuard<'_, Option<Directory>> {
        // A panic while the lock was held leaves a consistent map: each change is one entry.
        self.directory.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The seed has read the topic (and applied it): the directory is complete, and the
    /// follower may start where the seed stopped.
    pub(crate) fn seeded(&self, seed: Seed) {
        let (directory, resume) = seed.into_parts();
        *self.directory() = Some(directory);
        self.resume.send_replace(Some(resume));
    }

    /// `DELETE /api/vehicles/{id}`: the tombstone first (if Kafka refuses it, nothing changed and
    /// the request can be repeated), then the database and the live map.
    pub(crate) async fn decommission(&self, obu_id: u64) -> Result<(), DecommissionError> {
        let stored = self.store.vehicle(obu_id).await.map_err(|e| self.db_failed("vehicle", obu_id, &e, DecommissionError::Lookup))?;
        let stored = stored.ok_or(DecommissionError::NotFound(obu_id))?;
        let known = {
            let directory = self.directory();
            let directory = directory.as_ref().ok_or_else(|| DecommissionError::Unavailable(self.topic.clone()))?;
            directory.get(obu_id).ok_or_else(|| DecommissionError::NotInTopic { topic: self.topic.clone(), obu_id })?
        };
        // The processor may be ahead of the database (a batch in hand): the later of both.
        let after = known.order.unwrap_or_default().max(stored.order());
        let record = Outgoing::tombstone(&self.topic)
            .key(vehicle_key(obu_id).into_bytes())
            .partition(known.partition)
            .header(headers::DECOMMISSIONED_AFTER, &order_text(after));
        let written = match self.publisher.enqueue(&record, Instant::now() + QUEUE_TIMEOUT).await {
            Ok(delivery) => delivered(delivery).await.map_err(PublishError::Kafka),
            Err(error) => Err(error),
        };
        let (partition, offset) = written.inspect_err(|error| tracing::warn!(obu_id, %error, "decommission: the tombstone was not written"))?;
        tracing::info!(obu_id, partition, offset, after = order_text(after), "vehicle decommissioned: tombstone written");
        if let Some(directory) = self.directory().as_mut() {
            directory.tombstone(obu_id, partition, Some(after));
        }
        // The follower may have read the tombstone back and removed the vehicle already: the
        // same outcome, told to the map once, by whichever removed it.
        let removed = self.store.decommission(obu_id, Some(after)).await;
        let removed = removed.map_err(|e| self.db_failed("decommission", obu_id, &e, DecommissionError::Remove))?;
        self.metrics.decommissions.with_label_values(&["api"]).inc();
        if removed {
            self.removed(obu_id).await;
        }
        Ok(())
    }

    /// Logs and counts a failed database operation of a decommission; returns `error`.
    fn db_failed(&self, op: &'static str, obu_id: u64, cause: &StoreError, error: DecommissionError) -> DecommissionError {
        self.metrics.db_errors.with_label_values(&[op]).inc();
        tracing::warn!(error = cause.chain(), op, obu_id, "decommission: database operation failed");
        error
    }

    /// Tells the live map a vehicle was taken off the view, and recounts the vehicles.
    async fn removed(&self, obu_id: u64) {
        self.live.publish_as("decommissioned", Gone { obu_id });
        match self.store.vehicle_count().await {
            Ok(n) => self.metrics.vehicles.set(n),
            Err(error) => {
                self.metrics.db_errors.with_label_values(&["count"]).inc();
                tracing::debug!(error = error.chain(), "cannot count vehicles");
            }
        }
    }

    /// Follows the topic from where the seed stopped until `stop`: learns where vehicles are and
    /// how far they got, and applies every tombstone (whoever wrote it) to the database and the
    /// live map.
    #[tracing::instrument(name = "vehicle_latest", skip_all)]
    pub(crate) async fn follow(self, config: Arc<Config>, stop: CancellationToken) {
        let mut resume = self.resume.subscribe();
        let start = tokio::select! {
            () = stop.cancelled() => return,
            start = resume.wait_for(Option::is_some) => match start {
                Ok(start) => start.clone().unwrap_or_default(),
                Err(_) => return,
            },
        };
        let Some(consumer) = self.start(&config, start, &stop).await else { return };
        let mut errors = Throttle::new(Duration::from_secs(5));
        loop {
            // Decoded before anything is awaited: a borrowed message cannot be held across.
            let next = tokio::select! {
                () = stop.cancelled() => return,
                message = consumer.recv() => message.map(|m| (m.partition(), decode(&m))),
            };
            if next.is_ok() {
                self.metrics.latest_followed.inc();
            }
            match next {
                Ok((partition, Some(Record::Latest { obu_id, order }))) => {
                    if let Some(directory) = self.directory().as_mut() {
                        directory.position(obu_id, partition, order);
                    }
                }
                Ok((partition, Some(Record::Tombstone { obu_id, after }))) => {
                    let after = self.directory().as_mut().and_then(|d| d.tombstone(obu_id, partition, after));
                    self.apply_tombstone(obu_id, after, &stop).await;
                }
                Ok((_, None)) => {}
                Err(error) => {
                    if let Some(held_back) = errors.pass() {
                        tracing::warn!(%error, similar_since_last = held_back, "vehicle-latest consumer error");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Takes a vehicle off the view after a tombstone read from the topic; retries the database
    /// until it answers (or the tracker stops): a tombstone is read once.
    async fn apply_tombstone(&self, obu_id: u64, after: Option<u128>, stop: &CancellationToken) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.decommission(obu_id, after).await {
                Ok(true) => {
                    tracing::info!(obu_id, after = after.map(order_text), "vehicle decommissioned by a tombstone in vehicle-latest");
                    self.metrics.decommissions.with_label_values(&["topic"]).inc();
                    self.removed(obu_id).await;
                    return;
                }
                Ok(false) => return,
                Err(error) => {
                    self.metrics.db_errors.with_label_values(&["decommission"]).inc();
                    tracing::warn!(error = error.chain(), obu_id, retry_in = ?delay, "cannot apply a vehicle-latest tombstone; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// The follower's consumer, assigned where the seed stopped (with no partition known then,
    /// the topic did not exist: every partition from the beginning once it does). `None` if the
    /// tracker stopped first.
    async fn start(&self, config: &Config, mut start: Resume, stop: &CancellationToken) -> Option<StreamConsumer> {
        let mut delay = Duration::from_millis(500);
        loop {
            let attempt = async {
                if start.is_empty() {
                    let topic = self.topic.to_string();
                    let probe = config.kafka.admin()?;
                    let count = tokio::task::spawn_blocking(move || fleetstream_core::kafka::partition_count(probe.inner(), &topic, Duration::from_secs(10)))
                        .await??
                        .with_context(|| format!("topic {} does not exist (yet)", self.topic))?;
                    start = (0..count).map(|p| (p, Offset::Beginning)).collect();
                }
                let mut client = config.kafka.reader_config(&format!("{}-latest", config.group_id));
                config.kafka.apply_overrides(&mut client);
                let consumer: StreamConsumer = client.create().context("cannot create the vehicle-latest consumer")?;
                let mut tpl = TopicPartitionList::new();
                for (partition, offset) in &start {
                    tpl.add_partition_offset(&self.topic, *partition, *offset)?;
                }
                consumer.assign(&tpl)?;
                anyhow::Ok(consumer)
            };
            match attempt.await {
                Ok(consumer) => return Some(consumer),
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), retry_in = ?delay, "cannot follow vehicle-latest yet");
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
