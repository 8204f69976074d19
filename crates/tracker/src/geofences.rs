//! Geofences: the tracker's side of the compacted `geofences` topic (key = fence id, value = the
//! fence as a GeoJSON Feature, a tombstone deletes), both reading it and writing it, so the
//! layout of the topic lives in this one module.
//!
//! - Reading: a background task creates the topic if it is missing (compacted, one partition),
//!   assigns every partition from the beginning (no consumer group, nothing committed) and keeps
//!   following it, so every tracker holds every fence, whoever wrote it. Until it has read up to
//!   the end the topic had when it started, the fences are `unavailable` (the API answers 503).
//! - Writing: the API's POST/PUT/DELETE produce one record (acks=all, idempotent) and, once
//!   Kafka acknowledged it, apply it here at once, so a GET right after a PUT sees it.
//!
//! A write applied here and the same record read back later must not undo a newer write in
//! between: each fence remembers the offset of the record it came from, and only a record at a
//! higher offset replaces it (a key always maps to the same partition). Deleted fences are
//! remembered the same way, as tombstones.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use fleetstream_core::geofence::Fence;
use fleetstream_core::kafka::{assign_whole, ensure_topics, CatchUp, TopicSpec};
use fleetstream_core::telemetry::Throttle;

use crate::config::Config;
use crate::metrics::Metrics;

/// How long a write waits for room in the producer's local queue (the delivery itself is
/// bounded by `--kafka-delivery-timeout`).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The fences are not known yet: the topic has not been read up to its end since start-up.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("the geofences are still being read from Kafka; try again shortly")]
pub(crate) struct Unavailable;

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error("Kafka did not acknowledge the write: {0}")]
    Kafka(#[from] KafkaError),
}

/// Every fence of the topic, as this tracker knows it, and the producer that writes the topic.
#[derive(Clone)]
pub(crate) struct Geofences {
    topic: Arc<str>,
    state: Arc<RwLock<State>>,
    producer: FutureProducer,
    metrics: Metrics,
}

impl std::fmt::Debug for Geofences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Geofences").field("topic", &self.topic).finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    /// By fence id (sorted: the list is answered in id order).
    entries: BTreeMap<String, Entry>,
    /// The topic has been read up to where it ended at start-up.
    loaded: bool,
}

#[derive(Debug)]
struct Entry {
    /// Offset of the record this entry comes from.
    offset: i64,
    /// The fence as a GeoJSON Feature, or `None` once deleted.
    feature: Option<Value>,
}

impl State {
    /// Applies the record at `offset` for `id` unless the entry already comes from a later one.
    /// Whether it changed anything.
    fn apply(&mut self, id: &str, offset: i64, feature: Option<Value>) -> bool {
        if self.entries.get(id).is_some_and(|e| e.offset >= offset) {
            return false;
        }
        self.entries.insert(id.to_owned(), Entry { offset, feature });
        true
    }

    fn live(&self) -> impl Iterator<Item = &Value> {
        self.entries.values().filter_map(|e| e.feature.as_ref())
    }
}

impl Geofences {
    /// The fences of `--geofences-topic` (none known until [`Geofences::follow`] has read it),
    /// written through the tracker's `producer`.
    pub(crate) fn new(config: &Config, metrics: Metrics, producer: FutureProducer) -> Self {
        Geofences { topic: config.geofences_topic.as_str().into(), state: Arc::default(), producer, metrics }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while the lock was held leaves a consistent map: each apply is one insert.
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state, once the topic has been read (before, every read and write is refused: a
    /// write could not tell a new fence from a replaced one).
    fn loaded(&self) -> Result<std::sync::RwLockReadGuard<'_, State>, Unavailable> {
        let state = self.read();
        if state.loaded {
            Ok(state)
        } else {
            Err(Unavailable)
        }
    }

    /// Every fence, as GeoJSON Features in id order.
    pub(crate) fn list(&self) -> Result<Vec<Value>, Unavailable> {
        Ok(self.loaded()?.live().cloned().collect())
    }

    /// One fence as a GeoJSON Feature.
    pub(crate) fn get(&self, id: &str) -> Result<Option<Value>, Unavailable> {
        Ok(self.loaded()?.entries.get(id).and_then(|e| e.feature.clone()))
    }

    /// Writes `fence` (creating or replacing it) and returns whether it is new, and the Feature
    /// as stored.
    pub(crate) async fn put(&self, fence: &Fence) -> Result<(bool, Value), WriteError> {
        // Asked before the write: by the time it is acknowledged, the follower may have read
        // it back already.
        let created = self.get(&fence.id)?.is_none();
        let feature = fence.to_feature();
        // A Value with string keys always serializes.
        let payload = serde_json::to_vec(&feature).unwrap_or_default();
        let offset = self.send("put", &fence.id, Some(&payload)).await?;
        let mut state = self.write();
        state.apply(&fence.id, offset, Some(feature.clone()));
        self.metrics.geofences.set(state.live().count() as i64);
        Ok((created, feature))
    }

    /// Deletes a fence (writes its tombstone). False if there is no such fence.
    pub(crate) async fn delete(&self, id: &str) -> Result<bool, WriteError> {
        if self.get(id)?.is_none() {
            return Ok(false);
        }
        let offset = self.send("delete", id, None).await?;
        let mut state = self.write();
        state.apply(id, offset, None);
        self.metrics.geofences.set(state.live().count() as i64);
        Ok(true)
    }

    /// Produces one record of the topic and waits for its acknowledgement: its offset. The one
    /// place that writes the topic.
    async fn send(&self, op: &'static str, id: &str, payload: Option<&[u8]>) -> Result<i64, KafkaError> {
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic).key(id);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        match self.producer.send(record, QUEUE_TIMEOUT).await {
            Ok(delivery) => {
                self.metrics.geofence_writes.with_label_values(&[op, "ok"]).inc();
                tracing::info!(id, op, partition = delivery.partition, offset = delivery.offset, "geofence written");
                Ok(delivery.offset)
            }
            Err((error, _)) => {
                self.metrics.geofence_writes.with_label_values(&[op, "failed"]).inc();
                tracing::warn!(id, op, %error, "geofence write failed");
                Err(error)
            }
        }
    }

    /// Applies one record read from the topic.
    fn apply_record(&self, m: &BorrowedMessage<'_>, invalid: &mut Throttle) {
        let parsed = match (m.key().map(std::str::from_utf8), m.payload()) {
            (Some(Ok(id)), None) => Ok((id, None)),
            (Some(Ok(id)), Some(payload)) => serde_json::from_slice::<Value>(payload)
                .map_err(|e| format!("the value is not JSON: {e}"))
                .and_then(|value| Fence::from_feature(&value, Some(id)).map_err(|e| e.to_string()))
                .map(|fence| (id, Some(fence.to_feature()))),
            (Some(Err(_)), _) => Err("the key is not UTF-8".to_string()),
            (None, _) => Err("the record has no key (the fence id)".to_string()),
        };
        match parsed {
            Ok((id, feature)) => {
                let mut state = self.write();
                if state.apply(id, m.offset(), feature) {
                    self.metrics.geofences.set(state.live().count() as i64);
                }
            }
            Err(error) => {
                // The previous version of the fence, if any, stays.
                self.metrics.geofence_records_invalid.inc();
                if let Some(held_back) = invalid.pass() {
                    tracing::warn!(partition = m.partition(), offset = m.offset(), error, similar_since_last = held_back, "geofence record ignored");
                }
            }
        }
    }

    /// Follows the topic until `stop`: creates it if missing, reads it whole (then the fences
    /// are available), and applies every later record. Retries set-up failures with backoff.
    #[tracing::instrument(name = "geofences", skip_all)]
    pub(crate) async fn follow(self, config: Arc<Config>, stop: CancellationToken) {
        let mut delay = Duration::from_millis(500);
        let (consumer, mut ends) = loop {
            // Set-up calls block for up to their timeouts while Kafka is unreachable: shutdown
            // does not wait for them.
            let started = tokio::select! {
                () = stop.cancelled() => return,
                started = self.start(&config) => started,
            };
            match started {
                Ok(started) => break started,
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), retry_in = ?delay, "cannot follow the geofences topic yet");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        };
        let mut invalid = Throttle::new(Duration::from_secs(5));
        let mut errors = Throttle::new(Duration::from_secs(5));
        self.mark_loaded_if(&ends);
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = consumer.recv() => message,
            };
            match message {
                Ok(m) => {
                    self.apply_record(&m, &mut invalid);
                    ends.read(m.partition(), m.offset());
                    self.mark_loaded_if(&ends);
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    ends.reached_end(p);
                    self.mark_loaded_if(&ends);
                }
                Err(error) => {
                    if let Some(held_back) = errors.pass() {
                        tracing::warn!(%error, similar_since_last = held_back, "geofences consumer error");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn mark_loaded_if(&self, ends: &CatchUp) {
        if !ends.done() {
            return;
        }
        let mut state = self.write();
        if !state.loaded {
            state.loaded = true;
            tracing::info!(fences = state.live().count(), topic = %self.topic, "geofences loaded");
        }
    }

    /// Creates the topic if needed, assigns all its partitions from the beginning; returns the
    /// consumer and where each non-empty partition ended at that moment.
    async fn start(&self, config: &Config) -> anyhow::Result<(StreamConsumer, CatchUp)> {
        let spec = TopicSpec::new(self.topic.as_ref(), 1).config("cleanup.policy", "compact");
        if let Err(error) = ensure_topics(&config.kafka.admin()?, &[spec]).await {
            // It may exist and only creating be forbidden: reading it is what counts.
            tracing::warn!(error = format!("{error:#}"), topic = %self.topic, "cannot create the geofences topic");
        }
        let mut client = config.kafka.reader_config(&format!("{}-geofences", config.group_id));
        client.set("enable.partition.eof", "true");
        config.kafka.apply_overrides(&mut client);
        let consumer: StreamConsumer = client.create().context("cannot create the geofences consumer")?;
        let topic = self.topic.clone();
        // Metadata and watermarks are blocking calls.
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let ends = assign_whole(&consumer, &topic, Duration::from_secs(10))?;
            Ok((consumer, ends))
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_record_never_undoes_a_newer_one() {
        let mut state = State::default();
        let v = |n: i64| Some(serde_json::json!({ "v": n }));
        assert!(state.apply("a", 5, v(5)), "a write applied at once");
        assert!(!state.apply("a", 3, v(3)), "an older record read back later");
        assert!(!state.apply("a", 5, v(5)), "the same record read back");
        assert_eq!(state.live().cloned().collect::<Vec<_>>(), vec![serde_json::json!({ "v": 5 })]);
        assert!(state.apply("a", 7, None), "a tombstone");
        assert!(!state.apply("a", 6, v(6)), "an older version after the delete");
        assert_eq!(state.live().count(), 0);
        assert!(state.apply("a", 8, v(8)), "created again");
        assert!(state.apply("b", 1, v(1)));
        assert_eq!(state.live().count(), 2);
    }
}
